"""Scale-out on Dask: memory and time of large images in blocks, images/s on a folder.

    python benchmarks/scale.py blocks [--model nuclei] [--sizes 4096 8192 16384]
        [--block 2048] [--workers 2] [--folder-images 16] [--whole-max 4096]

Large images: a square mosaic of each size (tiles of the two shipped nuclei samples,
flipped), stored as a chunked zarr, is segmented block by block on a fresh
``LocalCluster`` (``--workers`` processes, one thread each); reported are the wall time
and each worker's peak RSS, which must not grow with the image size. Beside it, up to
``--whole-max``, the whole-image predictor in a child process (its peak RSS and time).

Folders: ``--folder-images`` copies of the samples (512x512), predicted by one process
(``predict_folder``) and over 1 and 2 workers (``predict_images``): images/s and the
ratio to one process. Prints a table and writes JSON
(default ``benchmarks/results/scale_out.json``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import harness
import numpy as np

import cellstack

SAMPLES = Path(cellstack.__file__).parent / "samples" / "nuclei" / "images"


def mosaic_zarr(path: Path, size: int) -> Path:
    """A ``size`` x ``size`` uint8 mosaic of flipped sample tiles, chunked 1024."""
    import tifffile
    import zarr

    tiles = [tifffile.imread(p) for p in sorted(SAMPLES.glob("*.tif"))]
    tiles = [
        t if t.dtype == np.uint8 else (t / max(t.max(), 1) * 255).astype(np.uint8) for t in tiles
    ]
    variants = [f(t) for t in tiles for f in (lambda a: a, np.flipud, np.fliplr, np.transpose)]
    arr = zarr.open_array(
        str(path), mode="w", shape=(size, size), chunks=(1024, 1024), dtype="uint8", zarr_format=2
    )
    step = 512
    for y in range(0, size, 1024):
        band = np.zeros((min(1024, size - y), size), np.uint8)
        for yy in range(0, band.shape[0], step):
            for x in range(0, size, step):
                tile = variants[((y + yy) // step * 7 + x // step) % len(variants)]
                h, w = min(step, band.shape[0] - yy), min(step, size - x)
                band[yy : yy + h, x : x + w] = tile[:h, :w]
        arr[y : y + band.shape[0]] = band
    return path


def worker_peak_mb(client) -> list[float]:
    def peak() -> float:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    return sorted(client.run(peak).values())


def blocks_row(model: str, size: int, block: int, workers: int, work: Path) -> dict:
    from cellstack.distributed.blocks import segment
    from cellstack.distributed.cluster import open_client

    src = mosaic_zarr(work / f"mosaic_{size}.zarr", size)
    seg = cellstack.Segmenter.load(model, device="cpu")
    out = work / f"labels_{size}.ome.zarr"
    shutil.rmtree(out, ignore_errors=True)
    with open_client(workers) as client:
        t0 = time.perf_counter()
        summary = segment(seg, src, out, block=block, client=client, progress=False)
        seconds = time.perf_counter() - t0
        peaks = worker_peak_mb(client)
    shutil.rmtree(out)
    return {
        "size": size,
        "blocks": summary.blocks,
        "cells": summary.cells,
        "cut": summary.cut,
        "seconds": seconds,
        "megapixels_per_s": size * size / 1e6 / seconds,
        "worker_peak_rss_mb": peaks,
    }


WHOLE = """
import resource, sys, time, zarr, numpy as np, cellstack
seg = cellstack.Segmenter.load(sys.argv[1], device="cpu")
image = np.asarray(zarr.open_array(sys.argv[2], mode="r")[:])
t0 = time.perf_counter(); n = len(seg(image)); s = time.perf_counter() - t0
print(s, n, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def whole_row(model: str, size: int, work: Path) -> dict:
    import torch

    src = work / f"mosaic_{size}.zarr"
    done = subprocess.run(
        [sys.executable, "-c", WHOLE, model, str(src)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())},
    )
    seconds, cells, peak = done.stdout.split()[-3:]
    return {
        "size": size,
        "seconds": float(seconds),
        "cells": int(cells),
        "peak_rss_mb": float(peak),
    }


def folder_rows(model: str, n: int, work: Path) -> list[dict]:
    from cellstack.distributed.cluster import open_client
    from cellstack.distributed.folders import predict_images
    from cellstack.inference.predict import predict_folder

    folder = work / "folder"
    folder.mkdir(exist_ok=True)
    samples = sorted(SAMPLES.glob("*.tif"))
    for k in range(n):
        shutil.copy(samples[k % len(samples)], folder / f"img{k:03d}.tif")
    rows = []
    t0 = time.perf_counter()
    predict_folder(model, folder, work / "one", device="cpu", progress=False, overwrite=True)
    base = n / (time.perf_counter() - t0)
    rows.append({"how": "one process", "images_per_s": base, "ratio": 1.0})
    for workers in (1, 2):
        with open_client(workers) as client:
            t0 = time.perf_counter()
            out = work / f"w{workers}"
            shutil.rmtree(out, ignore_errors=True)
            predict_images(model, folder, out, client=client, progress=False)
            rate = n / (time.perf_counter() - t0)
        rows.append({"how": f"{workers} Dask workers", "images_per_s": rate, "ratio": rate / base})
    return rows


def main() -> None:
    parser = harness.arguments(__doc__, "scale_out", threads=None)
    parser.add_argument("--model", default="nuclei", help="run or built-in (default nuclei)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 8192, 16384])
    parser.add_argument("--block", type=int, default=2048)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--folder-images", type=int, default=16)
    parser.add_argument("--whole-max", type=int, default=4096)
    args = parser.parse_args()
    report: dict = {"model": args.model, "block": args.block, "workers": args.workers}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        report["blocks"] = [
            blocks_row(args.model, s, args.block, args.workers, work) for s in args.sizes
        ]
        report["whole_image"] = [
            whole_row(args.model, s, work) for s in args.sizes if s <= args.whole_max
        ]
        report["folder"] = folder_rows(args.model, args.folder_images, work)
    print(
        f"large images, {args.model}, blocks of {args.block} px, {args.workers} workers x 1 thread"
    )
    print("| size | blocks | cells | cut | s | Mpx/s | worker peak RSS MB | whole s / peak MB |")
    print("|---|---|---|---|---|---|---|---|")
    whole = {r["size"]: r for r in report["whole_image"]}
    for r in report["blocks"]:
        w = whole.get(r["size"])
        ws = f"{w['seconds']:.0f} / {w['peak_rss_mb']:.0f}" if w else "-"
        peaks = ", ".join(f"{p:.0f}" for p in r["worker_peak_rss_mb"])
        print(
            f"| {r['size']} | {r['blocks']} | {r['cells']} | {r['cut']} | {r['seconds']:.0f} "
            f"| {r['megapixels_per_s']:.2f} | {peaks} | {ws} |"
        )
    print(f"\nfolder of {args.folder_images} 512x512 images")
    for r in report["folder"]:
        print(f"| {r['how']} | {r['images_per_s']:.2f} img/s | {r['ratio']:.2f}x |")
    harness.write_report(args.out, report)


if __name__ == "__main__":
    main()
