"""The built-ins in onnxruntime against PyTorch: the same cells, and the time per image.

Each built-in is exported (``cellstack export NAME OUT.onnx --format onnx``) and both
back ends segment the same images in this process:

- agreement: on the demo's images (``cells``: synthetic phase-contrast 512x512 crops)
  and mnfinder's 16 test images (``nuclei``; fetched by ``realdata``, skipped with
  ``--offline``), the competition score of the ONNX labels against PyTorch's as truth,
  and the cell counts;
- speed: seconds per 512x512 image (median of ``--repeats`` after a warm-up), 1 and 2
  threads, on synthetic images of each model's look (``nuclei``: fluorescent nuclei,
  ~110 a field; ``cells``: shsy5y phase contrast).

    python benchmarks/speed.py onnx [--repeats 5] [--images 8] [--offline]

Prints two tables and writes JSON.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import harness
import numpy as np

LOOKS = {"nuclei": "nuclei", "cells": "shsy5y"}


def synthetic(look: str, n: int, seed: int) -> list[np.ndarray]:
    """``n`` synthetic 512x512 images of ``look`` (``cellstack synth``)."""
    from cellstack.data.images import read_image
    from cellstack.data.synthetic import synthesize

    folder = Path(tempfile.mkdtemp(prefix="onnx_bench_"))
    synthesize(folder, n, seed=seed, shape=(512, 512), cell_types=[look], progress=False)
    return [read_image(p) for p in sorted((folder / "train").glob("*.png"))]


def agreement(torch_seg, onnx_seg, images: list[np.ndarray]) -> dict:
    """Mean score of the ONNX labels against PyTorch's, and both cell counts."""
    from cellstack.evaluation.metric import score_image

    scores, a, b = [], 0, 0
    for image in images:
        ref, got = torch_seg(image), onnx_seg(image)
        scores.append(score_image(ref.labels, got.labels).score)
        a, b = a + len(ref), b + len(got)
    return {
        "images": len(images),
        "score": float(np.mean(scores)),
        "torch_cells": a,
        "onnx_cells": b,
    }


def seconds(seg, images: list[np.ndarray], repeats: int) -> float:
    """Median seconds per image over ``repeats`` passes of ``images``."""
    seg(images[0])  # warm-up: allocations, kernels
    per = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for image in images:
            seg(image)
        per.append((time.perf_counter() - t0) / len(images))
    return statistics.median(per)


def main() -> None:
    parser = harness.arguments(__doc__, "onnx_speed", threads=None)
    parser.add_argument("--models", nargs="+", default=list(LOOKS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--images", type=int, default=8, help="synthetic images per model")
    parser.add_argument("--offline", action="store_true", help="no mnfinder rows")
    args = parser.parse_args()
    import torch

    from cellstack.data.images import read_image
    from cellstack.inference.modelexport import export_onnx
    from cellstack.inference.segmenter import Segmenter

    machine = harness.machine_line()
    work = Path(tempfile.mkdtemp(prefix="onnx_models_"))
    rows, agree = [], []
    for name in args.models:
        path = export_onnx(name, work / f"{name}.onnx")
        images = synthetic(LOOKS[name], args.images, seed=5)
        sets = {f"synthetic {LOOKS[name]}": images}
        if name == "nuclei" and not args.offline:
            import realdata

            test = realdata.mnfinder_folders() / "test" / "images"
            sets["mnfinder test"] = [read_image(p) for p in sorted(test.iterdir())]
        for threads in (1, 2):
            torch.set_num_threads(threads)
            plain = Segmenter.load(name, device="cpu")
            exported = Segmenter.load(path, device="cpu")  # its session takes torch's threads
            t_torch = seconds(plain, images, args.repeats)
            t_onnx = seconds(exported, images, args.repeats)
            rows.append(
                {
                    "model": name,
                    "threads": threads,
                    "torch_s": t_torch,
                    "onnx_s": t_onnx,
                    "speedup": t_torch / t_onnx,
                }
            )
            print(rows[-1], flush=True)
            if threads == 2:
                for set_name, set_images in sets.items():
                    agree.append(
                        {"model": name, "set": set_name, **agreement(plain, exported, set_images)}
                    )
                    print(agree[-1], flush=True)
    print(f"\nseconds per 512x512 image; {machine}")
    harness.print_table(
        ["model", "threads", "PyTorch s", "onnxruntime s", "PyTorch / onnxruntime"],
        [[r["model"], r["threads"], r["torch_s"], r["onnx_s"], r["speedup"]] for r in rows],
    )
    print("\nagreement (ONNX labels scored against PyTorch's)")
    harness.print_table(
        ["model", "images", "n", "score", "PyTorch cells", "onnxruntime cells"],
        [
            [a["model"], a["set"], a["images"], a["score"], a["torch_cells"], a["onnx_cells"]]
            for a in agree
        ],
        digits=4,
    )
    harness.write_report(args.out, {"speed": rows, "agreement": agree}, machine)


if __name__ == "__main__":
    main()
