"""``cellstack demo``: the whole job on an embedded default, end to end on a CPU.

1. synthesise a small phase-contrast dataset (Sartorius layout);
2. hold out one fold of samples (grouped by ``sample_id``) as the test set: training
   never sees it, not even for validation or threshold tuning;
3. train a small Mask R-CNN (``configs/demo.yaml``) from scratch on the other folds
   (its thresholds are then tuned on those training images, as on a user's data);
4. predict the held-out images with it, with the built-in ``cells`` model as it is
   (zero-shot), and with ``cells`` finetuned on the same training images
   (``configs/finetune.yaml``); segment them with an Otsu baseline too;
5. segment two real fluorescent nuclei images shipped as sample data (mnfinder's test
   split, MIT) with the built-in ``nuclei`` model and with Otsu;
6. score everything with the competition metric and COCO AP, print the tables, write
   side-by-side overlays (truth | Otsu | models).
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

DEMO_CONFIG = "demo.yaml"


def demo_config_path() -> Path:
    """The packaged demo config (also shipped as ``configs/demo.yaml``)."""
    return Path(str(resources.files("cellstack") / "configs" / DEMO_CONFIG))


def finetune_config_path() -> Path:
    """The packaged finetuning config (also shipped as ``configs/finetune.yaml``)."""
    return Path(str(resources.files("cellstack") / "configs" / "finetune.yaml"))


def sample_path(name: str) -> Path:
    """A sample label folder shipped with the package (``samples/nuclei``: two real
    mnfinder test images, MIT)."""
    return Path(str(resources.files("cellstack") / "samples" / name))


def fresh(folder: Path) -> None:
    """Remove a folder the demo wrote before (only ever inside the demo's own folder)."""
    import shutil

    if folder.exists():
        shutil.rmtree(folder)


#: Marks a folder the demo made: only such a folder (or an empty one) is written into.
MARKER = ".cellstack-demo"


def claim_output(out: Path) -> None:
    """Make ``out`` the demo's folder, before anything is written or deleted.

    Refused: a file, or a non-empty folder the demo did not create (its ``run/`` could
    be a user's trained model, its ``data/train.csv`` a user's annotations).
    """
    from cellstack.errors import CellstackError

    if out.exists() and not out.is_dir():
        raise CellstackError(f"{out}: exists and is not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise CellstackError(
            f"{out}: folder is not empty and was not made by cellstack demo; choose another "
            "--out (the demo replaces what it wrote there before)"
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("made by cellstack demo; it may replace this folder's contents\n")


@dataclass(frozen=True)
class DemoResult:
    """What the demo measured and where it wrote things."""

    out_dir: Path
    scores: dict[str, dict[str, float]]
    seconds: float


def run_demo(
    out: str | Path,
    *,
    n_images: int = 32,
    seed: int = 0,
    overrides: tuple[str, ...] = (),
    progress: bool = True,
    cell_types: tuple[str, ...] | None = None,
    finetune_overrides: tuple[str, ...] = ("train.iterations=150",),
) -> DemoResult:
    """Run the demo into ``out`` and return the scores of every method.

    ``cell_types``: synthetic cell types (default the three phase-contrast ones; see
    :mod:`cellstack.data.synthetic` for the relief and fluorescence types).
    ``finetune_overrides``: for finetuning the built-in ``cells`` (``configs/
    finetune.yaml``)."""
    from tqdm import tqdm

    from cellstack.config import load_config
    from cellstack.data import rle
    from cellstack.data.dataset import load_sample
    from cellstack.data.folds import folds_beside, grouped_stratified_folds, write_folds_csv
    from cellstack.data.images import write_png
    from cellstack.data.labels import sparse_from_labels, write_label_tiff
    from cellstack.data.sartorius import read_train_csv, write_submission, write_train_csv
    from cellstack.data.synthetic import synthesize
    from cellstack.engine.trainer import train
    from cellstack.evaluation.report import evaluate
    from cellstack.fileio import open_text
    from cellstack.inference.baseline import otsu_instances
    from cellstack.inference.overlay import outline_overlay, side_by_side
    from cellstack.inference.run import predict_folder
    from cellstack.modeling.builtin import builtin_names

    t0 = time.perf_counter()
    out = Path(out)
    claim_output(out)
    say = print if progress else (lambda *a, **k: None)
    data = out / "data"
    say(f"[1/5] synthesizing {n_images} images into {data}")
    from cellstack.data.synthetic import CELL_TYPES

    synthesize(data, n_images, seed=seed, progress=progress, cell_types=cell_types or CELL_TYPES)
    records = read_train_csv(data / "train.csv")
    cfg = load_config(demo_config_path(), list(overrides))
    folds = grouped_stratified_folds(records, 4, seed=seed)
    write_folds_csv(folds_beside(data), records, folds)
    held_out = [r for r in records if folds[r.image_id] == 0]
    # The training images' rows only: a train.csv of its own beside train/.
    held_ids = {r.image_id for r in held_out}
    with open_text(data / "train.csv", "train.csv") as f:
        rows = [row for row in csv.DictReader(f) if row["id"] not in held_ids]
    write_train_csv(data / "demo_train.csv", rows)

    say(
        f"[2/6] training {cfg.model.arch} ({cfg.model.backbone.name}) from scratch for "
        f"{cfg.train.iterations} iterations on {len(records) - len(held_out)} images"
    )
    fresh(out / "run")  # a demo starts afresh
    train(cfg, data / "demo_train.csv", out / "run", progress=progress)

    held_dir = out / "held_out"
    for rec in held_out:  # the predictor reads a folder of images
        (held_dir / rec.image_path.name).parent.mkdir(parents=True, exist_ok=True)
        target = held_dir / rec.image_path.name
        if not target.exists():
            target.symlink_to(rec.image_path.resolve())
    say(f"[3/6] predicting {len(held_out)} held-out images: scratch model, built-in cells")
    predict_folder(
        out / "run", held_dir, out / "model", device="cpu", progress=progress, overwrite=True
    )
    builtins = builtin_names()
    if "cells" in builtins:
        predict_folder(
            "cells", held_dir, out / "cells", device="cpu", progress=progress, overwrite=True
        )
        ft_cfg = load_config(finetune_config_path(), [*finetune_overrides, "init.from=cells"])
        say(
            f"[4/6] finetuning the built-in cells model for {ft_cfg.train.iterations} "
            "iterations on the same training images"
        )
        fresh(out / "finetuned")
        train(ft_cfg, data / "demo_train.csv", out / "finetuned", progress=progress)
        predict_folder(
            out / "finetuned",
            held_dir,
            out / "cells_finetuned",
            device="cpu",
            progress=progress,
            overwrite=True,
        )

    say("[5/6] Otsu baseline")
    otsu, otsu_rles = {}, {}
    for rec in tqdm(held_out, desc="otsu", unit="img", disable=not progress):
        image, _ = load_sample(rec)
        labels = otsu_instances(image)
        otsu[rec.image_id] = sparse_from_labels(labels)
        otsu_rles[rec.image_id] = rle.encode_labels(labels)[1]
        write_label_tiff(out / "otsu" / "labels" / f"{rec.image_id}.tif", labels)
    write_submission(out / "otsu" / "submission.csv", otsu_rles)

    say("[6/6] scoring")
    from cellstack.data.layouts import load_dataset, load_predictions

    methods = {"otsu": None, "model": "model"}
    if "cells" in builtins:
        methods.update({"cells zero-shot": "cells", "cells finetuned": "cells_finetuned"})
    reports = {"otsu": evaluate(held_out, otsu)}
    for name, folder in methods.items():
        if folder is not None:
            preds = load_predictions(out / folder / "submission.csv", held_out)
            reports[name] = evaluate(held_out, preds)
    for name, report in reports.items():
        report.write_json(out / (methods[name] or "otsu") / "scores.json")
    from cellstack.data.labels import read_label_image

    for rec in held_out:
        image, truth = load_sample(rec)
        panels = [outline_overlay(image, truth)]
        for folder in ("otsu", *(f for f in methods.values() if f)):
            labels = read_label_image(out / folder / "labels" / f"{rec.image_id}.tif")
            panels.append(outline_overlay(image, labels))
        write_png(out / "overlays" / f"{rec.image_id}.png", side_by_side(*panels))

    real = {}
    if "nuclei" in builtins:  # real data: two mnfinder test images the model never saw
        samples = sample_path("nuclei")
        sample_records = load_dataset(samples)
        predict_folder(
            "nuclei",
            samples / "images",
            out / "nuclei",
            device="cpu",
            progress=progress,
            overwrite=True,
        )
        nuclei_preds = load_predictions(out / "nuclei" / "labels", sample_records)
        otsu_nuclei = {
            r.image_id: sparse_from_labels(otsu_instances(load_sample(r)[0]))
            for r in sample_records
        }
        real = {
            "otsu": evaluate(sample_records, otsu_nuclei),
            "nuclei": evaluate(sample_records, nuclei_preds),
        }
        real["nuclei"].write_json(out / "nuclei" / "scores.json")
        for rec in sample_records:
            image, truth = load_sample(rec)
            pred = read_label_image(out / "nuclei" / "labels" / f"{rec.image_id}.tif")
            otsu_labels = otsu_instances(image)
            write_png(
                out / "overlays" / f"nuclei_{rec.image_id}.png",
                side_by_side(
                    outline_overlay(image, truth),
                    outline_overlay(image, otsu_labels),
                    outline_overlay(image, pred),
                ),
            )

    seconds = time.perf_counter() - t0
    scores = {
        name: {"score": r.score, "ap": r.ap, "ap50": r.ap50, **r.per_cell_type}
        for name, r in reports.items()
    }
    types = sorted(reports["model"].per_cell_type)
    split = "fold 0 of 4, grouped by sample, never seen in training"
    say(f"\nheld-out synthetic images: {len(held_out)} ({split})")
    say(f"{'method':<17}{'score':>8}{'AP':>8}{'AP50':>8}" + "".join(f"{t:>9}" for t in types))
    for name, sc in scores.items():
        say(
            f"{name:<17}{sc['score']:>8.4f}{sc['ap']:>8.4f}{sc['ap50']:>8.4f}"
            + "".join(f"{sc.get(t, float('nan')):>9.4f}" for t in types)
        )
    if real:
        say("\nreal fluorescent nuclei (2 mnfinder test images, never seen in training)")
        for name, r in real.items():
            scores[f"{name} (real nuclei)"] = {"score": r.score, "ap": r.ap, "ap50": r.ap50}
            say(f"{name:<17}{r.score:>8.4f}{r.ap:>8.4f}{r.ap50:>8.4f}")
    columns = " | ".join(["truth", "otsu", *(f for f in methods.values() if f)])
    say(f"overlays ({columns}): {out / 'overlays'}")
    say(f"training curves: {out / 'run' / 'training.png'}; total time {seconds / 60:.1f} min")
    return DemoResult(out, scores, seconds)
