"""Mask R-CNN RoI heads: a two-FC box head and a four-conv mask head.

Training samples proposals against the ground truth (torchvision's Matcher and
balanced sampler), regresses class-specific box deltas and predicts 28 x 28 mask logits
for the positives. Mask targets are cut from the ground-truth masks with
``roi_align(aligned=True)``, the same sampling as the features, so targets and features
agree to the pixel (torchvision's ``maskrcnn_loss`` uses ``aligned=False``).

Inference is split in two calls, :meth:`MaskRCNNHeads.predict_boxes` and
:meth:`MaskRCNNHeads.predict_masks`, so that an ensemble can average boxes over models
before asking every model for masks on the same boxes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import _utils as det_utils
from torchvision.ops import boxes as box_ops
from torchvision.ops import roi_align

from cellstack.modeling.poolers import AlignedMultiScaleRoIAlign


class BoxHead(nn.Module):
    """Two shared FC layers, then class logits and box deltas.

    Output of ``forward``: ``(logits float[K, C+1], deltas float[K, (C+1)*4])`` where
    class 0 is background.
    """

    def __init__(self, in_channels: int, pool: int, fc_dim: int, num_classes: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_channels * pool * pool, fc_dim)
        self.fc2 = nn.Linear(fc_dim, fc_dim)
        self.cls_score = nn.Linear(fc_dim, num_classes + 1)
        self.bbox_pred = nn.Linear(fc_dim, (num_classes + 1) * 4)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        for layer in (self.cls_score, self.bbox_pred):
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.relu(self.fc2(F.relu(self.fc1(x.flatten(1)))))
        return self.cls_score(x), self.bbox_pred(x)


class MaskHead(nn.Module):
    """Four 3x3 convs, a 2x deconvolution and per-class 1x1 logits: [K, C, 2S, 2S]."""

    def __init__(self, in_channels: int, num_convs: int, num_classes: int, dim: int = 256):
        super().__init__()
        layers = []
        for i in range(num_convs):
            layers += [nn.Conv2d(in_channels if i == 0 else dim, dim, 3, padding=1), nn.ReLU()]
        self.convs = nn.Sequential(*layers)
        self.upsample = nn.ConvTranspose2d(dim if num_convs else in_channels, dim, 2, stride=2)
        self.logits = nn.Conv2d(dim, num_classes, 1)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(F.relu(self.upsample(self.convs(x))))


@dataclass(frozen=True)
class BoxPredictions:
    """Box-head output for one image's proposals (all float32 on the model's device).

    Attributes:
        proposals: float[K, 4] xyxy the head scored.
        probs: float[K, C+1] softmax class probabilities (0 = background).
        boxes: float[K, C+1, 4] class-specific decoded boxes, clipped to the image.
    """

    proposals: torch.Tensor
    probs: torch.Tensor
    boxes: torch.Tensor


@dataclass(frozen=True)
class SampledRoIs:
    """Proposals sampled for training, for one image.

    Attributes:
        boxes: float[K, 4] proposals. labels: int64[K] class + 1, 0 = background.
        matched: int64[K] index of the matched ground truth (valid where labels > 0).
    """

    boxes: torch.Tensor
    labels: torch.Tensor
    matched: torch.Tensor


class MaskRCNNHeads(nn.Module):
    """Box and mask heads of Mask R-CNN.

    Args:
        box_pooler, mask_pooler: aligned RoIAlign poolers (7 and 14).
        box_head, mask_head: the heads.
        num_classes: foreground classes.
        fg_iou: IoU for a proposal to be foreground in training.
        batch_size_per_image, positive_fraction: RoI sampling.
        bbox_weights: delta normalisation (10, 10, 5, 5) = target stds 0.1, 0.1, 0.2, 0.2.
    """

    def __init__(
        self,
        *,
        box_pooler: AlignedMultiScaleRoIAlign,
        mask_pooler: AlignedMultiScaleRoIAlign,
        box_head: BoxHead,
        mask_head: MaskHead,
        num_classes: int,
        fg_iou: float = 0.5,
        batch_size_per_image: int = 512,
        positive_fraction: float = 0.25,
        bbox_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0),
    ) -> None:
        super().__init__()
        self.box_pooler = box_pooler
        self.mask_pooler = mask_pooler
        self.box_head = box_head
        self.mask_head = mask_head
        self.num_classes = num_classes
        self.matcher = det_utils.Matcher(fg_iou, fg_iou, allow_low_quality_matches=False)
        self.sampler = det_utils.BalancedPositiveNegativeSampler(
            batch_size_per_image, positive_fraction
        )
        self.box_coder = det_utils.BoxCoder(bbox_weights)

    # ------------------------------------------------------------------ training
    def sample(self, proposals: list[torch.Tensor], targets: list[dict]) -> list[SampledRoIs]:
        """Match proposals (plus the ground-truth boxes) to targets and sample them."""
        out = []
        for props, target in zip(proposals, targets, strict=True):
            gt_boxes = target["boxes"]
            props = torch.cat([props, gt_boxes])
            if len(gt_boxes) == 0:
                matched = torch.zeros(len(props), dtype=torch.int64, device=props.device)
                labels = torch.zeros_like(matched)
            else:
                match = self.matcher(box_ops.box_iou(gt_boxes, props))
                matched = match.clamp(min=0)
                labels = target["labels"][matched] + 1
                labels[match < 0] = 0
            pos, neg = self.sampler([labels])
            keep = torch.nonzero(pos[0] | neg[0]).squeeze(1)
            out.append(SampledRoIs(props[keep], labels[keep], matched[keep]))
        return out

    def losses(
        self, features: list[torch.Tensor], proposals: list[torch.Tensor], targets: list[dict]
    ) -> dict[str, torch.Tensor]:
        """``{"cls", "box", "mask"}`` losses for a batch."""
        rois = self.sample(proposals, targets)
        logits, deltas = self.box_head(self.box_pooler(features, [r.boxes for r in rois]))
        labels = torch.cat([r.labels for r in rois])
        loss_cls = F.cross_entropy(logits, labels)
        pos = torch.nonzero(labels > 0).squeeze(1)
        regression_targets = self.box_coder.encode(
            [
                t["boxes"][r.matched] if len(t["boxes"]) else r.boxes
                for r, t in zip(rois, targets, strict=True)
            ],
            [r.boxes for r in rois],
        )
        regression_targets = torch.cat(regression_targets)
        deltas = deltas.reshape(len(labels), -1, 4)[pos, labels[pos]]
        # Sum over positives divided by all sampled RoIs, as in Faster R-CNN.
        loss_box = F.smooth_l1_loss(
            deltas, regression_targets[pos], beta=1 / 9, reduction="sum"
        ) / max(len(labels), 1)
        loss_mask = self.mask_loss(features, rois, targets)
        return {"cls": loss_cls, "box": loss_box, "mask": loss_mask}

    def mask_loss(
        self, features: list[torch.Tensor], rois: list[SampledRoIs], targets: list[dict]
    ) -> torch.Tensor:
        """Binary cross-entropy of the positives' masks at their ground-truth class."""
        pos_boxes, pos_labels, mask_targets = [], [], []
        size = 2 * self.mask_pooler.output_size
        for r, t in zip(rois, targets, strict=True):
            pos = torch.nonzero(r.labels > 0).squeeze(1)
            pos_boxes.append(r.boxes[pos])
            pos_labels.append(r.labels[pos] - 1)
            mask_targets.append(mask_targets_for(t["masks"], r.matched[pos], r.boxes[pos], size))
        labels = torch.cat(pos_labels)
        if len(labels) == 0:  # keep the graph connected so DDP sees every parameter
            return sum(p.sum() for p in self.mask_head.parameters()) * 0.0
        logits = self.mask_head(self.mask_pooler(features, pos_boxes))
        logits = logits[torch.arange(len(labels), device=labels.device), labels]
        return F.binary_cross_entropy_with_logits(logits, torch.cat(mask_targets))

    # ------------------------------------------------------------------ inference
    def predict_boxes(
        self,
        features: list[torch.Tensor],
        proposals: list[torch.Tensor],
        image_sizes: list[tuple[int, int]],
    ) -> list[BoxPredictions]:
        """Score and refine proposals (no thresholding, no NMS)."""
        logits, deltas = self.box_head(self.box_pooler(features, proposals))
        probs = F.softmax(logits.float(), dim=-1)
        counts = [len(p) for p in proposals]
        boxes = self.box_coder.decode(deltas.float(), proposals).reshape(len(logits), -1, 4)
        out = []
        for props, p, b, (h, w) in zip(
            proposals, probs.split(counts), boxes.split(counts), image_sizes, strict=True
        ):
            b = box_ops.clip_boxes_to_image(b.reshape(-1, 4), (h, w)).reshape(b.shape)
            out.append(BoxPredictions(props, p, b))
        return out

    def predict_masks(
        self, features: list[torch.Tensor], boxes: list[torch.Tensor], labels: list[torch.Tensor]
    ) -> list[torch.Tensor]:
        """Mask probabilities float[K, 2S, 2S] for each image's boxes at their label."""
        counts = [len(b) for b in boxes]
        if sum(counts) == 0:
            size = 2 * self.mask_pooler.output_size
            return [features[0].new_zeros((0, size, size)) for _ in boxes]
        logits = self.mask_head(self.mask_pooler(features, boxes))
        lab = torch.cat(labels)
        probs = torch.sigmoid(logits[torch.arange(len(lab), device=lab.device), lab].float())
        return list(probs.split(counts))


