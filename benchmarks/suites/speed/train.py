"""CPU training speed and peak memory: cellstack's training step against torchvision's.

One training step is forward, backward and the optimizer step (AdamW), on the same batch
for every row: 2 synthetic shsy5y images of 704x520 with about 150 cells each, random
weights, the same number of threads. Rows:

- ``torchvision v1``: ``maskrcnn_resnet50_fpn`` (no resize: min_size=520,
  max_size=704), the gray image repeated over its 3 input channels: the network ours
  is sized as (two FC 1024 box layers, 4-conv mask head), the baseline of ``vs tv``.
- ``torchvision v2``: ``maskrcnn_resnet50_fpn_v2``, whose box head adds 4 convs and
  GroupNorm everywhere (a heavier network than ours; for reference).
- ``cellstack maskrcnn``: ours sized as torchvision's v1 (resnet50, ``stem_stride: 2``
  so the features have torchvision's resolution, FPN 256, 4-conv mask head, two FC
  1024, 512 RoIs per image, 2000 proposals), placed as the trainer places it
  (:func:`~cellstack.engine.trainer.place_for_training`: channels-last on CPU).
- ``cellstack cascade`` / ``cellstack htc``: the same network with the original's
  three-stage heads.
- ``builtin NAME``: each built-in model's architecture (its stored config), random
  weights, on the same batch.

Each row runs in its own process, so its peak RSS is its own; the first ``--warmup``
steps are not timed. ``--profile ROW`` prints the slowest operators of one row's step
(``torch.profiler``), to find what to make faster; ``--pooling`` times RoIAlign alone,
torchvision's kernel against the sparse matrix CPU training pools through.
``--device cuda --amp`` runs the rows on a GPU in the trainer's mixed precision
(autocast forward, scaled backward); the peak is then the GPU's
(``torch.cuda.max_memory_allocated``).

Prints a table and writes JSON (default benchmarks/results/train_speed.json).
"""

from __future__ import annotations

import argparse
import json

import harness

H, W = 520, 704
#: cellstack sized as torchvision's Mask R-CNN v2.
EQUAL = [
    "model.backbone.name=resnet50",
    "model.backbone.stem_stride=2",
    "model.backbone.fpn_channels=256",
    "model.roi.fc_dim=1024",
    "model.roi.mask_convs=4",
    "model.roi.mask_pool=14",
    "model.roi.batch_size_per_image=512",
    "model.rpn.pre_nms_top_n_train=2000",
    "model.rpn.post_nms_top_n_train=2000",
]
CLASSES = ["shsy5y", "astro", "cort"]


def batch(cells: int):
    """``(images, targets)``: 2 images float32[1, H, W] in [0, 1] and their targets
    (boxes float32[N, 4] xyxy, labels int64[N], masks uint8[N, H, W])."""
    import numpy as np
    import torch

    from cellstack.data.dataset import instances_from_labels, make_target
    from cellstack.data.synthetic import generate_image

    images, targets = [], []
    for seed in range(2):
        synth = generate_image(np.random.default_rng(seed), "shsy5y", (H, W), n_cells=cells)
        image, labels = synth.image, synth.labels
        ids, masks = instances_from_labels(labels)
        images.append(torch.from_numpy(image.astype(np.float32) / 255)[None])
        targets.append(make_target(masks, np.zeros(len(ids), dtype=np.int64)))
    return images, targets


def build(kind: str):
    """``(model, takes_rgb)`` of a row, in train mode."""
    import torch

    if kind.startswith("torchvision"):
        from torchvision.models import detection

        make = (
            detection.maskrcnn_resnet50_fpn
            if kind.endswith("v1")
            else detection.maskrcnn_resnet50_fpn_v2
        )
        model = make(weights=None, weights_backbone=None, num_classes=4, min_size=H, max_size=W)
        return model.train(), True
    from cellstack.config import load_config
    from cellstack.modeling.build import build_model

    if kind.startswith("builtin "):
        from dataclasses import replace

        from cellstack.modeling.runfolder import load_run

        cfg, classes, _ = load_run(kind.split()[1])
        # Random weights: the architecture is what is timed, not the ImageNet start.
        backbone = replace(cfg.model.backbone, pretrained=False)
        model = build_model(replace(cfg.model, backbone=backbone), classes, cfg.predict)
    else:
        arch = kind.split()[1]
        cfg = load_config(None, [*EQUAL, f"model.arch={arch}"])
        model = build_model(cfg.model, CLASSES, cfg.predict)
    torch.manual_seed(0)
    return model.train(), False


