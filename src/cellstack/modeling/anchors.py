"""Anchors centred on feature-map cells, and test-time proposal selection.

torchvision (like mmdet 2.x) puts the anchors of cell ``i`` at ``i * stride``: the
corner of the cell. A horizontal flip of a width-``W`` image then maps that centre to
``W - i * stride``, which is no anchor's centre, so the RPN outputs of a flipped image
cannot be flipped back onto the anchors of the original. Centring anchors on the cell,
at ``(i + 0.5) * stride``, makes the grid symmetric: with the padded size a multiple of
every stride, cell ``i`` of a flipped map is exactly cell ``G - 1 - i`` of the original,
so flip TTA can average RPN outputs anchor by anchor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import boxes as box_ops


class CentredAnchorGenerator(AnchorGenerator):
    """torchvision's AnchorGenerator with anchor centres at cell centres."""

    def grid_anchors(
        self, grid_sizes: list[list[int]], strides: list[list[torch.Tensor]]
    ) -> list[torch.Tensor]:
        anchors = super().grid_anchors(grid_sizes, strides)
        out = []
        for a, (sh, sw) in zip(anchors, strides, strict=True):
            half = torch.stack([sw, sh, sw, sh]).to(a) / 2
            out.append(a + half)
        return out


@dataclass(frozen=True)
class RPNOutputs:
    """Raw RPN outputs for a batch, one tensor per FPN level, finest first.

    Attributes:
        objectness: float[B, A, H_l, W_l] logits.
        deltas: float[B, 4A, H_l, W_l] box deltas; channel ``a * 4 + k`` holds component
            ``k`` (dx, dy, dw, dh) of anchor ``a``.
    """

    objectness: list[torch.Tensor]
    deltas: list[torch.Tensor]


@dataclass(frozen=True)
class ProposalParams:
    """Test-time proposal selection (the original's ``rpn_proposal`` settings).

    Attributes:
        pre_nms_top_n: best anchors kept per level before NMS.
        nms_iou: NMS threshold, applied within each level.
        score_thresh: minimum objectness probability.
        post_nms_top_n: proposals kept per image after NMS (None: all).
        min_size: boxes narrower or shorter than this are dropped (pixels).
        per_megapixel: proposals per 10**6 pixels of an image (tile): a larger or
            denser tile than the model trained on gets more than ``post_nms_top_n``
            (and ``pre_nms_top_n`` in proportion), so a fixed count cannot cap the cells
            of a dense tile (:meth:`budget`); 0: the fixed counts.
    """

    pre_nms_top_n: int = 1000
    nms_iou: float = 0.7
    score_thresh: float = 0.0
    post_nms_top_n: int | None = 1000
    min_size: float = 1e-3
    per_megapixel: float = 0.0

    def budget(self, pixels: float) -> tuple[int, int | None]:
        """``(pre_nms_top_n, post_nms_top_n)`` for an image of ``pixels`` pixels: the
        fixed counts, or more where ``per_megapixel`` asks for more."""
        need = math.ceil(self.per_megapixel * pixels / 1e6)
        if self.post_nms_top_n is None or need <= self.post_nms_top_n:
            return self.pre_nms_top_n, self.post_nms_top_n
        return math.ceil(self.pre_nms_top_n * need / self.post_nms_top_n), need


def select_proposals(
    outputs: RPNOutputs,
    anchors: list[torch.Tensor],
    box_coder: det_utils.BoxCoder,
    windows: list[tuple[float, float, float, float]],
    params: ProposalParams,
) -> list[torch.Tensor]:
    """Decode RPN outputs into proposals, as torchvision's RPN does at test time.

    Per level the ``pre_nms_top_n`` best logits are kept; their boxes are decoded,
    clipped to the image window, filtered by size and objectness, NMS-ed per level and
    the ``post_nms_top_n`` best kept (both counts for the window's area:
    :meth:`ProposalParams.budget`).

    Args:
        outputs: RPN outputs of the batch.
        anchors: per level float[H_l * W_l * A, 4] xyxy (the same for every image).
        box_coder: the RPN's box coder.
        windows: per image (x0, y0, x1, y1) of its pixels in the padded batch.
        params: selection settings.

    Returns:
        Per image float[P, 4] xyxy proposals, best first.
    """
    out = []
    for b, window in enumerate(windows):
        pre_nms_top_n, post_nms_top_n = params.budget(
            (window[2] - window[0]) * (window[3] - window[1])
        )
        boxes, scores, levels = [], [], []
        for lvl, (obj, dlt, anc) in enumerate(
            zip(outputs.objectness, outputs.deltas, anchors, strict=True)
        ):
            a = obj.shape[1]
            logits = obj[b].permute(1, 2, 0).reshape(-1)
            deltas = dlt[b].reshape(a, 4, *dlt.shape[-2:]).permute(2, 3, 0, 1).reshape(-1, 4)
            top = logits.topk(min(pre_nms_top_n, len(logits))).indices
            boxes.append(box_coder.decode_single(deltas[top].float(), anc[top]))
            scores.append(torch.sigmoid(logits[top].float()))
            levels.append(torch.full_like(top, lvl))
        boxes, scores, levels = torch.cat(boxes), torch.cat(scores), torch.cat(levels)
        boxes = clip_to_window(boxes, window)
        keep = box_ops.remove_small_boxes(boxes, params.min_size)
        keep = keep[scores[keep] >= params.score_thresh]
        boxes, scores, levels = boxes[keep], scores[keep], levels[keep]
        keep = box_ops.batched_nms(boxes, scores, levels, params.nms_iou)
        if post_nms_top_n is not None:
            keep = keep[:post_nms_top_n]
        out.append(boxes[keep])
    return out


def clip_to_window(boxes: torch.Tensor, window: tuple[float, float, float, float]) -> torch.Tensor:
    """Clip float[..., 4] xyxy boxes to the window (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = window
    return torch.stack(
        [
            boxes[..., 0].clamp(x0, x1),
            boxes[..., 1].clamp(y0, y1),
            boxes[..., 2].clamp(x0, x1),
            boxes[..., 3].clamp(y0, y1),
        ],
        dim=-1,
    )
