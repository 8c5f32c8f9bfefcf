"""A folder through ``cellstack predict``, end to end, and where its time goes (issue 43).

``--n`` synthetic 512x512 nuclei images (about 110 nuclei each, made once under
``--work``) go through ``cellstack predict MODEL FOLDER --out OUT`` with every default
output, as a user runs it:

- **end to end**: the command in a fresh process, timed from its start; *first image*
  is when its first label image appears (import, model load, the first image), and
  *images/s* the steady rate after it;
- **start-up**: ``import cellstack.cli`` in a fresh process, and loading the model;
- **profile**: the same command in this process under ``cProfile``, the outputs
  written in the same thread (cProfile sees one; ``predict`` writes them in a second
  thread while the next image is segmented); each stage's cumulative seconds per image
  (read, normalise, backbone + FPN, proposals, box head, mask head, post-processing,
  label image, each output written). cProfile adds its own overhead to Python-heavy
  stages: read shares, not absolute figures.

    python benchmarks/speed.py folder [--model nuclei] [--n 40] [--threads 2]
        [--out benchmarks/results/folder_speed.json]

Prints the tables and writes JSON.
"""

from __future__ import annotations

import cProfile
import os
import pstats
import subprocess
import sys
import time
from pathlib import Path

import harness

# (stage, module path suffix, function name): a stage's cumulative time is its function's.
STAGES = [
    ("read image", "data/images.py", "read_planes"),
    ("normalise", "data/images.py", "to_gray_uint8"),
    ("backbone + FPN", "modeling/detector.py", "features"),
    ("proposals (RPN)", "modeling/detector.py", "propose"),
    ("box head", "modeling/heads/base.py", "predict_boxes"),
    ("mask head", "modeling/heads/base.py", "predict_masks"),
    ("post-processing", "inference/postprocess.py", "postprocess"),
    ("label image", "data/masks.py", "pixels_to_labels"),
    ("object table", "inference/result.py", "object_table"),
    ("write labels/*.tif", "data/labels.py", "write_label_tiff"),
    ("write objects/*.csv", "inference/export.py", "_write_table"),
    ("overlay drawn", "inference/overlay.py", "outline_overlay"),
    ("write overlays/*.png", "data/images.py", "write_png"),
    ("submission RLE", "data/rle.py", "encode_labels"),
    ("results.json entries", "data/coco.py", "result_entry"),
    ("results.json + csv written", "inference/export.py", "close"),
    ("whole predict_folder", "inference/predict.py", "predict_folder"),
]


def make_folder(work: Path, n: int, seed: int) -> Path:
    folder = work / f"nuclei_512_{n}_{seed}"
    if not folder.is_dir():
        from cellstack.data.synthetic import synthesize

        synthesize(folder, n, seed=seed, shape=(512, 512), cell_types=["nuclei"], progress=False)
    return folder / "train"


def end_to_end(model: str, images: Path, out: Path, threads: int) -> dict:
    """``cellstack predict`` in a fresh process: first label image, total, rate."""
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "cellstack.cli", "predict", model, str(images)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [*cmd, "--out", str(out), "--quiet"], env=env, stdout=subprocess.DEVNULL
    )
    first = None
    while proc.poll() is None:
        if first is None and (out / "labels").is_dir() and any((out / "labels").iterdir()):
            first = time.perf_counter() - t0
        time.sleep(0.01)
    total = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"cellstack predict failed ({proc.returncode})")
    n = len(list((out / "labels").iterdir()))
    first = total if first is None else first
    return {
        "images": n,
        "seconds": total,
        "first_image_s": first,
        "images_per_s": n / total,
        "steady_images_per_s": (n - 1) / (total - first) if n > 1 and total > first else None,
    }


def start_up(model: str, threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import cellstack.cli"], env=env, check=True)
    import_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], env=env, check=True)
    python_s = time.perf_counter() - t0
    code = (
        "import time, cellstack; t = time.perf_counter(); "
        f"cellstack.Segmenter.load({model!r}, device='cpu'); "
        "print(time.perf_counter() - t)"
    )
    load = subprocess.run(
        [sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True
    )
    return {
        "python_s": python_s,
        "import_s": import_s - python_s,
        "model_load_s": float(load.stdout.split()[-1]),
    }


def profile(model: str, images: Path, out: Path, n: int) -> list[dict]:
    import shutil

    from cellstack.cli import main
    from cellstack.inference import predict

    def serial(writer, image_ids, results):
        for image_id, result in zip(image_ids, results, strict=True):
            writer.add(image_id, result)

    shutil.rmtree(out, ignore_errors=True)
    prof = cProfile.Profile()
    # cProfile sees one thread: the outputs are written in it here, not behind the model.
    behind = getattr(predict, "write_behind", None)  # None: cellstack before issue 43
    predict.write_behind = serial
    try:
        prof.runcall(main, ["predict", model, str(images), "--out", str(out), "--quiet"])
    finally:
        if behind is not None:
            predict.write_behind = behind
    stats = pstats.Stats(prof).stats
    rows = []
    for stage, suffix, name in STAGES:
        seconds = sum(
            value[3]
            for (file, _, func), value in stats.items()
            if func == name and file.replace(os.sep, "/").endswith(suffix)
        )
        rows.append({"stage": stage, "s_per_image": seconds / n})
    return rows


def main() -> None:
    parser = harness.arguments(__doc__, "folder_speed")
    parser.add_argument("--model", default="nuclei")
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache/cellstack-folder")
    args = parser.parse_args()

    harness.start(args)
    images = make_folder(args.work, args.n, args.seed)
    run = end_to_end(args.model, images, args.work / "pred", args.threads)
    start = start_up(args.model, args.threads)
    stages = profile(args.model, images, args.work / "pred_profiled", args.n)
    machine = harness.machine_line(args.threads)

    print(
        f"`cellstack predict {args.model}` on {args.n} synthetic 512x512 nuclei images; {machine}"
    )
    print(
        "| images/s end to end | steady images/s | first image (s) | import (s) | model load (s) |"
    )
    print("|---|---|---|---|---|")
    steady = run["steady_images_per_s"]
    print(
        f"| {run['images_per_s']:.2f} | {steady or float('nan'):.2f} | "
        f"{run['first_image_s']:.2f} | {start['import_s']:.2f} | {start['model_load_s']:.2f} |"
    )
    whole = stages[-1]["s_per_image"]
    print("\n| stage (cProfile) | ms per image | share |")
    print("|---|---|---|")
    for row in stages:
        share = row["s_per_image"] / whole if whole else float("nan")
        print(f"| {row['stage']} | {1000 * row['s_per_image']:.0f} | {share:.0%} |")
    harness.write_report(
        args.out,
        {"model": args.model, "n": args.n, "machine": machine, **run, **start, "stages": stages},
    )


if __name__ == "__main__":
    main()
