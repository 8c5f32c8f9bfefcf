"""Dataset-level evaluation: the competition score, COCO AP and a per-cell-type table."""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from cellstack.data.records import ImageRecord
from cellstack.evaluation.coco_ap import mask_ap
from cellstack.evaluation.metric import IOU_THRESHOLDS, score_image
from cellstack.fileio import atomic_write


@dataclass(frozen=True)
class EvaluationReport:
    """What ``cellstack evaluate`` prints and writes.

    Attributes:
        score: the competition metric, mean over images.
        per_image: ``{image_id: score}``.
        per_cell_type: ``{cell_type: mean score of its images}``.
        per_threshold: ``{"0.50": mean over images of TP/(TP+FP+FN), ...}``.
        ap, ap50: COCO mask AP (0.50:0.95) and AP at IoU 0.50, class-agnostic.
        counts: ``{cell_type: number of images}``.
    """

    score: float
    per_image: dict[str, float]
    per_cell_type: dict[str, float]
    per_threshold: dict[str, float]
    ap: float
    ap50: float
    counts: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "score": self.score,
            "ap": self.ap,
            "ap50": self.ap50,
            "per_cell_type": self.per_cell_type,
            "per_threshold": self.per_threshold,
            "counts": self.counts,
            "per_image": self.per_image,
        }

    def write_json(self, path: str | Path) -> None:
        with atomic_write(path) as f:
            json.dump(self.to_dict(), f, indent=2, allow_nan=True)

    def table(self) -> str:
        """A plain-text table: one row per cell type, then the total."""
        lines = [f"{'cell type':<14}{'images':>8}{'score':>9}"]
        for cell_type, value in self.per_cell_type.items():
            lines.append(f"{cell_type:<14}{self.counts.get(cell_type, 0):>8}{value:>9.4f}")
        lines.append(f"{'all':<14}{len(self.per_image):>8}{self.score:>9.4f}")
        lines.append(f"COCO mask AP {_fmt(self.ap)}   AP50 {_fmt(self.ap50)}")
        return "\n".join(lines)


def _fmt(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.4f}"


def evaluate(
    truths: Sequence[ImageRecord],
    preds: Mapping[str, sp.csr_matrix],
    *,
    scores: Mapping[str, Sequence[float]] | None = None,
    thresholds: np.ndarray = IOU_THRESHOLDS,
    progress: bool = False,
) -> EvaluationReport:
    """Score predictions against annotated records.

    Args:
        truths: annotated images.
        preds: ``{image_id: sparse bool[M, H*W]}``; an image missing here is scored as
            an empty prediction (with a warning), an id not in ``truths`` is ignored
            (with a warning).
        scores: optional confidences per image, used only by COCO AP.
        progress: show a progress bar.
    """
    from tqdm import tqdm

    truth_ids = {r.image_id for r in truths}
    missing = [r.image_id for r in truths if r.image_id not in preds]
    extra = [k for k in preds if k not in truth_ids]
    if missing:
        warnings.warn(
            f"{len(missing)} image(s) have no prediction and score as empty, e.g. {missing[0]}",
            stacklevel=2,
        )
    if extra:
        warnings.warn(
            f"{len(extra)} predicted image id(s) are not in the truth and are ignored, "
            f"e.g. {extra[0]}",
            stacklevel=2,
        )
    per_image, per_thr, by_type = {}, [], {}
    truth_masks, pred_masks, shapes = {}, {}, {}
    for rec in tqdm(truths, desc="scoring", unit="img", disable=not progress):
        t = rec.sparse_masks()
        p = preds.get(rec.image_id)
        if p is None:
            p = sp.csr_matrix((0, rec.height * rec.width), dtype=bool)
        result = score_image(t, p, shape=rec.shape, thresholds=thresholds)
        per_image[rec.image_id] = result.score
        per_thr.append(result.per_threshold)
        by_type.setdefault(rec.cell_type, []).append(result.score)
        truth_masks[rec.image_id], pred_masks[rec.image_id] = t, p
        shapes[rec.image_id] = rec.shape
    ap = mask_ap(truth_masks, pred_masks, shapes, scores)
    mean_thr = np.mean(per_thr, axis=0) if per_thr else np.full(len(thresholds), np.nan)
    return EvaluationReport(
        score=float(np.mean(list(per_image.values()))) if per_image else float("nan"),
        per_image=per_image,
        per_cell_type={k: float(np.mean(v)) for k, v in sorted(by_type.items())},
        per_threshold={f"{t:.2f}": float(v) for t, v in zip(thresholds, mean_thr, strict=True)},
        ap=ap["ap"],
        ap50=ap["ap50"],
        counts={k: len(v) for k, v in sorted(by_type.items())},
    )
