"""Real fluorescent nuclei as the judge: mnfinder's hand-painted test split.

Fetches ``mnfinder==1.2.3`` (MIT) once into the cache (see ``benchmarks/realdata.py``),
converts it to label folders (its training + validation images to train on, the
duplicated image dropped from training, the 16 test images to score), then:

- ``--variant NAME key=value ...`` trains ``--config`` with those overrides on the
  training images and scores it (repeatable; ``default`` with no overrides first
  unless ``--no-default``);
- ``--model NAME_OR_RUN`` scores an existing run or a built-in model, no training;
- an intensity Otsu baseline is always scored beside them.

    python benchmarks/accuracy.py real-nuclei [--config configs/demo.yaml] [--set k=v ...]
        [--variant NAME k=v ...] [--model nuclei] [--train-images N]

Prints the competition score per method (overall, AP, AP50, per image) and writes JSON
(default ``benchmarks/results/real_nuclei.json``). ``--train-images N`` keeps only the
first N training images (the few-image curves of finetuning).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import harness
import realdata


def subset(train: Path, n: int | None, work: Path) -> Path:
    """``train`` itself, or a label folder with its first ``n`` images (symlinks)."""
    if n is None:
        return train
    out = work / f"train_{n}"
    for sub in ("images", "labels"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for image in sorted((train / "images").glob("*.tif"))[:n]:
        for sub in ("images", "labels"):
            target = out / sub / image.name
            if not target.exists():
                target.symlink_to((train / sub / image.name).resolve())
    return out


def score_folder(source: str | Path, test: Path, work: Path, name: str, overrides=()) -> dict:
    """Predict ``test/images`` with ``source`` and score against ``test/labels``."""
    _, _, report, seconds = harness.evaluate_source(source, test, work / f"pred_{name}", overrides)
    return {**report, "predict_seconds": seconds}


def otsu_row(test: Path) -> dict:
    from cellstack.data.layouts import load_dataset

    return harness.evaluate_otsu(load_dataset(test))[1]


def print_table(rows: dict, test_ids: list[str]) -> None:
    print("| method | score | AP | AP50 | train s |")
    print("|---|---|---|---|---|")
    for name, r in rows.items():
        print(
            f"| {name} | {r['score']:.4f} | {r['ap']:.4f} | {r['ap50']:.4f} "
            f"| {r.get('seconds', 0):.0f} |"
        )
    print("\nper test image:")
    print("| image | " + " | ".join(rows) + " |")
    print("|---|" + "---|" * len(rows))
    for image_id in test_ids:
        cells = " | ".join(
            f"{r['per_image'].get(image_id, float('nan')):.3f}" for r in rows.values()
        )
        print(f"| {image_id[:48]} | {cells} |")


def variant_arguments(parser: argparse.ArgumentParser) -> None:
    """The options this benchmark and ``learning.py quadrants`` share: the config, its
    variants, models to score, where runs go."""
    parser.add_argument("--config", type=Path, default=Path("configs/demo.yaml"))
    parser.add_argument("--variant", nargs="+", action="append", default=[])
    parser.add_argument("--no-default", action="store_true", help="no plain --config row")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE")
    parser.add_argument("--model", action="append", default=[], help="run or built-in to score")
    parser.add_argument("--work", type=Path, help="keep runs and predictions here")
    parser.add_argument("--cache", type=Path)


def variants(args: argparse.Namespace) -> list[list[str]]:
    """``[name, *overrides]`` per row to train: ``default`` first unless ``--no-default``."""
    return ([] if args.no_default else [["default"]]) + args.variant


def main() -> None:
    parser = harness.arguments(__doc__, "real_nuclei", threads=None)
    variant_arguments(parser)
    parser.add_argument("--train-images", type=int)
    args = parser.parse_args()

    from cellstack.config import load_config

    realdata.use_imagenet_package(args.cache)  # for rows with model.backbone.pretrained
    root = realdata.mnfinder_folders(args.cache)
    work = args.work or Path(tempfile.mkdtemp(prefix="real_nuclei_"))
    work.mkdir(parents=True, exist_ok=True)
    train_dir = subset(root / "train", args.train_images, work)
    test = root / "test"
    test_ids = sorted(p.stem for p in (test / "images").glob("*.tif"))

    rows = {"otsu": otsu_row(test)}
    print(f"otsu: {rows['otsu']['score']:.4f}", flush=True)
    for model in args.model:
        rows[f"model {model}"] = score_folder(model, test, work, Path(model).name)
        print(f"model {model}: {rows[f'model {model}']['score']:.4f}", flush=True)
    for name, *overrides in variants(args):
        cfg = load_config(args.config, [*args.set, *overrides])
        seconds = harness.train_or_resume(cfg, train_dir, work / f"run_{name}")
        rows[name] = {
            **score_folder(work / f"run_{name}", test, work, name),
            "seconds": seconds,
            "overrides": [*args.set, *overrides],
        }
        print(f"{name}: {rows[name]['score']:.4f} ({seconds:.0f} s)", flush=True)

    n_train = len(list((train_dir / "images").glob("*.tif")))
    print(f"\nmnfinder: {n_train} training images, {len(test_ids)} test images; {args.config}")
    print_table(rows, test_ids)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    harness.write_report(args.out, {"train_images": n_train, "rows": rows})


if __name__ == "__main__":
    main()
