"""Peak memory and time of the three-stage ensemble as it grows: K models x 4 flips.

Random-weight resnet50 Mask R-CNNs (``stem_stride: 1``, as the original's), one
704x520 image, the same merge in two feature policies:

- ``keep all``: every view's FPN features kept between stages (``feature_cache_mb:
  inf``), how the ensemble worked before: each view's backbone runs once, memory grows
  with every view.
- ``streamed``: the default (``feature_cache_mb: 0``): one view's features at a time,
  the others computed again when a stage needs them.

Every case runs in its own process, so its peak resident memory (``ru_maxrss``) is its
own. Prints a table and writes JSON (default benchmarks/results/ensemble_memory.json)::

    python benchmarks/ensemble_memory.py [--k 1 2 4 8] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

POLICIES = {"keep all": "inf", "streamed": "0"}


def child(k: int, budget: float, device: str) -> dict:
    """One case, in this process: build, run once, report."""
    import numpy as np
    import torch

    from cellstack.config import load_config
    from cellstack.data.synthetic import generate_image
    from cellstack.inference.ensemble import Ensemble
    from cellstack.inference.tta import FLIPS
    from cellstack.modeling.build import build_model

    torch.set_grad_enabled(False)
    cfg = load_config(
        None,
        ["model.arch=maskrcnn", "model.backbone.name=resnet50", "model.backbone.stem_stride=1"],
    )
    models = []
    for seed in range(k):
        torch.manual_seed(seed)
        models.append(build_model(cfg.model, ["shsy5y", "astro", "cort"], cfg.predict).eval())
    weights = sum(p.numel() * p.element_size() for m in models for p in m.parameters())
    ens = Ensemble(models, flips=tuple(FLIPS.values()), feature_cache_mb=budget).eval().to(device)
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
    }
    if device.startswith("cuda"):
        row["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--k", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--policies", nargs="+", default=list(POLICIES), choices=list(POLICIES), metavar="P"
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/ensemble_memory.json"))
    parser.add_argument("--child", nargs=2, metavar=("K", "BUDGET"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(int(args.child[0]), float(args.child[1]), args.device)))
        return

    rows = []
    for policy in args.policies:
        budget = POLICIES[policy]
        for k in args.k:
            cmd = [sys.executable, __file__, "--child", str(k), budget, "--device", args.device]
            done = subprocess.run(cmd, capture_output=True, text=True, check=True)
            row = {"policy": policy, **json.loads(done.stdout.strip().splitlines()[-1])}
            rows.append(row)
            print(
                f"{policy} K={k}: peak {row['peak_mb']:.0f} MB, {row['seconds']:.1f} s", flush=True
            )
    mem = "cuda_peak_mb" if args.device.startswith("cuda") else "peak_mb"
    print(f"\nK resnet50 Mask R-CNNs x 4 flips, one 704x520 image, {args.device}")
    print(
        "| policy | K | views | weights MB | peak MB | peak / K=1 | added per model MB "
        "| s/image | s / (K x K=1 s) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        one = next(r for r in rows if r["policy"] == row["policy"] and r["k"] == min(args.k))
        per_model = (row[mem] - one[mem]) / max(row["k"] - one["k"], 1)
        print(
            f"| {row['policy']} | {row['k']} | {row['views']} | {row['weights_mb']:.0f} "
            f"| {row[mem]:.0f} | {row[mem] / one[mem]:.2f} "
            f"| {per_model if row['k'] > one['k'] else float('nan'):.0f} | {row['seconds']:.1f} "
            f"| {row['seconds'] / (row['k'] / one['k'] * one['seconds']):.2f} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
