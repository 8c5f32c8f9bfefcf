"""cellstack's built-ins beside Cellpose ``cyto`` on every real validation set we have.

The peer runs in a venv of its own (``--peer-python``, default
``~/.cache/cellstack-bench/cellpose-venv/bin/python`` with ``cellpose==3.1.*``: create it
with ``python -m venv DIR && DIR/bin/pip install 'cellpose==3.1.*'``), never as a
cellstack dependency, with the ``cyto`` weights shipped in scellseg's sdist
(``benchmarks/cellpose_worker.py`` renames their keys for cellpose 3.1's ``CPnet``).

Sets (all real, none trained on by the model scored):

- the scellseg looks ``Kc167``, ``cytomembrane``, ``style1`` (fluorescent whole cells,
  RGB: Cellpose channels ``[2, 1]``; cellstack reads colour as the channels' average);
- mnfinder's held-out sources: the ``nuclei`` recipe trained without that source
  (``benchmarks/accuracy.py transfer``'s fold runs, ``--folds TAG``) scores it; and mnfinder's
  test split, which the shipped ``nuclei`` never trained on (its sources it did);
- the dense cases of ``benchmarks/learning.py dense-nuclei`` (synthetic confluent fields, JPEG
  copies, the densest window of mnfinder's U2OS test image), and its packed fields of
  mnfinder's test-split nuclei (real nuclei touching, cut by the field's border).

Each method runs at its default size (Cellpose: its size model's estimate; cellstack:
the model's own scale) and told each image's true median cell diameter (``, true d``).
Per set and method: the competition score, recall at IoU 0.5, the mean IoU of matched
cells, the median predicted/true area of matched cells, seconds per image (the same
threads for every method, model loading excluded).

    python benchmarks/accuracy.py peers [--threads 2] [--sets ...] [--models nuclei cyto cells]
        [--rerun-peer] [--out benchmarks/results/peers.json]

Cellpose's labels and seconds are kept in ``--work`` and reused for the same images.
"""

from __future__ import annotations

import json
import platform
import subprocess
import time
from pathlib import Path

import harness
import numpy as np
import realdata
import train_builtin

from suites.accuracy import transfer

PEER = Path.home() / ".cache/cellstack-bench/cellpose-venv/bin/python"


def true_diameters(records) -> dict[str, float]:
    """Each image's median equivalent diameter of its true cells (px)."""
    out = {}
    for rec in records:
        areas = np.asarray(rec.sparse_masks().sum(axis=1)).ravel()
        out[rec.image_id] = float(np.median(2 * np.sqrt(areas[areas > 0] / np.pi)))
    return out


def measure(records, preds: dict, seconds: list[float]) -> dict:
    """Score, recall50, matched IoU, area ratio and seconds per image of ``preds``."""
    from cellstack.evaluation.report import evaluate

    report = evaluate(records, preds, progress=False).to_dict()
    return {
        "score": report["score"],
        **transfer.quality(records, preds),
        "seconds": float(np.mean(seconds)),
        "images": len(records),
    }


def run_cellstack(source: str, records, diameters: dict | None) -> dict:
    """A cellstack model (built-in name or run folder) on ``records``."""
    import cellstack
    from cellstack.data.dataset import load_sample
    from cellstack.data.masks import sparse_from_labels

    seg = cellstack.Segmenter.load(source)
    preds, seconds = {}, []
    seg(np.zeros((64, 64), np.uint8))  # warm-up: first-call costs are not per image
    for rec in records:
        image, _ = load_sample(rec)
        kwargs = {"diameter": diameters[rec.image_id]} if diameters else {}
        t0 = time.perf_counter()
        labels = seg(image, **kwargs).labels
        seconds.append(time.perf_counter() - t0)
        preds[rec.image_id] = sparse_from_labels(labels)
    return measure(records, preds, seconds)


