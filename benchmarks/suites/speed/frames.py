"""Time per pixel of the frame sizes microscopes write, against a 512x512 image (issue 43).

A built-in (default ``nuclei``) runs through :class:`cellstack.Segmenter` (the model
loaded once; normalisation, model, post-processing, label image) on frames of
512x512, 512x1024, 700x1100, 1040x1392 and 2048x2048 pixels. Every frame has the same
cell density: it is cut from one source image mirrored into a seamless pattern (a 2x2
block of the image and its flips, repeated), so a larger frame holds proportionally
more cells and the ratio measures the per-pixel cost of the size alone.

The source image is a synthetic nuclei field (``--look``, made here, 512x512) or a real
one (``--image PATH``, e.g. mnfinder's U2OS test image, with ``--labels PATH`` for its
cells' diameter). Reported per size: the median
of ``--repeats`` calls after one warm-up, seconds per megapixel, the ratio of that to
the 512x512 frame's (timed call for call beside it, so the ratio does not drift), the
tiles the predictor cut (count and size) and the cells found.

With Cellpose's venv present (``--peer-python``, as ``benchmarks/accuracy.py peers``), Cellpose
``cyto`` segments the same frames with the same threads, told the true median cell
diameter (its faster path: no size model; it rescales the frame to its 30 px cells
first, so an image of 13 px nuclei costs it 5x the pixels), after one warm-up frame; its seconds and
cellstack's lead (Cellpose's seconds over cellstack's) are added to each row.

    python benchmarks/speed.py frames [--model nuclei] [--image PATH] [--threads 2]
        [--out benchmarks/results/frame_speed.json]

Prints a table and writes JSON.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import harness
import numpy as np

SIZES = [(512, 512), (512, 1024), (700, 1100), (1040, 1392), (2048, 2048)]
PEER = Path.home() / ".cache/cellstack-bench/cellpose-venv/bin/python"


def seamless(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``image`` mirrored into a 2x2 block of itself and its flips, repeated and cut to
    ``shape``: the same density of cells everywhere, no seam."""
    block = np.block([[image, image[:, ::-1]], [image[::-1], image[::-1, ::-1]]])
    reps = (-(-shape[0] // block.shape[0]), -(-shape[1] // block.shape[1]))
    return np.tile(block, reps)[: shape[0], : shape[1]]


def source_image(args) -> tuple[np.ndarray, str, float | None]:
    """The image frames are cut from, its name, and its cells' median diameter (px;
    None for a real image given without labels)."""
    from cellstack.data.masks import sparse_from_labels
    from cellstack.data.stats import median_diameter

    if args.image is not None:
        from cellstack.data.images import read_image
        from cellstack.data.labels import read_label_image

        diameter = None
        if args.labels is not None:
            diameter = median_diameter([sparse_from_labels(read_label_image(args.labels))])
        return read_image(args.image), args.image.name, diameter
    from cellstack.data.synthetic import generate_image

    sample = generate_image(np.random.default_rng(args.seed), args.look, (512, 512))
    diameter = median_diameter([sparse_from_labels(sample.labels)])
    return sample.image, f"synthetic {args.look} (seed {args.seed})", diameter


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


def cellpose_seconds(frames: dict, diameter: float, work: Path, args) -> dict[str, float]:
    """Cellpose ``cyto``'s seconds per frame (``benchmarks/cellpose_worker.py``)."""
    import subprocess

    import realdata
    import tifffile

    work.mkdir(parents=True, exist_ok=True)
    jobs = []
    for name, frame in [("warm-up", frames["512x512"]), *frames.items()]:
        tifffile.imwrite(work / f"{name}.tif", frame)
        jobs.append(
            {
                "image": str(work / f"{name}.tif"),
                "name": name,
                "diameter": diameter,
                "channels": [0, 0],
            }
        )
    (work / "jobs.json").write_text(json.dumps(jobs))
    worker = harness.BENCH / "cellpose_worker.py"
    weights = str(realdata.cellpose_cyto())
    cmd = [str(args.peer_python), str(worker), weights, str(work / "jobs.json"), str(work / "out")]
    subprocess.run([*cmd, str(args.threads)], check=True, stderr=subprocess.DEVNULL)
    timings = json.loads((work / "out" / "timings.json").read_text())
    return {name: timings[name]["seconds"] for name in frames}


def main() -> None:
    parser = harness.arguments(__doc__, "frame_speed")
    parser.add_argument("--model", default="nuclei")
    parser.add_argument("--image", type=Path, default=None)
    parser.add_argument("--labels", type=Path, default=None, help="--image's labels")
    parser.add_argument("--look", default="nuclei")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--peer-python", type=Path, default=PEER)
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache/cellstack-frames")
    args = parser.parse_args()

    import cellstack

    harness.start(args)
    image, name, diameter = source_image(args)
    seg = cellstack.Segmenter.load(args.model, device="cpu")
    frames = {f"{h}x{w}": seamless(image, (h, w)) for h, w in SIZES}
    rows = []
    base_frame = frames["512x512"]
    for shape in SIZES:
        frame = frames[f"{shape[0]}x{shape[1]}"]
        seg(frame)  # warm-up: allocator and kernels for this size
        times, base = [], []
        # Each call of the frame beside one of the 512x512 frame: the ratio of their
        # medians does not drift with the machine's state over the run.
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            seg(base_frame)
            base.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            result = seg(frame)
            times.append(time.perf_counter() - t0)
        seconds = statistics.median(times)
        base_per_mpx = statistics.median(base) / (512 * 512 / 1e6)
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
                "per_pixel_vs_512": seconds / (shape[0] * shape[1] / 1e6) / base_per_mpx,
            }
        )
    peer = args.peer_python.is_file()
    if peer:
        seconds = cellpose_seconds(frames, diameter, args.work, args)
        for row in rows:
            row["cellpose_s"] = seconds[row["size"]]
            row["lead"] = row["cellpose_s"] / row["seconds"]
    machine = harness.machine_line(args.threads)
    print(f"{args.model} on {name}; {machine}")
    extra = " Cellpose cyto (s) | lead |" if peer else ""
    print(f"| frame | seconds | s per Mpx | per pixel vs 512x512 | tiles | cells |{extra}")
    print("|---|---|---|---|---|---|" + ("---|---|" if peer else ""))
    for r in rows:
        tail = f" {r['cellpose_s']:.2f} | {r['lead']:.1f}x |" if peer else ""
        print(
            f"| {r['size']} | {r['seconds']:.2f} | {r['s_per_mpx']:.2f} | "
            f"{r['per_pixel_vs_512']:.2f}x | {r['tiles']} x {r['tile']} | {r['cells']} |{tail}"
        )
    report = {"model": args.model, "image": name, "diameter": diameter, "rows": rows}
    harness.write_report(args.out, report, machine)


if __name__ == "__main__":
    main()
