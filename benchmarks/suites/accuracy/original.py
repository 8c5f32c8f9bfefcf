"""The original's whole ensemble, end to end: ``configs/original/ensemble.yaml`` as
shipped (11 recipes x 5 folds = 55 fold runs, 4 flips, the type pass, the per-type
models and settings, its ``weights_budget_mb``) on one 704x520 image.

    python benchmarks/accuracy.py original [--cache DIR] [--types shsy5y]
        [--weights-budget-mb MB] [--folds 5] [--every-model]

1. *layout*: the 11 CV folders as ``cellstack cv`` leaves them, each fold run's
   ``model.pt`` holding its recipe's architecture with random weights (seeded per run),
   written once into ``--cache`` (default ``~/.cache/cellstack-bench/original_ensemble``,
   16.6 GB; reused by later runs, each file written atomically) with the YAML
   beside them, its paths pointing there.
2. For each of ``--types``: one synthetic 704x520 image of that type in a folder, and
   ``cellstack predict ENSEMBLE.yaml IMAGES --out OUT`` in a child process: seconds end
   to end (reading the 55 runs' configs, the type pass, the three merged stages,
   writing the labels) and the child's peak resident memory (``ru_maxrss``), beside the
   estimate of ``predict --dry-run``.

Random weights are what a benchmark without the competition's data can have: the type
pass (the ``type_from`` folds on the identity view) routes the image to whichever
type's six models its random classes favour (six models of 5 folds each: 120 views),
and the random scores sit near chance, under most of the original's thresholds, so few
boxes reach the mask stage and no cell survives post-processing on the benchmark's
image. The time is therefore a lower bound for trained models, which keep hundreds of
cells per image; the peak is set by the weights held and one view's backbone, not by
the masks, which the mask heads take 128 boxes at a time. ``--every-model`` drops
``type_models``: all 55 runs merge every image (220 views), the bound of the YAML's
memory and time.

Goal (issue 33): under 4 GB peak. Prints a table and writes JSON (default
``benchmarks/results/original_ensemble.json``).
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import harness
import yaml

ROOT = harness.ROOT
ORIGINAL = ROOT / "configs" / "original"
CLASSES = ["shsy5y", "astro", "cort"]


def layout(cache: Path, folds: int, weights: bool = True) -> dict:
    """The 11 CV folders of the shipped YAML under ``cache/runs/cv``, as ``cellstack cv``
    leaves them, their fold runs written only where missing: with random weights, or
    (``weights=False``) skeletons holding only the config and class names, enough for
    a plan (``predict --dry-run`` with a weight budget reads no weights). Returns the
    runs' total size and the seconds spent writing them."""
    import torch

    from cellstack.config import load_config
    from cellstack.fileio import atomic_write
    from cellstack.modeling.build import build_model
    from cellstack.modeling.runfolder import FINAL, final_state, save

    spec = yaml.safe_load((ORIGINAL / "ensemble.yaml").read_text())
    names = sorted({Path(m).name for m in spec["models"]})
    t0 = time.perf_counter()
    written = 0
    total = 0
    for seed, name in enumerate(names):
        cfg = load_config(ORIGINAL / f"{name}.yaml")
        cv = cache / "runs" / "cv" / name
        (cv / "oof").mkdir(parents=True, exist_ok=True)
        with atomic_write(cv / "config.yaml") as f:
            yaml.safe_dump({"data": {"folds": folds}}, f)
        for fold in range(folds):
            run = cv / f"fold{fold}"
            if not (run / FINAL).is_file():
                state = {}
                if weights:
                    torch.manual_seed(1000 * seed + fold)
                    model = build_model(cfg.model, CLASSES, cfg.predict, encoder_weights=False)
                    state = model.state_dict()
                run.mkdir(exist_ok=True)
                save(final_state(state, cfg, CLASSES), run / FINAL)
                del state
                written += 1
                if weights:
                    print(f"  wrote {run / FINAL}", flush=True)
            total += (run / FINAL).stat().st_size
            oof = cv / "oof" / f"fold{fold}.pt"
            if not oof.is_file():
                oof.write_bytes(b"")  # marks the fold's CV as finished; never read here
    return {
        "runs": len(names) * folds,
        "weights_gb": total / 2**30,
        "weights_written": written,
        "write_s": time.perf_counter() - t0,
    }


