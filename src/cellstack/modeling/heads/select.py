"""Test-time box selection: scores, thresholds and NMS from a head's box predictions
(the one rule single models and ensembles apply)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torchvision.ops import boxes as box_ops

from cellstack.modeling.heads.results import BoxPredictions, Window


@dataclass(frozen=True)
class BoxParams:
    """Test-time box selection (the original's ``rcnn`` settings).

    Attributes:
        score_thresh: minimum foreground probability.
        nms_iou: class-agnostic box NMS threshold (high: cells touch).
        max_detections: boxes kept per image, at least.
        per_megapixel: boxes kept per 10**6 pixels of the image when that is more
            (:func:`~cellstack.modeling.build.proposal_density`: a tile or a frame of
            any size keeps as many per object as the densest training image did).
        score_mode: "class": a box's score is its best class probability (the
            original); "objectness": 1 - P(background), the probability that it is a
            cell of any type, so a cell whose type the classifier cannot decide is not
            scored down (with C types its best class can be as low as 1/C).
    """

    score_thresh: float = 0.05
    nms_iou: float = 0.7
    max_detections: int = 1000
    score_mode: str = "class"
    per_megapixel: float = 0.0

    def limit(self, pixels: float) -> int:
        """Boxes kept in an image of ``pixels`` pixels."""
        return max(self.max_detections, math.ceil(self.per_megapixel * pixels / 1e6))


def select_detections(
    pred: BoxPredictions, params: BoxParams, window: Window | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The original's box post-processing, class-agnostic.

    Score = max foreground probability (or 1 - background probability, see
    :class:`BoxParams`), label = the most probable class, box = that class's box;
    boxes under ``score_thresh`` or degenerate are dropped, then one NMS across classes
    (one cell, one box, whatever its class) keeps at most :meth:`BoxParams.limit` of
    the image's ``window`` (x0, y0, x1, y1; ``max_detections`` without one).

    Returns:
        ``(boxes float[N, 4], scores float[N], labels int64[N] 0-based class)``.
    """
    scores, labels = pred.probs[:, 1:].max(dim=1)
    if params.score_mode == "objectness":
        scores = 1.0 - pred.probs[:, 0]
    boxes = pred.boxes[torch.arange(len(labels), device=labels.device), labels + 1]
    keep = scores > params.score_thresh
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    keep = box_ops.remove_small_boxes(boxes, 1e-2)
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    pixels = 0.0 if window is None else (window[2] - window[0]) * (window[3] - window[1])
    keep = box_ops.nms(boxes, scores, params.nms_iou)[: params.limit(pixels)]
    return boxes[keep], scores[keep], labels[keep]
