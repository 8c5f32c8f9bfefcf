"""Which levers make the detector learn within a small CPU budget: an ablation.

Each lever is one config override (or a few) on top of ``configs/demo.yaml``. Every
variant gets the same wall-clock training budget: a short probe run measures its
seconds per iteration, and its iterations are set to ``budget / (s/iter)`` (so a lever
that makes steps slower pays for it with fewer steps, and the LR schedule still runs
to its end). Training, prediction and scoring are ``cellstack demo``'s: the synthetic
set, a held-out fold of samples never seen in training, the Otsu baseline beside it.

    python benchmarks/learning.py levers --budget 240 [--levers baseline gn ...] [--work DIR]

Prints a table (score, AP50, per cell type, iterations, iterations/min) and writes
JSON (default benchmarks/results/learning.json).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import harness

# The demo config as it was before this ablation (the baseline every lever is added to).
BASELINE = (
    "model.backbone.stem_stride=1",
    "model.norm=batch",
    "predict.score_mode=class",
    "train.ema=0",
    "data.crop_sampling=uniform",
    "data.crop_size=256",
    "model.rpn.anchor_scale=8",
    "predict.min_size=10",
    "predict.max_detections=1000",
    "model.roi.mask_pool=14",
    "train.auto_thresholds=false",
    "train.lr=0.001",
    "train.loss_decay=true",
    "train.batch_size=2",
)
LEVERS: dict[str, tuple[str, ...]] = {
    "baseline": (),
    "groupnorm": ("model.norm=group",),
    "objectness": ("predict.score_mode=objectness",),
    "ema": ("train.ema=0.99",),
    "cell_crops": ("data.crop_sampling=cells",),
    "derived_sizes": (
        "data.crop_size=auto",
        "model.rpn.anchor_scale=auto",
        "predict.min_size=auto",
        "predict.max_detections=auto",
        "model.roi.mask_pool=auto",
    ),
    "auto_thresholds": ("train.auto_thresholds=true",),
    "lr_2e-3": ("train.lr=0.002",),
    "no_loss_decay": ("train.loss_decay=false",),
    "batch4_crop128": ("train.batch_size=4", "data.crop_size=128"),
    "stem_auto": ("model.backbone.stem_stride=auto",),
    "whole_cells": ("data.crop_sampling=whole_cells",),
}


def probe_seconds_per_iteration(data: Path, overrides: list[str], work: Path) -> float:
    """Seconds per iteration of this variant: 9 steps timed after 3 warm-up steps."""
    from cellstack.config import load_config
    from cellstack.demo import demo_config_path

    cfg = load_config(demo_config_path(), [*overrides, "train.auto_thresholds=false"])
    return harness.step_seconds(cfg, data / "demo_train.csv", 9, work / "probe")


def main() -> None:
    parser = harness.arguments(__doc__, "learning", threads=None)
    parser.add_argument("--budget", type=float, default=240, help="training seconds per lever")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--cell-types",
        default="shsy5y,astro,cort",
        help="synthetic cell types (add sheet,nuclei for the relief and fluorescent looks)",
    )
    parser.add_argument("--levers", nargs="+", default=list(LEVERS), help="names, or 'chosen'")
    parser.add_argument(
        "--chosen", nargs="*", default=[], help="levers combined into an extra 'chosen' row"
    )
    parser.add_argument("--work", type=Path, help="keep data and runs here (default: temp)")
    args = parser.parse_args()

    from cellstack.demo import run_demo

    work = args.work or Path(tempfile.mkdtemp(prefix="learning_"))
    variants = {name: list(LEVERS[name]) for name in args.levers}
    if args.chosen:
        variants["chosen"] = [o for name in args.chosen for o in LEVERS[name]]
    results = {}
    # The demo's data once (its synthesis is seeded): the probe needs demo_train.csv.
    types = tuple(args.cell_types.split(","))
    run_demo(
        work / "prep",
        n_images=args.images,
        seed=args.seed,
        progress=False,
        overrides=(*BASELINE, "train.iterations=1"),
        cell_types=types,
    )
    for name, lever in variants.items():
        overrides = [*BASELINE, *lever]
        spi = probe_seconds_per_iteration(work / "prep" / "data", overrides, work)
        iterations = max(int(args.budget / spi), 10)
        t0 = time.perf_counter()
        result = run_demo(
            work / name,
            n_images=args.images,
            seed=args.seed,
            progress=False,
            overrides=(*overrides, f"train.iterations={iterations}", "train.log_every=10"),
            cell_types=types,
        )
        model = result.scores["model"]
        results[name] = {
            "overrides": lever,
            "iterations": iterations,
            "s_per_iter": round(spi, 3),
            "iterations_per_min": round(60 / spi, 1),
            "wall_s": round(time.perf_counter() - t0, 1),
            "model": model,
            "otsu": result.scores["otsu"],
        }
        print(f"{name}: score {model['score']:.4f} ({iterations} it)", flush=True)
        harness.write_report(args.out, {"budget_s": args.budget, "results": results})

    types = sorted(
        k for k in next(iter(results.values()))["otsu"] if k not in ("score", "ap", "ap50")
    )
    head = f"| lever | score | AP50 | {' | '.join(types)} | iterations | it/min |"
    print(f"\nbudget {args.budget:.0f} s of training per lever, CPU")
    print(head)
    print("|" + "---|" * (5 + len(types)))
    otsu = next(iter(results.values()))["otsu"]
    print(
        f"| otsu | {otsu['score']:.4f} | {otsu['ap50']:.4f} | "
        + " | ".join(f"{otsu[t]:.4f}" for t in types)
        + " | - | - |"
    )
    for name, r in results.items():
        m = r["model"]
        print(
            f"| {name} | {m['score']:.4f} | {m['ap50']:.4f} | "
            + " | ".join(f"{m[t]:.4f}" for t in types)
            + f" | {r['iterations']} | {r['iterations_per_min']} |"
        )


if __name__ == "__main__":
    main()