def ensemble_yaml(cache: Path, budget_mb: float | None, every_model: bool) -> Path:
    """The shipped YAML at ``cache/configs/original/`` (its relative paths then name the
    cache's CV folders), with ``budget_mb`` and without ``type_models`` when asked."""
    spec = yaml.safe_load((ORIGINAL / "ensemble.yaml").read_text())
    if budget_mb is not None:
        spec["weights_budget_mb"] = budget_mb
    if every_model:
        spec.pop("type_models", None)
        spec.pop("type_from", None)
    path = cache / "configs" / "original" / ("every_model.yaml" if every_model else "ensemble.yaml")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def one_image(folder: Path, cell_type: str) -> Path:
    import numpy as np
    from PIL import Image

    from cellstack.data.synthetic import generate_image

    folder.mkdir(parents=True, exist_ok=True)
    sample = generate_image(np.random.default_rng(0), cell_type)
    Image.fromarray(sample.image).save(folder / f"{cell_type}.png")
    return folder


def run_predict(ens: Path, images: Path, out: Path) -> dict:
    """``cellstack predict`` in a child process: seconds and the child's peak RSS."""
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    cli = [sys.executable, "-m", "cellstack.cli"]
    dry = subprocess.run(
        [*cli, "predict", str(ens), str(images), "--out", str(out), "--dry-run"],
        capture_output=True,
        text=True,
    )
    if dry.returncode:
        raise SystemExit(dry.stderr.strip())
    plan = dry.stdout
    estimate = next(
        (float(line.split()[2]) for line in plan.splitlines() if "estimated peak" in line), None
    )
    t0 = time.perf_counter()
    child = subprocess.Popen([*cli, "predict", str(ens), str(images), "--out", str(out)])
    _, status, usage = os.wait4(child.pid, 0)  # this child's own peak, not the largest yet
    seconds = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"cellstack predict {ens} failed")
    peak = usage.ru_maxrss / 1024
    from cellstack.inference.export import PredictionFolder

    folder = PredictionFolder.open(out)
    (image_id,) = folder.image_ids()
    table = folder.objects(image_id)
    types = Counter(str(t) for t in table.get("cell_type", []))
    return {
        "seconds": seconds,
        "peak_mb": peak,
        "estimated_mb": estimate,
        "cells": len(table.get("label", [])),
        "cell_types": dict(types),
    }


def main() -> None:
    parser = harness.arguments(__doc__, "original_ensemble", threads=None)
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path(
            os.environ.get("CELLSTACK_BENCH_CACHE", Path.home() / ".cache" / "cellstack-bench")
        )
        / "original_ensemble",
    )
    parser.add_argument("--types", nargs="+", default=["shsy5y"], choices=CLASSES)
    parser.add_argument("--weights-budget-mb", type=float, help="instead of the YAML's")
    parser.add_argument(
        "--folds",
        type=int,
        default=5,
        choices=range(2, 11),
        metavar="K",
        help="fold runs per recipe (2-10)",
    )
    parser.add_argument("--every-model", action="store_true", help="no type routing")
    args = parser.parse_args()

    print(f"layout of the original's CV folders in {args.cache} ...", flush=True)
    made = layout(args.cache, args.folds)
    print(
        f"{made['runs']} fold runs, {made['weights_gb']:.1f} GB of weights "
        f"({made['weights_written']} written, {made['write_s']:.0f} s)",
        flush=True,
    )
    ens = ensemble_yaml(args.cache, args.weights_budget_mb, args.every_model)
    budget = yaml.safe_load(ens.read_text())["weights_budget_mb"]
    rows = []
    for cell_type in args.types:
        images = one_image(args.cache / "images" / cell_type, cell_type)
        print(f"predict {ens.name} on one 704x520 {cell_type} image ...", flush=True)
        row = {"type": cell_type, **run_predict(ens, images, args.cache / "out" / cell_type)}
        rows.append(row)
    print(
        f"\n{ens.name}: {made['runs']} fold runs x 4 flips, weights budget {budget} MB, "
        f"{os.cpu_count()} CPU threads"
    )
    print("| image | seconds | peak MB | estimated MB | cells | their types |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['type']} | {row['seconds']:.0f} | {row['peak_mb']:.0f} "
            f"| {row['estimated_mb']:.0f} | {row['cells']} | {row['cell_types']} |"
        )
    harness.write_report(
        args.out,
        {
            "args": vars(args),
            "machine": platform.processor() or platform.machine(),
            "weights_budget_mb": budget,
            **made,
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
