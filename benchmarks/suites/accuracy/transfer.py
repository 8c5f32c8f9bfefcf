"""Transfer between labs: train on all of mnfinder's sources but one, score the one left out.

mnfinder's 49 images (training, validation and test splits together) fall into three
sources that differ in cell line, stain, microscope and dtype (``info.csv``'s group):

- ``RPE1``: five dates of RPE-1 nuclei, uint16 768x869;
- ``U2OS``: dense U2OS nuclei, uint16 768x869;
- ``misc``: HFF, HeLa, MCC13 and others from several microscopes, uint8 and uint16,
  512 and 1024 px.

For every variant (``--variant NAME key=value ...``; ``base`` is the built-in
``nuclei`` recipe of ``train_builtin.py`` at ``--iterations``) and every held-out
source, a run trains on the other two and is scored on the held-out one, and on a
synthetic fluorescent-nuclei set it never saw (``synthetic``, exact outlines, sizes
drawn from the held-out sources' range). Each row gives the competition score, AP50,
recall at IoU 0.5, the mean IoU of matched cells, and the median predicted / true area
of matched cells (above 1: masks drawn too large). ``--curve K`` also scores the
held-out source every K iterations while training (raw weights, the config's
thresholds): how long to train before fitting two sources starts to hurt the third.

    python benchmarks/accuracy.py transfer [--iterations 400] [--variant NAME k=v ...]
        [--no-base] [--curve 100] [--work DIR] [--out benchmarks/results/transfer.json]

Runs are kept in ``--work`` (a finished one is scored again, not retrained; an
interrupted one resumes). Prints one table per variant and writes JSON.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import harness
import numpy as np
import realdata
import train_builtin

SOURCES = ("RPE1", "U2OS", "misc")


def source_of(group: str) -> str:
    """The source of an mnfinder image set (``2022-03-18_RPE1`` -> ``RPE1``)."""
    return next(s for s in SOURCES if group.endswith(s))


def source_folders(root: Path, work: Path) -> dict[str, Path]:
    """One label folder per source (symlinks to the converted mnfinder files; ids get
    their split's side as a prefix, as train and test reuse a few stems)."""
    with open(root / "info.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    out = {}
    for source in SOURCES:
        folder = work / "sources" / source
        for sub in ("images", "labels"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        for row in rows:
            if source_of(row["group"]) != source:
                continue
            for sub in ("images", "labels"):
                link = folder / sub / f"{row['side']}__{row['id']}.tif"
                if not link.exists():
                    link.symlink_to((root / row["side"] / sub / f"{row['id']}.tif").resolve())
        out[source] = folder
    return out


def held_out_curve(records: list, every: int, path: Path):
    """A training hook: the held-out score every ``every`` iterations (raw weights, the
    config's thresholds), appended to ``path`` as json lines (kept across resumes)."""
    from cellstack.engine.loop import HookBase

    class HeldOutCurve(HookBase):
        def after_step(self, loop) -> None:
            _curve_step(loop, records, every, path)

    return HeldOutCurve()


def _curve_step(loop, records: list, every: int, path: Path) -> None:
    if loop.iteration % every:
        return
    from cellstack.engine.hooks import validate

    score = validate(loop.model, records, loop.cfg, loop.device, loop.world)
    loop.net.train()
    with open(path, "a") as f:
        f.write(json.dumps({"iteration": loop.iteration, "score": score}) + "\n")
    print(f"  iteration {loop.iteration}: held-out {score:.4f}", flush=True)


def quality(records: list, preds: dict) -> dict:
    """Recall at IoU 0.5, mean IoU of matched cells, median predicted / true area of
    matched cells, over all cells of ``records``."""
    from cellstack.evaluation.matching import overlaps

    tp = n_true = 0
    ious, ratios = [], []
    for rec in records:
        truth, pred = rec.sparse_masks(), preds[rec.image_id]
        ov = overlaps(truth, pred)
        hit = ov.iou >= 0.5  # at most one partner per cell at IoU >= 0.5
        tp += int(hit.sum())
        n_true += truth.shape[0]
        ious.extend(ov.iou[hit].tolist())
        t_area = np.asarray(truth.sum(axis=1)).ravel()
        p_area = np.asarray(pred.sum(axis=1)).ravel()
        ratios.extend((p_area[ov.pred_idx[hit]] / t_area[ov.truth_idx[hit]]).tolist())
    return {
        "recall50": tp / max(n_true, 1),
        "matched_iou": float(np.mean(ious)) if ious else float("nan"),
        "area_ratio": float(np.median(ratios)) if ratios else float("nan"),
    }


def score(source, folder: Path, out: Path, overrides=()) -> dict:
    """Predict ``folder``'s images with ``source`` and score them."""
    records, preds, report, _ = harness.evaluate_source(source, folder, out, overrides)
    return {"score": report["score"], "ap50": report["ap50"], **quality(records, preds)}


def split(folder: Path, k: int, work: Path) -> tuple[Path, Path]:
    """Label folders of ``folder``'s first ``k`` images (by name) and of the rest."""
    images = sorted((folder / "images").glob("*.tif"))
    return (
        subset(folder, images[:k], work / f"{folder.name}_first{k}"),
        subset(folder, images[k:], work / f"{folder.name}_rest{k}"),
    )


def subset(folder: Path, images: list[Path], out: Path) -> Path:
    """A label folder at ``out`` of symlinks to ``images`` of ``folder`` and their labels."""
    for sub in ("images", "labels"):
        (out / sub).mkdir(parents=True, exist_ok=True)
        for p in images:
            link = out / sub / p.name
            if not link.exists():
                link.symlink_to((folder / sub / p.name).resolve())
    return out


def calibrated(run: Path, folder: Path, work: Path, tag: str, k: int = 3) -> dict:
    """``cellstack tune RUN FIRST_K --out NEW`` on the held-out source's first ``k``
    images (a user's few labels), then NEW and RUN scored on the rest."""
    import shutil

    from cellstack.inference.calibration import run_tune

    first, rest = split(folder, k, work / "splits")
    new = work / "tuned" / tag
    shutil.rmtree(new, ignore_errors=True)
    t0 = time.perf_counter()
    result, _ = run_tune(run, first, out=new, device="cpu", progress=False)
    seconds = time.perf_counter() - t0
    return {
        "images": k,
        "before": result.before,
        "after": result.after,
        "loo": result.loo,
        "scale": result.scale,
        "params": dict(vars(result.thresholds.default)),
        "seconds": seconds,
        "rest_uncalibrated": score(run, rest, work / "pred" / f"{tag}_rest"),
        "rest_calibrated": score(new, rest, work / "pred" / f"{tag}_rest_tuned"),
    }


def train_run(overrides: list[str], data: Path, run: Path, curve: tuple | None) -> float:
    """Train the recipe with ``overrides`` into ``run`` (resumed when interrupted);
    seconds spent (NaN: already finished). ``curve``: :func:`held_out_curve`'s
    arguments, or None."""
    from cellstack.config import load_config

    hooks = [held_out_curve(*curve)] if curve else []
    cfg = load_config(harness.ROOT / "configs/demo.yaml", overrides)
    return harness.train_or_resume(cfg, data, run, hooks)


def main() -> None:
    parser = harness.arguments(__doc__, "transfer", threads=None)
    parser.add_argument("--iterations", type=int, default=400)
    parser.add_argument("--variant", nargs="+", action="append", default=[])
    parser.add_argument("--no-base", action="store_true")
    parser.add_argument("--held-out", nargs="+", default=list(SOURCES), choices=SOURCES)
    parser.add_argument("--curve", type=int, default=0, help="score the held-out every K its")
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache/cellstack-transfer")
    parser.add_argument("--cache", type=Path)
    parser.add_argument("--train-only", action="store_true", help="train the runs, score none")
    parser.add_argument(
        "--calibrate", nargs="+", help="variants calibrated on 3 held-out images (default: all)"
    )
    args = parser.parse_args()

    from cellstack.data.layouts import load_dataset

    realdata.use_imagenet_package(args.cache)
    root = realdata.mnfinder_folders(args.cache)
    work = args.work
    folders = source_folders(root, work)
    synthetic = train_builtin.synthetic_nuclei(work)
    dense = train_builtin.dense_cases(work)
    packed = train_builtin.packed_cases(work)
    recipe = [
        *train_builtin.RECIPES["nuclei"]["overrides"][:4],
        f"train.iterations={args.iterations}",
        "train.eval_every=0",
    ]
    variants = ([] if args.no_base else [["base"]]) + args.variant
    # ``synthetic=N``, ``dense=N`` and ``packed=N`` in a variant are no config keys: N
    # synthetic images (dense: confluent fields; packed: confluent fields of the training
    # sources' own nuclei, train_builtin.packed_field) join the training.
    extra = {
        (name, key): int(o.split("=")[1])
        for name, *overrides in variants
        for o in overrides
        for key in ("synthetic", "dense", "packed")
        if o.startswith(f"{key}=")
    }
    results = harness.read_report(args.out)
    for name, *overrides in variants:
        overrides = [o for o in overrides if not o.startswith(("synthetic=", "dense=", "packed="))]
        for held in args.held_out:
            tag = f"{name}_{args.iterations}_{held}"
            parts = [folders[s] for s in SOURCES if s != held]
            suffix = ""
            if (name, "synthetic") in extra:
                n = extra[name, "synthetic"]
                parts.append(train_builtin.synthetic_nuclei(work, n, seed=21))
                suffix += f"_syn{n}"
            if (name, "dense") in extra:
                n = extra[name, "dense"]
                parts.append(train_builtin.synthetic_nuclei(work, n, seed=22, dense=True))
                suffix += f"_dense{n}"
            if (name, "packed") in extra:
                # The training sources' training-split nuclei only: the packed held-out
                # case is made of the test split's.
                n = extra[name, "packed"]
                kept = [folders[s] for s in SOURCES if s != held]
                parts.append(
                    train_builtin.packed_nuclei(
                        work, f"no{held}", kept, n, seed=23, keep=lambda s: s.startswith("train__")
                    )
                )
                suffix += f"_packed{n}"
            train_dir = train_builtin.union(parts, work / f"train_{held}{suffix}")
            run = work / "runs" / tag
            curve_path = work / "runs" / f"{tag}.curve.jsonl"
            curve = (load_dataset(folders[held]), args.curve, curve_path) if args.curve else None
            print(f"{tag}: training on {train_dir.name}", flush=True)
            seconds = train_run([*recipe, *overrides], train_dir, run, curve)
            if args.train_only:
                continue
            row = {
                "overrides": overrides,
                "iterations": args.iterations,
                "train_seconds": seconds,
                "held_out": score(run, folders[held], work / "pred" / tag),
                "synthetic": score(run, synthetic, work / "pred" / f"{tag}_synthetic"),
                "dense": score(run, dense, work / "pred" / f"{tag}_dense"),
                "packed": train_builtin.dense_case_rows(run, packed)["packed real nuclei"],
            }
            if args.calibrate is None or name in args.calibrate:
                row["calibrated"] = calibrated(run, folders[held], work, tag)
            if curve_path.is_file():
                row["curve"] = [json.loads(x) for x in curve_path.read_text().splitlines()]
            results[tag] = row
            h = row["held_out"]
            print(
                f"{tag}: held-out {h['score']:.4f} (AP50 {h['ap50']:.3f}, recall50 "
                f"{h['recall50']:.3f}, matched IoU {h['matched_iou']:.3f}, area x"
                f"{h['area_ratio']:.2f}); {_calibrated(row)}; synthetic "
                f"{row['synthetic']['score']:.4f}; dense {row['dense']['score']:.4f} (recall50 "
                f"{row['dense']['recall50']:.3f}); packed {_packed(row)}; {seconds:.0f} s",
                flush=True,
            )
            harness.write_report(args.out, results)
    print_table(results)


def print_table(results: dict) -> None:
    print(
        "| run | held-out score | AP50 | recall50 | matched IoU | area ratio | rest: as "
        "trained -> calibrated on 3 (LOO of the 3) | synthetic | dense (recall50) | packed "
        "real nuclei (recall50, border) | train s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for tag, r in results.items():
        h = r["held_out"]
        print(
            f"| {tag} | {h['score']:.4f} | {h['ap50']:.3f} | {h['recall50']:.3f} | "
            f"{h['matched_iou']:.3f} | {h['area_ratio']:.2f} | {_calibrated(r)} | "
            f"{r['synthetic']['score']:.4f} | {_dense(r)} | {_packed(r)} | "
            f"{r['train_seconds']:.0f} |"
        )


def _dense(row: dict) -> str:
    """The dense cases' ``score (recall50)``, or ``-`` for a row scored before them."""
    d = row.get("dense")
    return f"{d['score']:.4f} ({d['recall50']:.3f})" if d else "-"


def _packed(row: dict) -> str:
    """The packed real nuclei's ``score (recall50, border recall50)``, or ``-`` for a row
    scored before them."""
    p = row.get("packed")
    return f"{p['score']:.4f} ({p['recall50']:.3f}, {p['border_recall50']:.3f})" if p else "-"


def _calibrated(row: dict) -> str:
    """``as trained -> calibrated on 3 (LOO of the 3, seconds)``, or ``-`` when not run."""
    c = row.get("calibrated")
    if c is None:
        return "-"
    return (
        f"{c['rest_uncalibrated']['score']:.4f} -> {c['rest_calibrated']['score']:.4f} "
        f"({c['loo']:.4f}, {c['seconds']:.0f} s)"
    )


if __name__ == "__main__":
    main()
