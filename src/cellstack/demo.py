"""``cellstack demo``: the whole job on an embedded default, end to end on a CPU.

Synthesises a small dataset, holds out one fold of samples, segments the held-out
images, scores them with the competition metric and writes overlays.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class DemoResult:
    """Where the demo wrote things and what it measured."""

    data_dir: Path
    out_dir: Path
    scores: dict[str, float]
    overlays: list[Path]


def run_demo(
    out: str | Path, *, n_images: int = 16, seed: int = 0, progress: bool = True
) -> DemoResult:
    """Run the demo into ``out`` (created if missing) and return what it measured."""
    from tqdm import tqdm

    from cellstack.data import rle
    from cellstack.data.folds import grouped_stratified_folds, write_folds_csv
    from cellstack.data.images import read_image, write_png
    from cellstack.data.labels import write_label_tiff
    from cellstack.data.sartorius import read_train_csv, write_submission
    from cellstack.data.synthetic import synthesize
    from cellstack.evaluation.matching import sparse_from_labels
    from cellstack.evaluation.report import evaluate
    from cellstack.inference.baseline import otsu_instances
    from cellstack.inference.overlay import outline_overlay, side_by_side

    out = Path(out)
    data_dir = out / "data"
    synthesize(data_dir, n_images, seed=seed, progress=progress)
    records = read_train_csv(data_dir / "train.csv")
    folds = grouped_stratified_folds(records, 4, seed=seed)
    write_folds_csv(data_dir / "folds.csv", records, folds)
    held_out = [r for r in records if folds[r.image_id] == 0]

    pred_dir = out / "otsu"
    preds, submission, overlays = {}, {}, []
    for rec in tqdm(held_out, desc="otsu baseline", unit="img", disable=not progress):
        image = read_image(rec.image_path)
        labels = otsu_instances(image)
        preds[rec.image_id] = sparse_from_labels(labels)
        submission[rec.image_id] = rle.encode_labels(labels)[1]
        write_label_tiff(pred_dir / "labels" / f"{rec.image_id}.tif", labels)
        panel = side_by_side(
            outline_overlay(image, rec.label_image()), outline_overlay(image, labels)
        )
        path = pred_dir / "overlays" / f"{rec.image_id}.png"
        write_png(path, panel)
        overlays.append(path)
    write_submission(pred_dir / "submission.csv", submission)
    report = evaluate(held_out, preds)
    report.write_json(pred_dir / "scores.json")
    scores = {"otsu": report.score}
    if progress:
        print(f"\nheld-out images: {len(held_out)} (fold 0 of 4, grouped by sample)")
        print(report.table())
        print(f"overlays (truth | prediction): {pred_dir / 'overlays'}")
    return DemoResult(
        data_dir, out, {k: float(np.round(v, 4)) for k, v in scores.items()}, overlays
    )
