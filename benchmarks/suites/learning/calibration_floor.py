"""Calibration from a few images must never make a model worse (issue 42, item 4).

For each of mnfinder's sources, the ``nuclei`` recipe trained without it (``accuracy.py transfer``'s
fold run, ``--folds TAG``) is calibrated on the first ``k`` images of the source
(``--sizes``, default 1, 2, 3; sorted by name, which is by date) with
:meth:`Segmenter.optimize_thresholds` (thresholds and scale, as ``cellstack tune --out``)
and scored on the source's other images:

- *zero-shot*: the fold run as trained;
- *calibrated*: cellstack's rule (leave-one-out over the images, or a single image's
  quadrants; the point nearest the model's own within noise of the best; the model's
  own kept without an estimated gain);
- *best on the k images*: the rule before issue 42, the grid point (and scale) with the
  best mean score on the calibration images, for comparison.

    python benchmarks/learning.py calibration-floor [--sizes 1 2 3] [--folds TAG]
        [--out benchmarks/results/calibration_floor.json]

Prints a table and writes JSON.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path

import harness
import numpy as np
import realdata
import train_builtin

from suites.accuracy import transfer


def best_on_the_images(scored, grid, current):
    """The rule before issue 42: the (scale, point) with the best mean on the images."""
    from cellstack.inference.thresholds import Thresholds
    from cellstack.inference.tune import params_at

    points = grid.points()
    at = max(scored, key=lambda s: s.scores.mean(axis=0).max())
    best = int(np.argmax(at.scores.mean(axis=0)))
    return at.scale, Thresholds(params_at(points[best], current.default), {})


def score_on(seg, samples) -> float:
    from cellstack.evaluation.metric import score_image

    return float(np.mean([score_image(lab, seg(im).labels).score for im, lab in samples]))


def run_case(model: Path, samples: list, k: int) -> dict:
    """Calibrate ``model`` on ``samples[:k]``, score every rule on ``samples[k:]``."""
    import cellstack
    from cellstack.inference import tune as tune_module

    captured = {}
    # calibrate() (inference/tune.py) makes the choice; the spy records the old rule's
    # point on the same search.
    real_choose = tune_module.choose

    def spy(scored, grid, current):
        captured["old"] = best_on_the_images(scored, grid, current)
        return real_choose(scored, grid, current)

    seg = cellstack.Segmenter.load(model)
    first, rest = samples[:k], samples[k:]
    tune_module.choose = spy
    t0 = time.perf_counter()
    try:
        tuned, result = seg.optimize_thresholds(
            [im for im, _ in first], [lab for _, lab in first], progress=False
        )
    finally:
        tune_module.choose = real_choose
    seconds = time.perf_counter() - t0
    old_scale, old_thresholds = captured["old"]
    old = seg._sharing_model(scale=old_scale, thresholds=old_thresholds)
    return {
        "k": k,
        "zero_shot": score_on(seg, rest),
        "calibrated": score_on(tuned, rest),
        "best_on_images": score_on(old, rest),
        "estimated_gain": result.estimated_gain,
        "kept": result.kept,
        "units": result.units,
        "scale": result.scale,
        "old_scale": old_scale,
        "seconds": seconds,
        "rest_images": len(rest),
    }


def samples_of(folder: Path) -> list:
    from cellstack.data.dataset import load_sample
    from cellstack.data.layouts import load_dataset

    return [load_sample(r) for r in sorted(load_dataset(folder), key=lambda r: r.image_id)]


def main() -> None:
    parser = harness.arguments(__doc__, "calibration_floor")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument(
        "--folds",
        default=train_builtin.RECIPES["nuclei"]["transfer"],
        help="the tag of accuracy.py transfer's fold runs (default: the shipped recipe's)",
    )
    parser.add_argument("--transfer", type=Path, default=Path.home() / ".cache/cellstack-transfer")
    args = parser.parse_args()

    harness.start(args)
    folders = transfer.source_folders(realdata.mnfinder_folders(), args.transfer)
    results = {"machine": platform.processor() or platform.machine(), "rows": []}
    print("| held out | k | zero-shot | calibrated | best on the k (old rule) | est. gain | kept |")
    print("|---|---|---|---|---|---|---|")
    for source, folder in folders.items():
        run = args.transfer / "runs" / f"{args.folds}_{source}"
        if not (run / "model.pt").is_file():
            print(f"{run}: not trained (run benchmarks/accuracy.py transfer first); skipped")
            continue
        samples = samples_of(folder)
        for k in args.sizes:
            row = {"source": source, **run_case(run, samples, k)}
            results["rows"].append(row)
            print(
                f"| {source} | {k} | {row['zero_shot']:.4f} | {row['calibrated']:.4f} | "
                f"{row['best_on_images']:.4f} | {row['estimated_gain']:+.4f} | "
                f"{'yes' if row['kept'] else 'no'} |",
                flush=True,
            )
            harness.write_report(args.out, results)


if __name__ == "__main__":
    main()
