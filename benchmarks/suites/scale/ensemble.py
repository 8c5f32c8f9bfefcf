"""Peak memory and time of the three-stage ensemble as it grows: K models x 4 flips.

Random-weight resnet50 Mask R-CNNs (``stem_stride: 1``, as the original's), one
704x520 image, the same merge in two feature policies:

- ``keep all``: every view's FPN features kept between stages (``feature_cache_mb:
  inf``), how the ensemble worked before: each view's backbone runs once, memory grows
  with every view.
- ``streamed``: the default (``feature_cache_mb: 0``): one view's features at a time,
  the others computed again when a stage needs them.
- ``one model loaded``: streamed, and the models saved as run folders and listed in an
  ensemble YAML with ``weights_budget_mb`` of one model: each is read from its file
  when a stage needs it and dropped for the next (weights stop growing with K too).

``--original-plan`` prints ``cellstack predict configs/original/ensemble.yaml
--dry-run`` for the shipped original ensemble (11 models x 5 folds), laid out as CV
folders in a temporary folder. A plan needs the runs' configs, not their weights: the
fold runs written there hold each recipe's config and class names and no weights,
which the dry run never reads with a weight budget.

Every case runs in its own process, so its peak resident memory (``ru_maxrss``) is its
own. Prints a table and writes JSON (default benchmarks/results/ensemble_memory.json)::

    python benchmarks/scale.py ensemble [--k 1 2 4 8] [--device cpu] [--policies ...]
    python benchmarks/scale.py ensemble --original-plan [--weights-budget-mb MB]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import time
from pathlib import Path

import harness

POLICIES = {"keep all": "inf", "streamed": "0", "one model loaded": "files"}
CLASSES = ["shsy5y", "astro", "cort"]


def child(k: int, policy: str, device: str) -> dict:
    """One case, in this process: build, run once, report."""
    import tempfile

    import numpy as np
    import torch

    from cellstack.config import load_config
    from cellstack.data.synthetic import generate_image
    from cellstack.inference.ensemble import Ensemble
    from cellstack.inference.sources import load_source
    from cellstack.inference.tta import FLIPS
    from cellstack.inference.weights import weight_bytes
    from cellstack.modeling.build import build_model
    from cellstack.modeling.runfolder import FINAL, final_state, save

    torch.set_grad_enabled(False)
    cfg = load_config(
        None,
        ["model.arch=maskrcnn", "model.backbone.name=resnet50", "model.backbone.stem_stride=1"],
    )

    def build(seed: int) -> torch.nn.Module:
        torch.manual_seed(seed)
        return build_model(cfg.model, CLASSES, cfg.predict).eval()

    flips = tuple(FLIPS.values())
    if policy == "files":
        # Built and saved one at a time: this process never holds two models' weights.
        work = Path(tempfile.mkdtemp(prefix="ensemble_memory_"))
        for i in range(k):
            model = build(i)
            one = weight_bytes(model) / 2**20
            (work / f"run{i}").mkdir()
            save(final_state(model.state_dict(), cfg, CLASSES), work / f"run{i}" / FINAL)
            del model
        weights = one * k * 2**20
        (work / "ens.yaml").write_text(
            f"models: [{', '.join(f'run{i}' for i in range(k))}]\n"
            f"flips: [{', '.join(FLIPS)}]\ntype_settings: none\n"
            f"weights_budget_mb: {one * 1.05}\n"
        )
        ens = load_source(work / "ens.yaml").model.to(device)
    else:
        models = [build(seed) for seed in range(k)]
        weights = sum(weight_bytes(m) for m in models)
        ens = Ensemble(models, flips=flips, feature_cache_mb=float(policy)).eval().to(device)
    image = generate_image(np.random.default_rng(0), "shsy5y").image
    tensor = torch.from_numpy(image.astype(np.float32) / 255)[None].to(device)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    (out,) = ens([tensor])
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    row = {
        "k": k,
        "views": 4 * k,
        "weights_mb": weights / 2**20,
        "peak_mb": peak,
        "rss_before_mb": before,
        "seconds": seconds,
        "detections": len(out),
        "weight_loads": ens.loads,
    }
    if device.startswith("cuda"):
        row["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    if policy == "files":
        shutil.rmtree(work)
    return row


def main() -> None:
    parser = harness.arguments(__doc__, "ensemble_memory", threads=None)
    parser.add_argument("--k", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--policies", nargs="+", default=list(POLICIES), choices=list(POLICIES), metavar="P"
    )
    parser.add_argument("--original-plan", action="store_true")
    parser.add_argument(
        "--weights-budget-mb", type=float, help="instead of the shipped YAML's budget"
    )
    parser.add_argument("--child", nargs=2, metavar=("K", "POLICY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(int(args.child[0]), args.child[1], args.device)))
        return
    if args.original_plan:
        print(original_plan(args.weights_budget_mb))
        return

    rows = []
    for policy in args.policies:
        budget = POLICIES[policy]
        for k in args.k:
            cmd = harness.again("--child", k, budget, "--device", args.device)
            row = {"policy": policy, **harness.child(cmd)}
            rows.append(row)
            print(
                f"{policy} K={k}: peak {row['peak_mb']:.0f} MB, {row['seconds']:.1f} s", flush=True
            )
    mem = "cuda_peak_mb" if args.device.startswith("cuda") else "peak_mb"
    print(f"\nK resnet50 Mask R-CNNs x 4 flips, one 704x520 image, {args.device}")
    print(
        "| policy | K | views | weights MB | peak MB | peak / K=1 | added per model MB "
        "| s/image | s / (K x K=1 s) | weight loads |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        one = next(r for r in rows if r["policy"] == row["policy"] and r["k"] == min(args.k))
        per_model = (row[mem] - one[mem]) / max(row["k"] - one["k"], 1)
        print(
            f"| {row['policy']} | {row['k']} | {row['views']} | {row['weights_mb']:.0f} "
            f"| {row[mem]:.0f} | {row[mem] / one[mem]:.2f} "
            f"| {per_model if row['k'] > one['k'] else float('nan'):.0f} | {row['seconds']:.1f} "
            f"| {row['seconds'] / (row['k'] / one['k'] * one['seconds']):.2f} "
            f"| {row['weight_loads']} |"
        )
    harness.write_report(args.out, {"rows": rows})


def original_plan(budget_mb: float | None) -> str:
    """The dry-run plan of configs/original/ensemble.yaml (with ``weights_budget_mb``
    when given), its 11 CV folders laid out (5 fold runs each, configs only) in a
    temporary folder (:func:`original_ensemble.layout`)."""
    import tempfile

    from original_ensemble import ensemble_yaml, layout

    from cellstack.inference.predict import dry_run

    work = Path(tempfile.mkdtemp(prefix="original_plan_"))
    try:
        layout(work, 5, weights=False)
        return dry_run(ensemble_yaml(work, budget_mb, every_model=False))
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
