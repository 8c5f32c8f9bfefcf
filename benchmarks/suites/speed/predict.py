"""CPU inference speed and peak memory: cellstack's Mask R-CNN vs torchvision's.

Both are resnet50 + FPN Mask R-CNNs with random weights, run on 704x520 images (no
resize: torchvision's transform is told min_size=520, max_size=704), keeping at most
``--detections`` boxes above score 0.05 so both heads see the same load. Measured:

- ``torchvision v2``: ``maskrcnn_resnet50_fpn_v2`` (its 4conv+1fc box head, GN).
- ``cellstack s2``: ours at the same feature resolution (``stem_stride: 2``).
- ``cellstack s1``: ours as configured for the real data (``stem_stride: 1``: the
  encoder runs at twice the resolution, the original's accuracy trick; more compute).
- ``builtin NAME``: each built-in model, end to end through ``Segmenter`` (reading
  aside: normalisation, model, post-processing, label image) on a 512x512 image.

Each model runs in its own process (so its peak RSS is its own) with the same number of
threads. ``s/image`` is the model call; torchvision's includes pasting its masks into the
image, ours returns RoI masks, whose pasting, mask NMS and overlap removal (our full
post-processing) is timed separately as ``post s``.

Prints a table and writes JSON (default benchmarks/results/predict_speed.json).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import harness

H, W = 520, 704


def _worker(kind: str, n: int, detections: int, threads: int) -> dict:
    import time

    import numpy as np
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    if kind.startswith("builtin "):
        return _builtin(kind.split()[1], n)
    rng = np.random.default_rng(0)
    images = [torch.from_numpy(rng.random((1, H, W), dtype=np.float32)) for _ in range(n + 1)]
    post = None
    if kind == "torchvision v2":
        from torchvision.models.detection import maskrcnn_resnet50_fpn_v2

        model = maskrcnn_resnet50_fpn_v2(
            weights=None,
            weights_backbone=None,
            num_classes=4,
            min_size=H,
            max_size=W,
            box_detections_per_img=detections,
        )
        images = [im.expand(3, -1, -1) for im in images]
    else:
        from cellstack.config import load_config
        from cellstack.inference.postprocess import PostprocessParams, postprocess
        from cellstack.modeling.build import build_model

        stride = 1 if kind.endswith("s1") else 2
        cfg = load_config(
            None, [f"model.backbone.stem_stride={stride}", f"predict.max_detections={detections}"]
        )
        model = build_model(cfg.model, ["shsy5y", "astro", "cort"], cfg.predict)
        params = PostprocessParams(score_thresh=0.0)
        post = lambda inst: postprocess(inst, params)  # noqa: E731
    model.eval()
    times, post_times, counts = [], [], []
    with torch.inference_mode():
        for k, im in enumerate(images):
            t0 = time.perf_counter()
            (out,) = model([im])
            t1 = time.perf_counter()
            if post is not None:
                post(out)
            t2 = time.perf_counter()
            if k:  # the first image warms up
                times.append(t1 - t0)
                post_times.append(t2 - t1)
                counts.append(len(out["boxes"] if isinstance(out, dict) else out))
    return {
        "s_per_image": float(np.mean(times)),
        "postprocess_s_per_image": float(np.mean(post_times)) if post else None,
        "detections": float(np.mean(counts)),
        "peak_rss_mb": harness.peak_rss_mb(),
    }


def _builtin(name: str, n: int) -> dict:
    """A built-in model end to end (``Segmenter`` call: normalisation, model,
    post-processing, label image) on a 512x512 image of its kind: a real nuclei sample
    for ``nuclei``, a synthetic phase-contrast crop for the others."""
    import tempfile
    import time

    import numpy as np
    import torch

    from cellstack.data.images import read_image
    from cellstack.data.samples import sample_path
    from cellstack.inference.segmenter import Segmenter

    if name == "nuclei":
        image = read_image(sample_path("nuclei") / "images" / "hff_dapi_s17.tif")
    else:
        from cellstack.data.synthetic import synthesize

        folder = Path(tempfile.mkdtemp())
        synthesize(folder, 1, seed=3, shape=(512, 512), cell_types=("shsy5y",), progress=False)
        image = read_image(next((folder / "train").glob("*.png")))
    seg = Segmenter.load(name, device="cpu")
    times, counts = [], []
    with torch.inference_mode():
        for k in range(n + 1):
            t0 = time.perf_counter()
            result = seg(image)
            if k:
                times.append(time.perf_counter() - t0)
                counts.append(len(result))
    return {
        "s_per_image": float(np.mean(times)),
        "postprocess_s_per_image": None,
        "detections": float(np.mean(counts)),
        "peak_rss_mb": harness.peak_rss_mb(),
        "image": f"{image.shape[1]}x{image.shape[0]}, end to end",
    }


def main() -> None:
    parser = harness.arguments(__doc__, "predict_speed")
    parser.add_argument("--n-images", type=int, default=5)
    parser.add_argument("--detections", type=int, default=100)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_worker(args.worker, args.n_images, args.detections, args.threads)))
        return
    machine = harness.start(args)
    from cellstack.modeling.builtin import builtin_names

    kinds = ["torchvision v2", "cellstack s2", "cellstack s1"]
    kinds += [f"builtin {name}" for name in builtin_names()]
    flags = [
        "--n-images",
        args.n_images,
        "--detections",
        args.detections,
        "--threads",
        args.threads,
    ]
    results = {kind: harness.child(harness.again("--worker", kind, *flags)) for kind in kinds}
    base = results["torchvision v2"]["s_per_image"]
    print(f"{args.n_images} images {W}x{H}, <= {args.detections} detections; {machine}")
    rows = []
    for kind, r in results.items():
        post = r["postprocess_s_per_image"]
        rows.append(
            [
                kind,
                r["s_per_image"],
                1 / r["s_per_image"],
                r["s_per_image"] / base,
                "" if post is None else post,
                round(r["detections"]),
                round(r["peak_rss_mb"]),
            ]
        )
    harness.print_table(["model", "s/image", "img/s", "vs tv", "post s", "dets", "peak MB"], rows)
    harness.write_report(args.out, {"args": vars(args), "results": results}, machine)


if __name__ == "__main__":
    main()
