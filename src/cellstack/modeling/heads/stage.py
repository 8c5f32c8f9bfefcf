"""One stage of a staged RoI head: its sampler, box coder and losses, and its refinement
of RoIs into the next stage's proposals."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import _utils as det_utils
from torchvision.ops import boxes as box_ops

from cellstack.modeling.heads.layers import BoxHead, MaskHead
from cellstack.modeling.heads.results import SampledRoIs


class RoIStage(nn.Module):
    """One detection stage: sampling rule, box head, box coder and optional mask head.

    Args:
        box_head: the stage's box head (its ``class_agnostic`` sets the regression).
        mask_head: the stage's mask head, or None.
        fg_iou: IoU for a proposal to be foreground (and below which it is background).
        bbox_weights: delta normalisation, the inverse of the target stds
            ((10, 10, 5, 5) = stds 0.1, 0.1, 0.2, 0.2).
        loss_weight: multiplies all of this stage's losses.
        box_beta: smooth-L1 beta of the box loss (0 = L1).
        batch_size_per_image, positive_fraction: RoI sampling.
    """

    def __init__(
        self,
        box_head: BoxHead,
        mask_head: MaskHead | None,
        *,
        fg_iou: float,
        bbox_weights: tuple[float, float, float, float],
        loss_weight: float = 1.0,
        box_beta: float = 1 / 9,
        batch_size_per_image: int = 512,
        positive_fraction: float = 0.25,
    ) -> None:
        super().__init__()
        self.box_head = box_head
        self.mask_head = mask_head
        self.fg_iou = fg_iou
        self.loss_weight = loss_weight
        self.box_beta = box_beta
        self.matcher = det_utils.Matcher(fg_iou, fg_iou, allow_low_quality_matches=False)
        self.sampler = det_utils.BalancedPositiveNegativeSampler(
            batch_size_per_image, positive_fraction
        )
        self.box_coder = det_utils.BoxCoder(bbox_weights)

    def sample(self, proposals: list[torch.Tensor], targets: list[dict]) -> list[SampledRoIs]:
        """Match proposals (plus the ground-truth boxes) to targets and sample them."""
        out = []
        for props, target in zip(proposals, targets, strict=True):
            gt_boxes = target["boxes"].to(props.dtype)
            is_gt = torch.cat(
                [
                    torch.zeros(len(props), dtype=torch.bool, device=props.device),
                    torch.ones(len(gt_boxes), dtype=torch.bool, device=props.device),
                ]
            )
            props = torch.cat([props, gt_boxes])
            if len(gt_boxes) == 0:
                matched = torch.zeros(len(props), dtype=torch.int64, device=props.device)
                labels = torch.zeros_like(matched)
            else:
                match = self.matcher(box_ops.box_iou(gt_boxes, props))
                matched = match.clamp(min=0)
                labels = target["classes"][matched] + 1
                labels[match < 0] = 0
            pos, neg = self.sampler([labels])
            keep = torch.nonzero(pos[0] | neg[0]).squeeze(1)
            out.append(SampledRoIs(props[keep], labels[keep], matched[keep], is_gt[keep]))
        return out

    def decode(self, deltas: torch.Tensor, boxes: list[torch.Tensor]) -> torch.Tensor:
        """Deltas float[K, R*4] on the concatenated ``boxes`` -> float[K, R, 4] xyxy."""
        r = deltas.shape[1] // 4
        if len(deltas) == 0:
            return deltas.new_zeros((0, r, 4), dtype=torch.float32)
        return self.box_coder.decode(deltas.float(), [b.float() for b in boxes]).reshape(-1, r, 4)

    def box_losses(
        self,
        logits: torch.Tensor,
        deltas: torch.Tensor,
        rois: list[SampledRoIs],
        targets: list[dict],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cross-entropy, box regression)`` of the sampled RoIs, unweighted."""
        labels = torch.cat([r.labels for r in rois])
        loss_cls = F.cross_entropy(logits, labels)
        pos = torch.nonzero(labels > 0).squeeze(1)
        regression_targets = torch.cat(
            self.box_coder.encode(
                [
                    t["boxes"][r.matched].to(r.boxes.dtype) if len(t["boxes"]) else r.boxes
                    for r, t in zip(rois, targets, strict=True)
                ],
                [r.boxes for r in rois],
            )
        )
        deltas = deltas.reshape(len(labels), -1, 4)
        deltas = deltas[pos, 0] if self.box_head.class_agnostic else deltas[pos, labels[pos]]
        # Sum over positives divided by all sampled RoIs, as in Faster R-CNN and mmdet.
        loss_box = F.smooth_l1_loss(
            deltas, regression_targets[pos], beta=self.box_beta, reduction="sum"
        ) / max(len(labels), 1)
        return loss_cls, loss_box

    def refine(
        self,
        rois: list[SampledRoIs],
        logits: torch.Tensor,
        deltas: torch.Tensor,
        image_sizes: list[tuple[int, int]],
    ) -> list[torch.Tensor]:
        """The next stage's proposals: each sampled RoI regressed by this stage (at its
        label, or the predicted class for background RoIs), clipped, detached, with the
        ground-truth boxes removed (the next stage adds them again)."""
        with torch.no_grad():
            labels = torch.cat([r.labels for r in rois])
            pred = logits[:, 1:].argmax(dim=1) + 1
            labels = torch.where(labels > 0, labels, pred)
            boxes = at_class(self.decode(deltas.detach(), [r.boxes for r in rois]), labels)
            out = []
            for r, b, size in zip(
                rois, boxes.split([len(r.boxes) for r in rois]), image_sizes, strict=True
            ):
                out.append(box_ops.clip_boxes_to_image(b[~r.is_gt], size).to(r.boxes.dtype))
            return out


def at_class(boxes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Decoded boxes float[K, R, 4] at labels int64[K] (class + 1): float[K, 4].

    A class-agnostic head (R = 1) has one box whatever the label."""
    if boxes.shape[1] == 1:
        return boxes[:, 0]
    return boxes[torch.arange(len(labels), device=boxes.device), labels]
