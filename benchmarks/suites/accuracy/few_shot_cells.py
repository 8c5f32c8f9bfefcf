"""Whole cells in fluorescence, a look no model has seen: calibrate, finetune or train?

Issue 42's item 5 on data whose licence lets us train. The real whole-cell images we
have (scellseg's) are for validation only, so the held-out look is one of
``cellstack synth``'s whole-cell looks (``--held-out``, default ``membrane``: bright
outlines and dim interiors, the look farthest from the others):

- the fold model: the ``cyto`` recipe (``train_builtin.RECIPES["cyto"]``) trained on the
  other looks only, ``--fold-iterations`` iterations; as trained, it is the zero-shot row;
- the user's images: ``--sizes`` (default 1, 2 and 3) images of the held-out look, its
  cells 25-35 px across (one lab's microscope); ``--scored`` (default 6) other images of
  that look at the same sizes are scored;
- ``calibrated``: ``cellstack tune FOLD FIRST_K --out NEW`` (no training);
- ``fold``: ``configs/finetune.yaml`` from the fold model;
- ``cells``: ``configs/finetune.yaml`` from the built-in ``cells`` (synthetic phase
  contrast, no GroupNorm in its mask head); ``cells_gn``: the same with
  ``model.roi.mask_norm=group`` (a GroupNorm mask head started afresh on its weights),
  the setting suspected of costing finetuning from ``cells`` (docs/learning.md, s. 10);
- ``scratch``: ``configs/demo.yaml`` from random weights, given the finetune's seconds:
  its iterations are the finetune's times the ratio of the recipes' seconds per step;
- ``--variant NAME START k=v ...``: more finetunes (e.g. ``fold_lr fold train.lr=0.001``).

    python benchmarks/accuracy.py few-shot-cells [--held-out membrane] [--sizes 1 2 3]
        [--iterations 300] [--fold-iterations 600] [--starts fold cells cells_gn scratch]
        [--variant NAME START k=v ...]

Runs are kept in ``--work`` and reused or resumed. Prints a table and writes JSON
(default benchmarks/results/few_shot_cells.json).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import harness
import realdata
import train_builtin

from suites.accuracy import few_shot, transfer

#: The user's microscope: every image of the held-out look has cells this wide (px).
DIAMETERS = (25.0, 35.0)
#: Extra overrides of a start, by name (``fold``, ``cells`` and ``scratch`` have none).
VARIANTS = {"cells_gn": ("cells", ["model.roi.mask_norm=group"])}


def fold_run(held_out: str, iterations: int, work: Path) -> Path:
    """The ``cyto`` recipe trained without the look ``held_out`` (trained or resumed)."""
    from cellstack.config import load_config

    looks = tuple(t for t in train_builtin.CYTO_TYPES if t != held_out)
    data = train_builtin.synthetic_whole_cells(work, train_builtin.CYTO_PER_LOOK, 41, looks)
    recipe = train_builtin.RECIPES["cyto"]
    overrides = [o for o in recipe["overrides"] if not o.startswith("train.iterations=")]
    cfg = load_config(
        train_builtin.ROOT / recipe["config"], [*overrides, f"train.iterations={iterations}"]
    )
    run = work / "runs" / f"cyto_without_{held_out}_{iterations}"
    print(f"fold model {run.name}: training on {data.name}", flush=True)
    harness.train_or_resume(cfg, data, run, progress=True)
    return run


def main() -> None:
    parser = harness.arguments(__doc__, "few_shot_cells", threads=None)
    parser.add_argument("--held-out", default="membrane", choices=train_builtin.CYTO_TYPES)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--scored", type=int, default=6)
    parser.add_argument("--iterations", type=int, default=300, help="finetune iterations")
    parser.add_argument("--fold-iterations", type=int, default=600)
    parser.add_argument("--probe", type=int, default=12, help="steps timed per recipe")
    parser.add_argument("--starts", nargs="+", default=["fold", "cells", "cells_gn", "scratch"])
    parser.add_argument(
        "--variant", nargs="+", action="append", default=[], metavar="NAME START [K=V ...]"
    )
    parser.add_argument(
        "--work", type=Path, default=Path.home() / ".cache/cellstack-few-shot-cells"
    )
    args = parser.parse_args()
    if any(len(v) < 2 for v in args.variant):
        parser.error("--variant takes a name, a start (fold, cells or a run) and overrides")
    variants = {**VARIANTS, **{name: (start, extra) for name, start, *extra in args.variant}}
    args.starts += [name for name, *_ in args.variant]

    from cellstack.inference.calibration import run_tune

    realdata.use_imagenet_package()
    work = args.work
    fold = fold_run(args.held_out, args.fold_iterations, work)
    look = (args.held_out,)
    users = train_builtin.synthetic_whole_cells(work, max(args.sizes), 61, look, DIAMETERS)
    scored = train_builtin.synthetic_whole_cells(work, args.scored, 62, look, DIAMETERS)
    images = sorted((users / "images").glob("*.tif"))
    pred = work / "pred"
    results = harness.read_report(args.out)
    results["held_out"] = args.held_out
    results["zero_shot"] = transfer.score(fold, scored, pred / "zero_shot")
    results["cells_zero_shot"] = transfer.score("cells", scored, pred / "cells_zero_shot")
    print(f"zero-shot fold model: {results['zero_shot']['score']:.4f}", flush=True)

    ratio = results.get("step_ratio")
    if "scratch" in args.starts and ratio is None:
        t_ft = few_shot.seconds_per_step(*few_shot.recipe(fold, 1), users, args.probe, work)
        t_sc = few_shot.seconds_per_step(*few_shot.recipe(None, 1), users, args.probe, work)
        ratio = results["step_ratio"] = t_ft / t_sc
        print(f"seconds per step: finetune {t_ft:.2f}, scratch {t_sc:.2f}", flush=True)

    for k in args.sizes:
        first = transfer.subset(users, images[:k], work / "splits" / f"first{k}")
        tag = f"{args.held_out}_k{k}"
        row = results.get(tag, {})
        new = work / "tuned" / tag
        if "calibrated" not in row or not (new / "thresholds.yaml").is_file():
            shutil.rmtree(new, ignore_errors=True)
            t0 = time.perf_counter()
            tuned, _ = run_tune(fold, first, out=new, device="cpu", progress=False)
            row["calibrated"] = {
                **transfer.score(new, scored, pred / f"{tag}_tuned"),
                "seconds": time.perf_counter() - t0,
                "loo": tuned.loo,
                "scale": tuned.scale,
            }
        print(f"{tag} calibrated: {row['calibrated']['score']:.4f}", flush=True)
        for start in args.starts:
            base, extra = variants.get(start, (start, []))
            init = {"fold": fold, "scratch": None}.get(base, base)
            iterations = (
                args.iterations if init is not None else max(1, round(args.iterations * ratio))
            )
            # A variant may set its own length (train.iterations=N): the row says so.
            iterations = next(
                (int(o.split("=")[1]) for o in extra if o.startswith("train.iterations=")),
                iterations,
            )
            config, overrides = few_shot.recipe(init, iterations)
            run = work / "runs" / f"{tag}_{start}_{iterations}"
            seconds = few_shot.train(config, [*overrides, *extra], first, run, None)
            if seconds != seconds:  # reused: keep the seconds measured when it trained
                seconds = row.get(start, {}).get("train_seconds", seconds)
            row[start] = {
                **transfer.score(run, scored, pred / f"{tag}_{start}"),
                "iterations": iterations,
                "train_seconds": seconds,
                "overrides": extra,
            }
            print(f"{tag} {start}: {row[start]['score']:.4f} ({seconds:.0f} s)", flush=True)
        results[tag] = row
        harness.write_report(args.out, results)
    few_shot.print_table(results, args.starts)


if __name__ == "__main__":
    main()
