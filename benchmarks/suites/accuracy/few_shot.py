"""A few labelled images of a source no model has seen: calibrate, finetune or train?

The held-out source (default ``RPE1``: fourteen frames of RPE-1 nuclei over five dates)
is sorted by name, which is by date: the first ``k`` frames (``--sizes``, default 1, 3
and 7) are the user's labels, the last seven the images scored (later dates, so a
finetune cannot score well by remembering correlated neighbours). For every ``k``:

- ``calibrated``: ``cellstack tune FOLD FIRST_K --out NEW`` (seconds, no training), where
  FOLD is ``accuracy.py transfer``'s ``base`` run that never saw the source (the ``nuclei``
  recipe trained on the other sources); FOLD as trained is the zero-shot row;
- ``finetune from nuclei``: ``configs/finetune.yaml`` with ``init.from=FOLD``;
- ``finetune from cells``: ``configs/finetune.yaml`` with ``init.from=cells``;
- ``scratch``: ``configs/demo.yaml`` from random weights, given the same seconds as
  the finetune: its iterations are the finetune's times the ratio of the two recipes'
  seconds per step (timed on ``--probe`` steps of each, the same images);
- ``--variant NAME k=v``: more finetunes from FOLD (e.g. ``lr train.lr=0.001``).

Every training run also scores the later frames every ``--curve`` iterations (the
config's thresholds), the curve the recipe's iterations are chosen from.

    python benchmarks/accuracy.py few-shot [--held-out RPE1] [--sizes 1 3 7] [--iterations 400]
        [--curve 100] [--variant NAME k=v ...] [--out benchmarks/results/few_shot.json]

Needs ``accuracy.py transfer``'s fold run (``--fold-iterations``, 400 by default); runs are
kept in transfer's work folder and resumed or reused. Prints a table and writes JSON.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import harness
import realdata
import train_builtin

from suites.accuracy import transfer

SCORED = 7


def frames(folder: Path, k: int, work: Path) -> tuple[Path, Path]:
    """Label folders of ``folder``'s first ``k`` frames and of its last :data:`SCORED`."""
    images = sorted((folder / "images").glob("*.tif"))
    if k > len(images) - SCORED:
        raise SystemExit(
            f"{folder.name} has {len(images)} images: at most {len(images) - SCORED} to train on"
        )
    parts = work / "few_shot"
    return (
        transfer.subset(folder, images[:k], parts / f"{folder.name}_first{k}"),
        transfer.subset(folder, images[-SCORED:], parts / f"{folder.name}_last{SCORED}"),
    )


def recipe(start: Path | str | None, iterations: int) -> tuple[Path, list[str]]:
    """The config file and overrides of a start: ``configs/finetune.yaml`` from
    ``start`` (a run folder or a built-in's name), or ``configs/demo.yaml`` from random
    weights when ``start`` is None."""
    root = train_builtin.ROOT / "configs"
    common = [f"train.iterations={iterations}", "train.eval_every=0"]
    if start is None:
        return root / "demo.yaml", common
    return root / "finetune.yaml", [*common, f"init.from={start}"]


def train(config: Path, overrides: list[str], data: Path, run: Path, curve) -> float:
    """Train (or resume, or reuse) ``run``; seconds spent, NaN when it had finished."""
    from cellstack.config import load_config

    hooks = [transfer.held_out_curve(*curve)] if curve else []
    return harness.train_or_resume(load_config(config, overrides), data, run, hooks)


def seconds_per_step(
    config: Path, overrides: list[str], data: Path, steps: int, work: Path
) -> float:
    """Seconds per training step of a recipe: ``steps`` steps after 3 warm-up steps."""
    from cellstack.config import load_config

    cfg = load_config(config, overrides)
    return harness.step_seconds(cfg, data, steps, work / "few_shot" / "probe")


