"""Time per pixel of the frame sizes microscopes write, against a 512x512 image (issue 43).

A built-in (default ``nuclei``) runs through :class:`cellstack.Segmenter` (the model
loaded once; normalisation, model, post-processing, label image) on frames of
512x512, 512x1024, 700x1100, 1040x1392 and 2048x2048 pixels. Every frame has the same
cell density: it is cut from one source image mirrored into a seamless pattern (a 2x2
block of the image and its flips, repeated), so a larger frame holds proportionally
more cells and the ratio measures the per-pixel cost of the size alone.

The source image is a synthetic nuclei field (``--look``, made here, 512x512) or a real
one (``--image PATH``, e.g. mnfinder's U2OS test image). Reported per size: the median
of ``--repeats`` calls after one warm-up, seconds per megapixel, the ratio of that to
the 512x512 frame, the tiles the predictor cut (count and size) and the cells found.

    python benchmarks/frame_speed.py [--model nuclei] [--image PATH] [--threads 2]
        [--out benchmarks/results/frame_speed.json]

Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

SIZES = [(512, 512), (512, 1024), (700, 1100), (1040, 1392), (2048, 2048)]


def seamless(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``image`` mirrored into a 2x2 block of itself and its flips, repeated and cut to
    ``shape``: the same density of cells everywhere, no seam."""
    block = np.block([[image, image[:, ::-1]], [image[::-1], image[::-1, ::-1]]])
    reps = (-(-shape[0] // block.shape[0]), -(-shape[1] // block.shape[1]))
    return np.tile(block, reps)[: shape[0], : shape[1]]


def source_image(args) -> tuple[np.ndarray, str]:
    if args.image is not None:
        from cellstack.data.images import read_image

        image = read_image(args.image)
        return image, args.image.name
    from cellstack.data.synthetic import generate_image

    sample = generate_image(np.random.default_rng(args.seed), args.look, (512, 512))
    return sample.image, f"synthetic {args.look} (seed {args.seed})"


def tiles_of(segmenter, shape: tuple[int, int]) -> tuple[int, str]:
    """The predictor's tiling of a frame of ``shape`` at its scale."""
    from cellstack.data.dataset import rescale_image

    predictor = segmenter.predictor
    h, w = rescale_image(np.zeros(shape, np.uint8), predictor.scale).shape
    if not hasattr(predictor, "tiling"):  # cellstack before issue 43: square tiles
        from cellstack.inference.predictor import tile_starts

        t, o = predictor.tile_size, predictor.tile_overlap
        if max(h, w) <= t:
            return 1, f"{h}x{w}"
        return len(tile_starts(h, t, o)) * len(tile_starts(w, t, o)), f"{min(h, t)}x{min(w, t)}"
    layout = predictor.tiling(h, w)
    return len(layout.offsets), f"{layout.tile[0]}x{layout.tile[1]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="nuclei")
    parser.add_argument("--image", type=Path, default=None)
    parser.add_argument("--look", default="nuclei")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/frame_speed.json"))
    args = parser.parse_args()

    import torch
    from reporting import machine_line

    import cellstack

    torch.set_num_threads(args.threads)
    image, name = source_image(args)
    seg = cellstack.Segmenter.load(args.model, device="cpu")
    rows = []
    for shape in SIZES:
        frame = seamless(image, shape)
        seg(frame)  # warm-up: allocator and kernels for this size
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            result = seg(frame)
            times.append(time.perf_counter() - t0)
        seconds = statistics.median(times)
        n_tiles, tile = tiles_of(seg, shape)
        rows.append(
            {
                "size": f"{shape[0]}x{shape[1]}",
                "pixels": shape[0] * shape[1],
                "seconds": seconds,
                "s_per_mpx": seconds / (shape[0] * shape[1] / 1e6),
                "tiles": n_tiles,
                "tile": tile,
                "cells": int(result.labels.max()),
            }
        )
    base = rows[0]["s_per_mpx"]
    for row in rows:
        row["per_pixel_vs_512"] = row["s_per_mpx"] / base
    machine = machine_line(args.threads)
    print(f"{args.model} on {name}; {machine}")
    print("| frame | seconds | s per Mpx | per pixel vs 512x512 | tiles | cells |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['size']} | {r['seconds']:.2f} | {r['s_per_mpx']:.2f} | "
            f"{r['per_pixel_vs_512']:.2f}x | {r['tiles']} x {r['tile']} | {r['cells']} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"model": args.model, "image": name, "machine": machine, "rows": rows}, indent=1)
    )


if __name__ == "__main__":
    main()