def _worker(
    kind: str,
    steps: int,
    warmup: int,
    threads: int,
    cells: int,
    profile: bool,
    device: str = "cpu",
    amp: bool = False,
) -> dict:
    import time

    import numpy as np
    import torch

    from cellstack.engine.trainer import place_for_training

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    images, targets = batch(cells)
    model, rgb = build(kind)
    # Ours in the layout the trainer trains it in (channels-last on CPU); torchvision's
    # as its users run it.
    model = model.to(dev) if rgb else place_for_training(model, dev)
    if rgb:
        images = [im.expand(3, -1, -1).contiguous() for im in images]
    # torchvision's heads read "labels", 0 = background; ours "classes", 0 = the first
    targets = [
        {"boxes": t["boxes"], "labels": t["classes"] + 1, "masks": t["masks"]} if rgb else t
        for t in targets
    ]
    images = [im.to(dev) for im in images]
    targets = [{k: v.to(dev) for k, v in t.items()} for t in targets]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    # The trainer's mixed precision: autocast forward, scaled backward (CUDA only).
    scaler = torch.amp.GradScaler("cuda", enabled=amp and cuda)

    def step() -> None:
        with torch.autocast(dev.type, enabled=amp and cuda):
            losses = model(images, targets)
        loss = sum(v.float() for v in losses.values())
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if cuda:
            torch.cuda.synchronize()

    times = []
    for k in range(warmup + steps):
        if k == warmup and cuda:
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        step()
        if k >= warmup:
            times.append(time.perf_counter() - t0)
    out = {
        "s_per_step": float(np.median(times)),
        "steps": times,
        "peak_rss_mb": harness.peak_rss_mb(),
        "cells": [len(t["boxes"]) for t in targets],
    }
    if cuda:
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    if profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile

        with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
            step()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
    return out


def pooling(threads: int, repeats: int = 3) -> dict:
    """Seconds of RoIAlign alone, forward and backward, through torchvision's kernel
    (what prediction uses) and through the sparse matrix CPU training uses: the box
    head's 7x7 on 1,024 RoIs and the mask head's 14x14 on 256, boxes of 8-68 px on the
    finest FPN level of 2 images of 704x520 (stride 4, 256 channels, channels-last)."""
    import time

    import torch
    from torchvision.ops import roi_align

    from cellstack.modeling.poolers import matrix_roi_align

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    feat = torch.randn(2, 256, -(-H // 4), -(-W // 4))
    feat = feat.contiguous(memory_format=torch.channels_last).requires_grad_()
    out = {}
    for head, size, n in (("box 7x7", 7, 1024), ("mask 14x14", 14, 256)):
        centre = torch.rand(n, 2) * torch.tensor([float(W), float(H)])
        side = torch.rand(n, 2) * 60 + 8
        image = torch.randint(0, 2, (n, 1)).float()
        rois = torch.cat([image, centre - side / 2, centre + side / 2], 1)
        kernels = {
            "torchvision": lambda r, s: roi_align(feat, r, s, 0.25, 0, aligned=True),
            "sparse matrix": lambda r, s: matrix_roi_align(feat, r, s, 0.25),
        }
        for kernel, pool in kernels.items():
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                pooled = pool(rois, size)
                pooled.backward(torch.ones_like(pooled))
                times.append(time.perf_counter() - t0)
            out[f"{head}, {kernel}"] = min(times)
            print(f"RoIAlign {head}, {kernel}: {min(times):.3f} s forward + backward")
    return out


def main() -> None:
    parser = harness.arguments(__doc__, "train_speed")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per row")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--cells", type=int, default=150, help="cells tried per image")
    parser.add_argument(
        "--rows", nargs="+", default=None, help="rows to run (default: all; see the docstring)"
    )
    parser.add_argument("--profile", default=None, metavar="ROW", help="profile one row's step")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--amp", action="store_true", help="mixed precision (CUDA only)")
    parser.add_argument(
        "--pooling", action="store_true", help="time RoIAlign alone: torchvision vs sparse"
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.pooling:
        result = pooling(args.threads)
        harness.write_report(args.out.with_name("roi_pooling.json"), {"args": vars(args), **result})
        return
    if args.worker:
        result = _worker(
            args.worker,
            args.steps,
            args.warmup,
            args.threads,
            args.cells,
            args.profile == args.worker,
            args.device,
            args.amp,
        )
        print(json.dumps(result))
        return
    from cellstack.modeling.builtin import builtin_names

    rows = args.rows or [
        "torchvision v1",
        "torchvision v2",
        "cellstack maskrcnn",
        "cellstack cascade",
        "cellstack htc",
        *(f"builtin {name}" for name in builtin_names()),
    ]
    if args.profile and args.profile not in rows:
        rows.append(args.profile)
    machine = harness.start(args)
    results = {}
    for kind in rows:
        command = harness.again("--worker", kind)
        for flag in ("steps", "warmup", "threads", "cells", "device"):
            command += [f"--{flag}", str(getattr(args, flag))]
        command += ["--amp"] if args.amp else []
        if args.profile == kind:
            command += ["--profile", kind]
        results[kind] = harness.child(command, echo=args.profile == kind)
        print(f"{kind}: {results[kind]['s_per_step']:.2f} s/step", flush=True)
    base = results.get("torchvision v1")
    on = f"{args.device}{' AMP' if args.amp else ''}, {args.threads} threads"
    print(
        f"\ntraining step, 2 images {W}x{H} (~{args.cells} cells each), {on}, "
        f"median of {args.steps} steps"
    )
    # On CUDA the memory that matters is the GPU's.
    mem_key = "cuda_peak_mb" if args.device.startswith("cuda") else "peak_rss_mb"
    rows = []
    for kind, r in results.items():
        ratio = r["s_per_step"] / base["s_per_step"] if base else float("nan")
        mem = r[mem_key] / base[mem_key] if base else float("nan")
        rows.append([kind, r["s_per_step"], ratio, round(r[mem_key]), mem])
    harness.print_table(["row", "s/step", "vs tv1", "peak MB", "vs tv1"], rows, digits=2)
    print(machine)
    harness.write_report(args.out, {"args": vars(args), "results": results}, machine)


if __name__ == "__main__":
    main()
