"""One real image, three quadrants to train, the fourth to score: the smallest real case.

A user with one annotated field of view trains on part of it and segments the rest.
For each chosen mnfinder test image (``--images``, default three unlike ones: dense
U2OS uint16, sparser uint16, large uint8 nuclei), the image and its labels are cut into
four quadrants; ``--config`` (with each ``--variant``'s overrides) trains on three and
is scored on the held-out one (bottom-right), beside an intensity Otsu on the same
quadrant; ``--model`` scores a run or a built-in on the same quadrants, no training.
Nuclei cut by a quadrant's edge stay as their visible part, as in any crop.

    python benchmarks/learning.py quadrants [--config configs/demo.yaml] [--set k=v ...]
        [--variant NAME k=v ...] [--no-default] [--model nuclei] [--images ID ...]
        [--work W] [--out J]

Prints the competition score per method and image, and their mean, and writes JSON
(default ``benchmarks/results/nuclei_quadrants.json``). The mnfinder data is fetched
once into the benchmarks' cache (``benchmarks/realdata.py``), never by a test.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import harness
import realdata

from suites.accuracy.real_nuclei import otsu_row, score_folder, variant_arguments, variants

DEFAULT_IMAGES = (
    "2022-10-14_U2OS__4",  # 768x869 uint16, 181 nuclei of ~27 px
    "2023-05-31_misc__1",  # 768x869 uint16, 79 nuclei of ~21 px
    "2023-05-31_misc__MAX_2021_1_12_BAY18_CREST647_chr18_568_h3kac488_DAPI_20x-20x_DAPI",
    # ^ 1024x1024 uint8, 40 nuclei of ~41 px
)


def quadrant_folders(source: Path, image_id: str, out: Path) -> tuple[Path, Path]:
    """Label folders ``out/train`` and ``out/test``: the top-left, top-right and
    bottom-left quadrants of ``image_id``, and its bottom-right one."""
    import tifffile

    image = tifffile.imread(source / "images" / f"{image_id}.tif")
    labels = tifffile.imread(source / "labels" / f"{image_id}.tif")
    h, w = labels.shape[:2]
    cut_y, cut_x = h // 2, w // 2
    rows, cols = (slice(0, cut_y), slice(cut_y, h)), (slice(0, cut_x), slice(cut_x, w))
    for q, (ys, xs) in enumerate((y, x) for y in rows for x in cols):
        split = out / ("test" if q == 3 else "train")
        for sub, array in (("images", image), ("labels", labels)):
            (split / sub).mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(split / sub / f"q{q}.tif", array[ys, xs])
    return out / "train", out / "test"


def main() -> None:
    parser = harness.arguments(__doc__, "nuclei_quadrants", threads=None)
    variant_arguments(parser)
    parser.add_argument("--images", nargs="+", default=list(DEFAULT_IMAGES))
    args = parser.parse_args()

    from cellstack.config import load_config

    realdata.use_imagenet_package(args.cache)  # for rows with model.backbone.pretrained
    source = realdata.mnfinder_folders(args.cache) / "test"
    work = args.work or Path(tempfile.mkdtemp(prefix="nuclei_quadrants_"))
    work.mkdir(parents=True, exist_ok=True)
    rows_to_train = variants(args)
    keys = [image_id[:40] for image_id in args.images]  # short names for rows and folders

    rows: dict[str, dict[str, dict]] = {"otsu": {}}
    for image_id, key in zip(args.images, keys, strict=True):
        train_dir, test_dir = quadrant_folders(source, image_id, work / "data" / key)
        rows["otsu"][key] = otsu_row(test_dir)
        print(f"{key} otsu: {rows['otsu'][key]['score']:.4f}", flush=True)
        for model in args.model:
            name = f"model {model}"
            rows.setdefault(name, {})[key] = score_folder(
                model, test_dir, work, f"{Path(model).name}_{key}"
            )
            print(f"{key} {name}: {rows[name][key]['score']:.4f}", flush=True)
        for name, *overrides in rows_to_train:
            cfg = load_config(args.config, [*args.set, *overrides])
            run = work / f"run_{name}" / key
            seconds = harness.train_or_resume(cfg, train_dir, run)
            row = score_folder(run, test_dir, work, f"{name}_{key}")
            rows.setdefault(name, {})[key] = {**row, "seconds": seconds}
            print(f"{key} {name}: {row['score']:.4f} ({seconds:.0f} s)", flush=True)

    print(f"\nmnfinder quadrants (3 train / 1 scored); {args.config} {' '.join(args.set)}")
    print("| method | mean | " + " | ".join(keys) + " |")
    print("|---|---|" + "---|" * len(keys))
    summary = {}
    for name, per in rows.items():
        mean = sum(per[k]["score"] for k in keys) / len(keys)
        summary[name] = mean
        print(
            f"| {name} | {mean:.4f} | " + " | ".join(f"{per[k]['score']:.4f}" for k in keys) + " |"
        )
    overrides = {name: rest for name, *rest in rows_to_train}
    harness.write_report(args.out, {"mean": summary, "rows": rows, "overrides": overrides})


if __name__ == "__main__":
    main()