def mask_targets_for(
    gt_masks: torch.Tensor, matched: torch.Tensor, boxes: torch.Tensor, size: int
) -> torch.Tensor:
    """Cut ground-truth masks uint8[N, H, W] to the boxes float[K, 4]: float[K, size, size].

    Uses the same aligned sampling as the features; a target pixel is 1 where more than
    half of its sampled area is foreground.
    """
    if len(boxes) == 0:
        return boxes.new_zeros((0, size, size))
    rois = torch.cat([matched[:, None].to(boxes.dtype), boxes], dim=1)
    cut = roi_align(gt_masks[:, None].to(boxes.dtype), rois, size, 1.0, 0, aligned=True)
    return (cut[:, 0] >= 0.5).to(boxes.dtype)


def select_detections(
    pred: BoxPredictions, *, score_thresh: float, nms_iou: float, max_detections: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The original's box post-processing, class-agnostic.

    Score = max foreground probability, label = its class, box = that class's box;
    boxes under ``score_thresh`` or degenerate are dropped, then one NMS across classes
    (one cell, one box, whatever its class) keeps at most ``max_detections``.

    Returns:
        ``(boxes float[N, 4], scores float[N], labels int64[N] 0-based class)``.
    """
    scores, labels = pred.probs[:, 1:].max(dim=1)
    boxes = pred.boxes[torch.arange(len(labels), device=labels.device), labels + 1]
    keep = scores > score_thresh
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    keep = box_ops.remove_small_boxes(boxes, 1e-2)
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    keep = box_ops.nms(boxes, scores, nms_iou)[:max_detections]
    return boxes[keep], scores[keep], labels[keep]
