"""Measures of what a detector has learned, for ``docs/learning.md`` and the tests.

:func:`proposal_recall`: the fraction of ground-truth cells that some RPN proposal
covers at IoU >= t, with the test-time proposal selection. Without proposals on a cell
the heads never see it, so this bounds what the whole detector can find.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch
from torchvision.ops import box_iou

from cellstack.modeling.detector import CellDetector


@torch.no_grad()
def proposal_recall(
    model: CellDetector,
    images: Sequence[torch.Tensor],
    gt_boxes: Sequence[torch.Tensor],
    ious: Sequence[float] = (0.5, 0.7),
    top_n: int | None = None,
) -> dict[float, float]:
    """Recall of ground-truth boxes by the model's proposals.

    Args:
        model: the detector (put in eval mode for the call, then restored).
        images: float32[1, H, W] in [0, 1], one per image.
        gt_boxes: float32[N_i, 4] xyxy per image.
        ious: IoU thresholds.
        top_n: proposals kept per image (default: the model's test-time setting).

    Returns:
        ``{iou: recall}`` over all ground-truth boxes (NaN when there are none).
    """
    was_training = model.training
    model.eval()
    try:
        image_list = model.preprocess(list(images))
        feats = model.features(image_list)
        params = model.proposal_params
        if top_n is not None:
            params = replace(params, post_nms_top_n=top_n)
        proposals = model.propose(image_list, feats, params)
    finally:
        model.train(was_training)
    hits = dict.fromkeys(ious, 0)
    total = 0
    for props, gt in zip(proposals, gt_boxes, strict=True):
        total += len(gt)
        if len(gt) == 0 or len(props) == 0:
            continue
        best = box_iou(gt.to(props), props).max(dim=1).values
        for t in ious:
            hits[t] += int((best >= t).sum())
    return {t: hits[t] / total if total else float("nan") for t in ious}
