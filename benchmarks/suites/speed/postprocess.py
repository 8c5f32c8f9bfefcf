"""Post-processing a dense image: where the time goes, and batched mask pasting against
pasting one mask at a time (how ``paste_masks`` worked before).

A 704x520 image with N detections of 15-35 px cells (random 28x28 mask probabilities,
boxes spread over the image, half of them overlapping a neighbour), as a dense shsy5y
image gives after box NMS. Prints a table and writes JSON (default
benchmarks/results/postprocess_speed.json)::

    python benchmarks/speed.py postprocess [--cells 500] [--repeats 5]
"""

from __future__ import annotations

import time

import harness
import numpy as np
import torch
import torch.nn.functional as F


def paste_one_at_a_time(roi_masks, boxes, image_size, threshold):
    """The previous ``paste_masks``: one ``grid_sample`` call per mask."""
    h, w = image_size
    out = []
    for mask, (x1, y1, x2, y2) in zip(roi_masks, boxes.tolist(), strict=True):
        c0, c1 = max(int(np.floor(x1)), 0), min(int(np.ceil(x2)), w)
        r0, r1 = max(int(np.floor(y1)), 0), min(int(np.ceil(y2)), h)
        if c1 <= c0 or r1 <= r0:
            out.append(np.zeros(0, dtype=np.int64))
            continue
        gx = (torch.arange(c0, c1) + 0.5 - x1) / max(x2 - x1, 1e-6) * 2 - 1
        gy = (torch.arange(r0, r1) + 0.5 - y1) / max(y2 - y1, 1e-6) * 2 - 1
        grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=-1)[None]
        probs = F.grid_sample(
            mask[None, None], grid, mode="bilinear", padding_mode="border", align_corners=False
        )[0, 0]
        ys, xs = np.nonzero(probs.numpy() > threshold)
        out.append(((ys + r0) * w + (xs + c0)).astype(np.int64))
    return out


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = harness.arguments(__doc__, "postprocess_speed", threads=None)
    parser.add_argument("--cells", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    from cellstack.inference.postprocess import PostprocessParams, paste_masks, postprocess
    from cellstack.structures import Instances

    gen = torch.Generator().manual_seed(0)
    size = (520, 704)
    n = args.cells
    centres = torch.rand(n, 2, generator=gen) * torch.tensor([704.0, 520.0])
    sides = torch.rand(n, 2, generator=gen) * 20 + 15
    boxes = torch.cat([centres - sides / 2, centres + sides / 2], dim=1)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 28), torch.linspace(-1, 1, 28), indexing="ij")
    blob = (1 - (yy**2 + xx**2)).clamp(0, 1)
    roi_masks = (blob[None] + 0.3 * torch.rand(n, 28, 28, generator=gen)).clamp(0, 1)
    inst = Instances(
        size,
        boxes=boxes,
        scores=torch.rand(n, generator=gen),
        classes=torch.zeros(n, dtype=torch.int64),
        roi_masks=roi_masks,
    )
    params = PostprocessParams(score_thresh=0.0)
    batched = paste_masks(roi_masks, boxes, size, 0.5)
    single = paste_one_at_a_time(roi_masks, boxes, size, 0.5)
    assert all(np.array_equal(a, b) for a, b in zip(batched, single, strict=True))
    rows = {
        "paste, one mask at a time (before)": best_of(
            lambda: paste_one_at_a_time(roi_masks, boxes, size, 0.5), args.repeats
        ),
        "paste, batched (now)": best_of(
            lambda: paste_masks(roi_masks, boxes, size, 0.5), args.repeats
        ),
        "postprocess, all steps (now)": best_of(lambda: postprocess(inst, params), args.repeats),
    }
    kept = len(postprocess(inst, params))
    print(
        f"\n{n} detections of 15-35 px on a 704x520 image ({kept} cells kept), CPU, "
        f"best of {args.repeats}"
    )
    harness.print_table(["step", "seconds"], list(rows.items()))
    before = rows["paste, one mask at a time (before)"]
    print(f"batched paste: {before / rows['paste, batched (now)']:.1f}x faster, same pixels")
    harness.write_report(args.out, {"cells": n, "kept": kept, "seconds": rows})


if __name__ == "__main__":
    main()