def main() -> None:
    parser = harness.arguments(__doc__, "few_shot", threads=None)
    parser.add_argument("--held-out", default="RPE1", choices=transfer.SOURCES)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 3, 7])
    parser.add_argument("--iterations", type=int, default=400, help="finetune iterations")
    parser.add_argument("--fold-iterations", type=int, default=400)
    parser.add_argument("--curve", type=int, default=100)
    parser.add_argument("--probe", type=int, default=12, help="steps timed per recipe")
    parser.add_argument("--starts", nargs="+", default=["nuclei", "cells", "scratch"])
    parser.add_argument("--variant", nargs="+", action="append", default=[])
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache/cellstack-transfer")
    parser.add_argument("--cache", type=Path)
    args = parser.parse_args()

    from cellstack.data.layouts import load_dataset
    from cellstack.inference.calibration import run_tune

    realdata.use_imagenet_package(args.cache)
    root = realdata.mnfinder_folders(args.cache)
    work = args.work
    folder = transfer.source_folders(root, work)[args.held_out]
    fold = work / "runs" / f"base_{args.fold_iterations}_{args.held_out}"
    if not (fold / "model.pt").is_file():
        raise SystemExit(
            f"no fold run {fold}: run benchmarks/accuracy.py transfer "
            f"--held-out {args.held_out} first"
        )
    results = harness.read_report(args.out)
    _, scored = frames(folder, 1, work)
    scored_records = load_dataset(scored)
    pred = work / "few_shot" / "pred"
    results["zero_shot"] = transfer.score(fold, scored, pred / "zero_shot")
    print(f"zero-shot fold model: {results['zero_shot']['score']:.4f}", flush=True)

    ratio = results.get("step_ratio")
    if "scratch" in args.starts and ratio is None:
        first, _ = frames(folder, max(args.sizes), work)
        t_ft = seconds_per_step(*recipe(fold, 1), first, args.probe, work)
        t_sc = seconds_per_step(*recipe(None, 1), first, args.probe, work)
        ratio = results["step_ratio"] = t_ft / t_sc
        print(f"seconds per step: finetune {t_ft:.2f}, scratch {t_sc:.2f}", flush=True)

    starts = [(s, []) for s in args.starts] + [(f"nuclei_{n}", o) for n, *o in args.variant]
    for k in args.sizes:
        first, _ = frames(folder, k, work)
        tag = f"{args.held_out}_k{k}"
        new = work / "few_shot" / "tuned" / tag
        shutil.rmtree(new, ignore_errors=True)
        t0 = time.perf_counter()
        tuned, _ = run_tune(fold, first, out=new, device="cpu", progress=False)
        seconds = time.perf_counter() - t0
        row = {
            "calibrated": {
                **transfer.score(new, scored, pred / f"{tag}_tuned"),
                "seconds": seconds,
                "loo": tuned.loo,
                "scale": tuned.scale,
            }
        }
        print(
            f"{tag} calibrated: {row['calibrated']['score']:.4f} ({seconds:.0f} s)",
            flush=True,
        )
        for start, extra in starts:
            base = start.split("_")[0]
            iterations = (
                args.iterations if base != "scratch" else max(1, round(args.iterations * ratio))
            )
            init = {"nuclei": fold, "scratch": None}.get(base, base)
            config, overrides = recipe(init, iterations)
            run = work / "few_shot" / "runs" / f"{tag}_{start}_{iterations}"
            curve_path = run.with_suffix(".curve.jsonl")
            curve = (scored_records, args.curve, curve_path) if args.curve else None
            print(f"{tag} {start}: {iterations} iterations", flush=True)
            seconds = train(config, [*overrides, *extra], first, run, curve)
            if seconds != seconds:  # reused: keep the seconds measured when it trained
                seconds = results.get(tag, {}).get(start, {}).get("train_seconds", seconds)
            row[start] = {
                **transfer.score(run, scored, pred / f"{tag}_{start}"),
                "iterations": iterations,
                "train_seconds": seconds,
                "overrides": extra,
                "curve": [json.loads(x) for x in curve_path.read_text().splitlines()]
                if curve_path.is_file()
                else [],
            }
            print(f"{tag} {start}: {row[start]['score']:.4f} ({seconds:.0f} s)", flush=True)
        results[tag] = row
        harness.write_report(args.out, results)
    print_table(results, [s for s, _ in starts])


def print_table(results: dict, starts: list[str]) -> None:
    print(f"zero-shot (the fold model as trained): {results['zero_shot']['score']:.4f}")
    print("| images | calibrated (s) | " + " | ".join(f"{s} (s)" for s in starts) + " |")
    print("|---" * (len(starts) + 2) + "|")
    for tag, row in results.items():
        if not isinstance(row, dict) or "calibrated" not in row:
            continue
        cells = [f"{row['calibrated']['score']:.4f} ({row['calibrated']['seconds']:.0f})"]
        cells += [
            f"{row[s]['score']:.4f} ({row[s]['train_seconds']:.0f})" if s in row else "-"
            for s in starts
        ]
        print(f"| {tag.split('_k')[1]} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
