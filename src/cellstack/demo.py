"""``cellstack demo``: the whole job on an embedded default, end to end on a CPU.

1. synthesise a small phase-contrast dataset (Sartorius layout);
2. hold out one fold of samples (grouped by ``sample_id``) as the test set: training
   never sees it, not even for validation or threshold tuning;
3. train a small Mask R-CNN (``configs/demo.yaml``) on the other folds (its
   thresholds are then tuned on those training images, as on a user's data);
4. predict the held-out images, and segment them with an Otsu baseline too;
5. score both with the competition metric and COCO AP, print the table, write
   side-by-side overlays (truth | Otsu | model).
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
) -> DemoResult:
    """Run the demo into ``out`` and return the scores of the model and of Otsu.

    ``cell_types``: synthetic cell types (default the three phase-contrast ones; see
    :mod:`cellstack.data.synthetic` for the relief and fluorescence types)."""
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
    from cellstack.inference.baseline import otsu_instances
    from cellstack.inference.overlay import outline_overlay, side_by_side
    from cellstack.inference.run import predict_folder

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
    with open(data / "train.csv", newline="") as f:
        rows = [row for row in csv.DictReader(f) if row["id"] not in held_ids]
    write_train_csv(data / "demo_train.csv", rows)

    say(
        f"[2/5] training {cfg.model.arch} ({cfg.model.backbone.name}) for "
        f"{cfg.train.iterations} iterations on {len(records) - len(held_out)} images"
    )
    run = out / "run"
    if run.exists():
        import shutil

        shutil.rmtree(run)  # a demo starts afresh
    train(cfg, data / "demo_train.csv", run, progress=progress)

    say(f"[3/5] predicting {len(held_out)} held-out images")
    held_dir = out / "held_out"
    for rec in held_out:  # the predictor reads a folder of images
        (held_dir / rec.image_path.name).parent.mkdir(parents=True, exist_ok=True)
        target = held_dir / rec.image_path.name
        if not target.exists():
            target.symlink_to(rec.image_path.resolve())
    predict_folder(run, held_dir, out / "model", device="cpu", progress=progress, overwrite=True)

    say("[4/5] Otsu baseline")
    otsu, otsu_rles = {}, {}
    for rec in tqdm(held_out, desc="otsu", unit="img", disable=not progress):
        image, _ = load_sample(rec)
        labels = otsu_instances(image)
        otsu[rec.image_id] = sparse_from_labels(labels)
        otsu_rles[rec.image_id] = rle.encode_labels(labels)[1]
        write_label_tiff(out / "otsu" / "labels" / f"{rec.image_id}.tif", labels)
    write_submission(out / "otsu" / "submission.csv", otsu_rles)

    say("[5/5] scoring")
    from cellstack.data.layouts import load_predictions

    model_preds = load_predictions(out / "model" / "submission.csv", held_out)
    reports = {"otsu": evaluate(held_out, otsu), "model": evaluate(held_out, model_preds)}
    for name, report in reports.items():
        report.write_json(out / name / "scores.json")
    from cellstack.data.labels import read_label_image

    for rec in held_out:
        image, truth = load_sample(rec)
        panels = [outline_overlay(image, truth)]
        for name in ("otsu", "model"):
            panels.append(
                outline_overlay(
                    image, read_label_image(out / name / "labels" / f"{rec.image_id}.tif")
                )
            )
        write_png(out / "overlays" / f"{rec.image_id}.png", side_by_side(*panels))

    seconds = time.perf_counter() - t0
    scores = {
        name: {"score": r.score, "ap": r.ap, "ap50": r.ap50, **r.per_cell_type}
        for name, r in reports.items()
    }
    types = sorted(reports["model"].per_cell_type)
    split = "fold 0 of 4, grouped by sample, never seen in training"
    say(f"\nheld-out synthetic images: {len(held_out)} ({split})")
    say(f"{'method':<8}{'score':>8}{'AP':>8}{'AP50':>8}" + "".join(f"{t:>9}" for t in types))
    for name, s in scores.items():
        say(
            f"{name:<8}{s['score']:>8.4f}{s['ap']:>8.4f}{s['ap50']:>8.4f}"
            + "".join(f"{s.get(t, float('nan')):>9.4f}" for t in types)
        )
    say(f"overlays (truth | otsu | model): {out / 'overlays'}")
    say(f"training curves: {run / 'training.png'}; total time {seconds / 60:.1f} min")
    return DemoResult(out, scores, seconds)