def run_cellpose(records, diameters: dict | None, work: Path, args) -> dict:
    """Cellpose ``cyto`` on ``records`` in its own venv (benchmarks/cellpose_worker.py)."""
    import tifffile

    from cellstack.data.masks import sparse_from_labels

    jobs = []
    for rec in records:
        rgb = tifffile.imread(rec.image_path).ndim == 3
        jobs.append(
            {
                "image": str(rec.image_path),
                "name": rec.image_id,
                "diameter": diameters[rec.image_id] if diameters else None,
                "channels": [2, 1] if rgb else [0, 0],
            }
        )
    work.mkdir(parents=True, exist_ok=True)
    # Cellpose is deterministic here (its scores came out identical on two runs) and
    # costs 4-40 s an image: the same jobs reuse its labels and seconds unless told.
    reuse = (
        not args.rerun_peer
        and (work / "timings.json").is_file()
        and (work / "jobs.json").is_file()
        and json.loads((work / "jobs.json").read_text()) == jobs
        and all((work / f"{r.image_id}.tif").is_file() for r in records)
    )
    if not reuse:
        (work / "timings.json").unlink(missing_ok=True)  # written last: a whole run's
        (work / "jobs.json").write_text(json.dumps(jobs))
        subprocess.run(
            [
                str(args.peer_python),
                str(harness.BENCH / "cellpose_worker.py"),
                str(realdata.cellpose_cyto()),
                str(work / "jobs.json"),
                str(work),
                str(args.threads),
            ],
            check=True,
            stderr=subprocess.DEVNULL,
        )
    timings = json.loads((work / "timings.json").read_text())
    preds = {
        r.image_id: sparse_from_labels(tifffile.imread(work / f"{r.image_id}.tif")) for r in records
    }
    return measure(records, preds, [timings[r.image_id]["seconds"] for r in records])


def validation_sets(args) -> dict[str, tuple[Path, list[str]]]:
    """``{set name: (label folder, [cellstack models to run])}``."""
    sets = {}
    for look, folder in realdata.scellseg_looks().items():
        sets[f"{look} (scellseg, whole cells)"] = (
            folder,
            [m for m in args.models if m != "nuclei"],
        )
    root = realdata.mnfinder_folders()
    for source, folder in transfer.source_folders(root, args.transfer).items():
        fold = args.transfer / "runs" / f"{args.folds}_{source}"
        if (fold / "model.pt").is_file():
            sets[f"mnfinder {source} (held-out source, nuclei)"] = (folder, [str(fold)])
    if "nuclei" in args.models:
        sets["mnfinder test split (nuclei)"] = (root / "test", ["nuclei"])
    sets["dense nuclei fields (synthetic + U2OS window)"] = (
        train_builtin.dense_cases(args.dense_work),
        ["nuclei"],
    )
    sets["packed fields of mnfinder's test nuclei (dense, real nuclei)"] = (
        train_builtin.packed_cases(args.dense_work),
        ["nuclei"],
    )
    return {k: v for k, v in sets.items() if not args.sets or any(s in k for s in args.sets)}


def label(model: str, folds: str) -> str:
    return f"nuclei without this source ({folds})" if Path(model).name.startswith(folds) else model


def main() -> None:
    parser = harness.arguments(__doc__, "peers")
    parser.add_argument("--models", nargs="+", default=["nuclei", "cyto", "cells"])
    parser.add_argument("--sets", nargs="*", help="only the sets whose name holds one of these")
    parser.add_argument("--peer-python", type=Path, default=PEER)
    parser.add_argument("--transfer", type=Path, default=Path.home() / ".cache/cellstack-transfer")
    parser.add_argument(
        "--folds",
        default=train_builtin.RECIPES["nuclei"]["transfer"],
        help="the tag of accuracy.py transfer's fold runs (default: the shipped recipe's)",
    )
    parser.add_argument("--dense-work", type=Path, default=Path.home() / ".cache/cellstack-dense")
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache/cellstack-peers")
    parser.add_argument(
        "--rerun-peer",
        action="store_true",
        help="run Cellpose again where the same images' labels are in --work already",
    )
    args = parser.parse_args()

    from cellstack.data.layouts import load_dataset
    from cellstack.modeling.builtin import builtin_names

    harness.start(args)
    args.models = [m for m in args.models if m in builtin_names()]
    results = {
        "machine": f"{platform.processor() or platform.machine()}, {args.threads} threads",
        "sets": {},
    }
    print("| set | method | score | recall50 | matched IoU | area ratio | s/image |")
    print("|---|---|---|---|---|---|---|")
    for set_name, (folder, models) in validation_sets(args).items():
        records = load_dataset(folder)
        truth_d = true_diameters(records)
        rows = results["sets"][set_name] = {}
        for d_name, diameters in (("", None), (", true d", truth_d)):
            tag = "".join(c if c.isalnum() else "_" for c in set_name + d_name)
            rows[f"Cellpose cyto{d_name}"] = run_cellpose(records, diameters, args.work / tag, args)
            for model in models:
                rows[f"{label(model, args.folds)}{d_name}"] = run_cellstack(
                    model, records, diameters
                )
        for method, r in rows.items():
            print(
                f"| {set_name} | {method} | {r['score']:.3f} | {r['recall50']:.3f} | "
                f"{r['matched_iou']:.3f} | {r['area_ratio']:.2f} | {r['seconds']:.2f} |",
                flush=True,
            )
        harness.write_report(args.out, results)


if __name__ == "__main__":
    main()
