"""The original's method on the built-in ``nuclei``: flips and fold ensembles, measured.

The three-stage ensemble (proposals, boxes, masks merged over models and flips) on:

- mnfinder's test split, which no model here trained on: the shipped ``nuclei`` alone
  and with flips (none, h, v, hv); the ``nuclei`` recipe's three leave-one-source-out
  runs (``benchmarks/accuracy.py transfer``'s fold runs, ``--folds TAG``) merged, without and
  with flips;
- each held-out source: the fold run that never saw it, alone and with flips (the
  ensemble of folds cannot be scored there: two of its three members trained on it).

An ensemble the loader refuses (fold runs whose ``auto`` anchors were derived apart
cannot share proposals) is a row that says so.

Per row: competition score, recall at IoU 0.5 and seconds per image (model loading
excluded; every method on the same images and threads).

    python benchmarks/learning.py flips [--folds TAG] [--threads 2]
        [--out benchmarks/results/builtin_ensemble.json]

Prints a table and writes JSON.
"""

from __future__ import annotations

import time
from pathlib import Path

import harness
import numpy as np
import realdata
import train_builtin

from suites.accuracy import transfer

FLIPS = "flips: [none, h, v, hv]\n"


def score(source: str | Path, records) -> dict:
    """Score, recall50 and seconds per image of a model or ensemble YAML on records."""
    import cellstack
    from cellstack.data.dataset import load_sample
    from cellstack.data.masks import sparse_from_labels
    from cellstack.evaluation.report import evaluate

    seg = cellstack.Segmenter.load(source, device="cpu")
    seg(np.zeros((64, 64), np.uint8))  # warm-up
    preds, seconds = {}, []
    for rec in records:
        image, _ = load_sample(rec)
        t0 = time.perf_counter()
        labels = seg(image).labels
        seconds.append(time.perf_counter() - t0)
        preds[rec.image_id] = sparse_from_labels(labels)
    return {
        "score": evaluate(records, preds, progress=False).to_dict()["score"],
        "recall50": transfer.quality(records, preds)["recall50"],
        "seconds": float(np.mean(seconds)),
        "images": len(records),
    }


def ensemble(work: Path, name: str, models: list[Path | str], flips: bool) -> Path:
    """An ensemble YAML of ``models`` (absolute paths or built-in names)."""
    path = work / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    listed = ", ".join(str(m) for m in models)
    path.write_text(f"models: [{listed}]\n" + (FLIPS if flips else ""))
    return path


def main() -> None:
    parser = harness.arguments(__doc__, "builtin_ensemble")
    parser.add_argument(
        "--folds",
        default=train_builtin.RECIPES["nuclei"]["transfer"],
        help="the tag of accuracy.py transfer's fold runs (default: the shipped recipe's)",
    )
    parser.add_argument("--transfer", type=Path, default=Path.home() / ".cache/cellstack-transfer")
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache/cellstack-ensemble")
    args = parser.parse_args()

    from cellstack.data.layouts import load_dataset

    harness.start(args)
    root = realdata.mnfinder_folders()
    sources = transfer.source_folders(root, args.transfer)
    folds = {s: args.transfer / "runs" / f"{args.folds}_{s}" for s in sources}
    folds = {s: run for s, run in folds.items() if (run / "model.pt").is_file()}
    rows = []
    print("| set | method | score | recall50 | s/image |")
    print("|---|---|---|---|---|")

    def add(set_name: str, method: str, source, records) -> None:
        from cellstack.errors import CellstackError

        try:
            row = {"set": set_name, "method": method, **score(source, records)}
        except CellstackError as exc:  # e.g. fold runs whose derived anchors differ
            rows.append({"set": set_name, "method": method, "refused": str(exc)})
            print(f"| {set_name} | {method} | refused: {str(exc)[:160]} | | |", flush=True)
            return
        rows.append(row)
        print(
            f"| {set_name} | {method} | {row['score']:.4f} | {row['recall50']:.3f} | "
            f"{row['seconds']:.2f} |",
            flush=True,
        )
        harness.write_report(
            args.out,
            {"folds": args.folds, "machine": harness.machine_line(args.threads), "rows": rows},
        )

    test = load_dataset(root / "test")
    add("mnfinder test", "nuclei", "nuclei", test)
    add("mnfinder test", "nuclei + 4 flips", ensemble(args.work, "flips", ["nuclei"], True), test)
    if len(folds) > 1:
        runs = list(folds.values())
        add(
            "mnfinder test",
            f"{len(runs)} fold runs",
            ensemble(args.work, "folds", runs, False),
            test,
        )
        add(
            "mnfinder test",
            f"{len(runs)} fold runs + 4 flips",
            ensemble(args.work, "folds_flips", runs, True),
            test,
        )
    for source, run in folds.items():
        records = load_dataset(sources[source])
        add(f"held-out {source}", "fold run", run, records)
        add(
            f"held-out {source}",
            "fold run + 4 flips",
            ensemble(args.work, source, [run], True),
            records,
        )


if __name__ == "__main__":
    main()
