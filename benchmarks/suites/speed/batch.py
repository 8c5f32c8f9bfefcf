"""Folders of many images: images/s of ``cellstack predict`` by ``predict.batch_size``, and
through the Dask folder path.

    python benchmarks/speed.py batch [--model nuclei] [--images 200] [--batches 1 2 4 8]
        [--workers 2]

The folder holds ``--images`` 512x512 crops of the two shipped nuclei samples (each
crop flipped and shifted, so no two are the same). Each batch size predicts the whole
folder with ``predict_folder`` in a fresh child process (its peak RSS its own), on the
same threads (``--device cuda``: on the GPU, with ``predict.amp`` unless ``--no-amp``);
then ``predict_images`` on a ``LocalCluster`` of ``--workers`` processes (one thread
each, on CPU) at the default batch size. Reported: images/s, the ratio to batch 1,
peak RSS. The default batch size is chosen from these numbers (see docs/benchmarks.md).

Prints a table and writes JSON (default ``benchmarks/results/batch_sweep.json``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import harness
import numpy as np

import cellstack

SAMPLES = Path(cellstack.__file__).parent / "samples" / "nuclei" / "images"

ONE = """
import resource, sys, time
from cellstack.inference.predict import PredictOptions, predict_folder
model, folder, out, batch, device, amp = sys.argv[1:7]
options = PredictOptions(overrides=(f"predict.batch_size={batch}", f"predict.amp={amp}"))
t0 = time.perf_counter()
summary = predict_folder(model, folder, out, options, device=device, progress=False, overwrite=True)
seconds = time.perf_counter() - t0
print(seconds, summary.n_cells, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def make_folder(folder: Path, n: int) -> None:
    """``n`` distinct 512x512 crops of the nuclei samples (flips and shifts)."""
    from cellstack.data.images import read_image

    folder.mkdir(parents=True, exist_ok=True)
    import tifffile

    planes = [read_image(p) for p in sorted(SAMPLES.glob("*.tif"))]
    rng = np.random.default_rng(0)
    for k in range(n):
        plane = planes[k % len(planes)]
        y = int(rng.integers(0, plane.shape[0] - 512 + 1))
        x = int(rng.integers(0, plane.shape[1] - 512 + 1))
        crop = plane[y : y + 512, x : x + 512]
        crop = crop[:: (-1) ** (k // 2 % 2), :: (-1) ** (k // 4 % 2)]
        tifffile.imwrite(folder / f"img{k:03d}.tif", np.ascontiguousarray(crop))


def one_process(
    model: str, folder: Path, out: Path, batch: int, threads: int, device: str, amp: bool
) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", ONE, model, str(folder), str(out), str(batch), device, str(amp)],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": str(threads)},
    )
    if done.returncode != 0:
        sys.exit(done.stderr[-3000:])
    seconds, cells, peak = done.stdout.split()[-3:]
    return {"seconds": float(seconds), "cells": int(cells), "peak_rss_mb": float(peak)}


def dask_row(model: str, folder: Path, out: Path, workers: int) -> dict:
    from cellstack.distributed.cluster import open_client
    from cellstack.distributed.folders import predict_images

    with open_client(workers) as client:
        t0 = time.perf_counter()
        summary = predict_images(model, folder, out, client=client, progress=False)
        seconds = time.perf_counter() - t0
    return {"seconds": seconds, "cells": summary.n_cells, "peak_rss_mb": None}


def main() -> None:
    parser = harness.arguments(__doc__, "batch_sweep", threads=None)
    parser.add_argument("--model", default="nuclei", help="run or built-in (default nuclei)")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the Dask row stays on CPU)")
    parser.add_argument(
        "--amp", action=argparse.BooleanOptionalAction, default=True, help="predict.amp (CUDA)"
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cellstack-batch-"))
    make_folder(work / "images", args.images)
    rows = {}
    for batch in args.batches:
        rows[f"batch {batch}"] = one_process(
            args.model,
            work / "images",
            work / f"b{batch}",
            batch,
            args.threads,
            args.device,
            args.amp,
        )
        print(f"batch {batch}: {args.images / rows[f'batch {batch}']['seconds']:.2f} img/s")
    if args.workers:
        name = f"Dask, {args.workers} workers"
        rows[name] = dask_row(args.model, work / "images", work / "dask", args.workers)
        print(f"{name}: {args.images / rows[name]['seconds']:.2f} img/s")
    base = rows[f"batch {args.batches[0]}"]["seconds"]
    print(
        f"\n{args.images} images 512x512, model {args.model}, {args.device}"
        f"{' AMP' if args.amp and args.device.startswith('cuda') else ''}, {args.threads} threads "
        f"(Dask: one thread per worker)"
    )
    print(f"{'how':<20}{'img/s':>8}{'ratio':>8}{'cells':>9}{'peak MB':>9}")
    for name, r in rows.items():
        r["images_per_s"] = args.images / r["seconds"]
        r["ratio"] = base / r["seconds"]
        peak = "" if r["peak_rss_mb"] is None else f"{r['peak_rss_mb']:.0f}"
        print(f"{name:<20}{r['images_per_s']:>8.2f}{r['ratio']:>8.2f}{r['cells']:>9}{peak:>9}")

    harness.write_report(args.out, {"args": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
