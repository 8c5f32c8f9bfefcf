"""Staged RoI heads: the machinery shared by Mask R-CNN, Cascade Mask R-CNN and HTC.

A head set is a list of :class:`RoIStage` modules (Mask R-CNN: one stage; Cascade and
HTC: three) run by :class:`RoIHeads`:

* training: stage ``i`` samples RoIs against the ground truth at its own IoU threshold,
  regresses them, and (if it has a mask head) predicts masks of its positives; its
  refined, detached RoIs (minus the ground-truth boxes added as proposals) are the next
  stage's proposals. Losses come back as a :class:`HeadLosses`, already multiplied by
  each stage's weight.
* inference is two calls, :meth:`RoIHeads.predict_boxes` (proposals -> class
  probabilities and boxes, scores averaged over the stages) and
  :meth:`RoIHeads.predict_masks` (boxes -> mask probabilities, averaged over the stages
  that have a mask head), so that an ensemble can merge boxes across models before
  asking every model for masks on the same boxes.

Mask targets are cut from the ground-truth masks with ``roi_align(aligned=True)``, the
same sampling as the features, so targets and features agree to the pixel (torchvision's
``maskrcnn_loss`` uses ``aligned=False``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import _utils as det_utils
from torchvision.ops import boxes as box_ops
from torchvision.ops import roi_align

from cellstack.modeling.anchors import clip_to_window
from cellstack.modeling.poolers import AlignedMultiScaleRoIAlign

Window = tuple[float, float, float, float]


class BoxHead(nn.Module):
    """Two shared FC layers, then class logits and box deltas.

    Output of ``forward``: ``(logits float[K, C+1], deltas float[K, R*4])`` where class 0
    is background and ``R`` is ``C+1`` (class-specific regression) or 1 (class-agnostic).
    """

    def __init__(
        self,
        in_channels: int,
        pool: int,
        fc_dim: int,
        num_classes: int,
        *,
        class_agnostic: bool = False,
    ) -> None:
        super().__init__()
        self.class_agnostic = class_agnostic
        self.fc1 = nn.Linear(in_channels * pool * pool, fc_dim)
        self.fc2 = nn.Linear(fc_dim, fc_dim)
        self.cls_score = nn.Linear(fc_dim, num_classes + 1)
        self.bbox_pred = nn.Linear(fc_dim, 4 if class_agnostic else (num_classes + 1) * 4)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        for layer in (self.cls_score, self.bbox_pred):
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.relu(self.fc2(F.relu(self.fc1(x.flatten(1)))))
        return self.cls_score(x), self.bbox_pred(x)


class MaskHead(nn.Module):
    """3x3 convs, a 2x deconvolution and per-class 1x1 logits: [K, C, 2S, 2S].

    ``forward(x, previous=None)`` returns ``(logits, feature)`` where ``feature`` is the
    output of the convolutions (before upsampling). Mask R-CNN and Cascade ignore it and
    never pass ``previous``; HTC's information flow (:class:`~cellstack.modeling.heads.
    htc.FlowMaskHead`) feeds it to the next stage.
    """

    def __init__(
        self,
        in_channels: int,
        num_convs: int,
        num_classes: int,
        dim: int = 256,
        *,
        group_norm: bool = False,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(num_convs):
            layers.append(nn.Conv2d(in_channels if i == 0 else dim, dim, 3, padding=1))
            if group_norm:  # per-RoI statistics: no dependence on the batch
                layers.append(nn.GroupNorm(math.gcd(32, dim), dim))
            layers.append(nn.ReLU())
        self.convs = nn.Sequential(*layers)
        self.feature_channels = dim if num_convs else in_channels
        self.upsample = nn.ConvTranspose2d(self.feature_channels, dim, 2, stride=2)
        self.logits = nn.Conv2d(dim, num_classes, 1)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(
        self, x: torch.Tensor, previous: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if previous is not None:
            raise ValueError("this mask head takes no previous-stage features")
        feature = self.convs(x)
        return self.logits(F.relu(self.upsample(feature))), feature


@dataclass(frozen=True)
class RoIFeatures:
    """What the RoI heads pool from, for a batch of images.

    Attributes:
        levels: FPN maps float[B, C, H_l, W_l], finest first (poolers use the first
            ``len(strides)``).
        semantic: HTC only: the semantic branch's embedding float[B, C, H_s, W_s] at
            ``semantic_stride``, fused into every RoI feature.
        semantic_logits: HTC only: foreground logits float[B, 1, H_s, W_s].
    """

    levels: list[torch.Tensor]
    semantic: torch.Tensor | None = None
    semantic_logits: torch.Tensor | None = None

    def image(self, b: int) -> RoIFeatures:
        """The features of image ``b`` of the batch, as a batch of one."""

        def cut(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[b : b + 1]

        return RoIFeatures(
            [f[b : b + 1] for f in self.levels], cut(self.semantic), cut(self.semantic_logits)
        )


@dataclass(frozen=True)
class BoxPredictions:
    """Box-head output for one image's proposals (all float32 on the model's device).

    Attributes:
        proposals: float[K, 4] xyxy the head scored.
        probs: float[K, C+1] softmax class probabilities (0 = background).
        boxes: float[K, C+1, 4] class-specific decoded boxes, clipped to the image (the
            same box repeated over classes for class-agnostic heads).
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
        is_gt: bool[K] the RoI is a ground-truth box added to the proposals.
    """

    boxes: torch.Tensor
    labels: torch.Tensor
    matched: torch.Tensor
    is_gt: torch.Tensor


@dataclass(frozen=True)
class StageLosses:
    """One stage's losses (scalars), already multiplied by the stage's weight.

    ``mask`` is None for a stage without a mask head.
    """

    cls: torch.Tensor
    box: torch.Tensor
    mask: torch.Tensor | None


@dataclass(frozen=True)
class HeadLosses:
    """All RoI-head losses of a batch: one entry per stage, and HTC's semantic loss."""

    stages: list[StageLosses]
    semantic: torch.Tensor | None = None

    def named(self) -> dict[str, torch.Tensor]:
        """Flat names for logging and loss weighting: ``cls, box, mask`` for one stage,
        ``s0.cls, s0.box, ..., s2.mask`` for several, plus ``semantic``. The part after
        the last dot is the loss kind the trainer's loss decay keys on."""
        out = {}
        for i, s in enumerate(self.stages):
            prefix = f"s{i}." if len(self.stages) > 1 else ""
            out[prefix + "cls"] = s.cls
            out[prefix + "box"] = s.box
            if s.mask is not None:
                out[prefix + "mask"] = s.mask
        if self.semantic is not None:
            out["semantic"] = self.semantic
        return out


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
                labels = target["labels"][matched] + 1
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


class RoIHeads(nn.Module):
    """Box and mask heads over one or more stages (see the module docstring).

    Args:
        box_pooler, mask_pooler: aligned RoIAlign poolers (7 and 14).
        stages: the stages in order; at least one has a mask head.
        num_classes: foreground classes.
        interleaved: HTC's interleaved execution: a stage's mask branch trains on RoIs
            re-sampled from its own refined boxes instead of the boxes it scored.
    """

    def __init__(
        self,
        *,
        box_pooler: AlignedMultiScaleRoIAlign,
        mask_pooler: AlignedMultiScaleRoIAlign,
        stages: Sequence[RoIStage],
        num_classes: int,
        interleaved: bool = False,
    ) -> None:
        super().__init__()
        if not stages:
            raise ValueError("RoIHeads needs at least one stage")
        if all(s.mask_head is None for s in stages):
            raise ValueError("at least one stage needs a mask head")
        self.box_pooler = box_pooler
        self.mask_pooler = mask_pooler
        self.stages = nn.ModuleList(stages)
        self.num_classes = num_classes
        self.interleaved = interleaved

    @property
    def mask_size(self) -> int:
        return 2 * self.mask_pooler.output_size

    # ------------------------------------------------------------ hooks (HTC overrides)
    def prepare(self, levels: list[torch.Tensor]) -> RoIFeatures:
        """Features the heads pool from; computed once per batch and reused by every
        call (and every ensemble stage)."""
        return RoIFeatures(levels)

    def box_features(self, feats: RoIFeatures, boxes: list[torch.Tensor]) -> torch.Tensor:
        return self.box_pooler(feats.levels, boxes)

    def mask_features(self, feats: RoIFeatures, boxes: list[torch.Tensor]) -> torch.Tensor:
        return self.mask_pooler(feats.levels, boxes)

    def mask_logits(self, x: torch.Tensor, upto: int) -> list[torch.Tensor]:
        """Mask logits float[K, C, 2S, 2S] of the stages ``0..upto`` that have a mask
        head, from pooled mask features ``x``. Plain cascade stages are independent."""
        return [s.mask_head(x)[0] for s in self.stages[: upto + 1] if s.mask_head is not None]

    def extra_losses(self, feats: RoIFeatures, targets: list[dict]) -> torch.Tensor | None:
        return None

    # ------------------------------------------------------------------ training
    def losses(
        self,
        feats: RoIFeatures,
        proposals: list[torch.Tensor],
        targets: list[dict],
        image_sizes: list[tuple[int, int]],
    ) -> HeadLosses:
        """Losses of every stage for a batch.

        Args:
            feats: from :meth:`prepare`.
            proposals: per image float[P_i, 4] xyxy, detached.
            targets: per image ``boxes`` float32[N, 4], ``labels`` int64[N], ``masks``
                uint8[N, H, W].
            image_sizes: per image (height, width) before padding.
        """
        stage_losses = []
        for i, stage in enumerate(self.stages):
            rois = stage.sample(proposals, targets)
            logits, deltas = stage.box_head(self.box_features(feats, [r.boxes for r in rois]))
            loss_cls, loss_box = stage.box_losses(logits, deltas, rois, targets)
            last = i == len(self.stages) - 1
            if self.interleaved or not last:
                proposals = stage.refine(rois, logits, deltas, image_sizes)
            mask_rois = stage.sample(proposals, targets) if self.interleaved else rois
            loss_mask = None
            if stage.mask_head is not None:
                loss_mask = self.mask_loss(feats, mask_rois, targets, i) * stage.loss_weight
            stage_losses.append(
                StageLosses(loss_cls * stage.loss_weight, loss_box * stage.loss_weight, loss_mask)
            )
        return HeadLosses(stage_losses, self.extra_losses(feats, targets))

    def mask_loss(
        self, feats: RoIFeatures, rois: list[SampledRoIs], targets: list[dict], stage: int
    ) -> torch.Tensor:
        """Binary cross-entropy of the positives' masks at their ground-truth class."""
        pos_boxes, pos_labels, mask_targets = [], [], []
        for r, t in zip(rois, targets, strict=True):
            pos = torch.nonzero(r.labels > 0).squeeze(1)
            pos_boxes.append(r.boxes[pos])
            pos_labels.append(r.labels[pos] - 1)
            mask_targets.append(
                mask_targets_for(t["masks"], r.matched[pos], r.boxes[pos], self.mask_size)
            )
        labels = torch.cat(pos_labels)
        if len(labels) == 0:  # keep the graph connected so DDP sees every parameter
            return sum(p.sum() for p in self.stages[stage].mask_head.parameters()) * 0.0
        logits = self.mask_logits(self.mask_features(feats, pos_boxes), stage)[-1]
        logits = logits[torch.arange(len(labels), device=labels.device), labels]
        return F.binary_cross_entropy_with_logits(logits, torch.cat(mask_targets))

    # ------------------------------------------------------------------ inference
    def predict_boxes(
        self,
        feats: RoIFeatures,
        proposals: list[torch.Tensor],
        windows: list[Window],
    ) -> list[BoxPredictions]:
        """Score and refine proposals through every stage (no thresholding, no NMS).

        As mmdet's cascade: each stage regresses the previous stage's boxes (at the
        predicted class), the class logits are averaged over the stages before the
        softmax, and the boxes are the last stage's. Boxes are clipped to each image's
        window (x0, y0, x1, y1): ``(0, 0, w, h)``, or its mirror image in a flipped view.
        """
        counts = [len(p) for p in proposals]
        boxes = proposals
        logit_sum = None
        for i, stage in enumerate(self.stages):
            logits, deltas = stage.box_head(self.box_features(feats, boxes))
            logits = logits.float()
            logit_sum = logits if logit_sum is None else logit_sum + logits
            decoded = stage.decode(deltas, boxes)
            if i < len(self.stages) - 1:
                refined = at_class(decoded, logits[:, 1:].argmax(dim=1) + 1)
                boxes = [
                    clip_to_window(b, win)
                    for b, win in zip(refined.split(counts), windows, strict=True)
                ]
        probs = F.softmax(logit_sum / len(self.stages), dim=-1)
        if decoded.shape[1] == 1:
            decoded = decoded.expand(-1, self.num_classes + 1, -1)
        out = []
        for props, p, b, win in zip(
            proposals, probs.split(counts), decoded.split(counts), windows, strict=True
        ):
            out.append(BoxPredictions(props, p, clip_to_window(b, win)))
        return out

    def predict_masks(
        self, feats: RoIFeatures, boxes: list[torch.Tensor], labels: list[torch.Tensor]
    ) -> list[torch.Tensor]:
        """Mask probabilities float[K, 2S, 2S] for each image's boxes at their label
        (0-based class), averaged over the stages' mask heads.

        RoIs go through the mask heads :data:`MASK_CHUNK` at a time: every RoI's mask is
        computed on its own, and a thousand RoIs' upsampled feature maps at once would
        take gigabytes."""
        out = []
        for i, (image_boxes, image_labels) in enumerate(zip(boxes, labels, strict=True)):
            parts = [feats.levels[0].new_zeros((0, self.mask_size, self.mask_size))]
            for s in range(0, len(image_boxes), MASK_CHUNK):
                chunk = [
                    image_boxes[s : s + MASK_CHUNK] if j == i else b[:0]
                    for j, b in enumerate(boxes)
                ]
                logits = self.mask_logits(self.mask_features(feats, chunk), len(self.stages) - 1)
                lab = image_labels[s : s + MASK_CHUNK]
                idx = torch.arange(len(lab), device=lab.device)
                parts.append(
                    torch.stack([torch.sigmoid(lg[idx, lab].float()) for lg in logits]).mean(0)
                )
            out.append(torch.cat(parts))
        return out


def at_class(boxes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Decoded boxes float[K, R, 4] at labels int64[K] (class + 1): float[K, 4].

    A class-agnostic head (R = 1) has one box whatever the label."""
    if boxes.shape[1] == 1:
        return boxes[:, 0]
    return boxes[torch.arange(len(labels), device=boxes.device), labels]


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


#: RoIs per pass through the mask heads at test time (bounds their activations).
MASK_CHUNK = 128


@dataclass(frozen=True)
class BoxParams:
    """Test-time box selection (the original's ``rcnn`` settings).

    Attributes:
        score_thresh: minimum foreground probability.
        nms_iou: class-agnostic box NMS threshold (high: cells touch).
        max_detections: boxes kept per image.
        score_mode: "class": a box's score is its best class probability (the
            original); "objectness": 1 - P(background), the probability that it is a
            cell of any type, so a cell whose type the classifier cannot decide is not
            scored down (with C types its best class can be as low as 1/C).
    """

    score_thresh: float = 0.05
    nms_iou: float = 0.7
    max_detections: int = 1000
    score_mode: str = "class"


def select_detections(
    pred: BoxPredictions, params: BoxParams
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The original's box post-processing, class-agnostic.

    Score = max foreground probability (or 1 - background probability, see
    :class:`BoxParams`), label = the most probable class, box = that class's box;
    boxes under ``score_thresh`` or degenerate are dropped, then one NMS across classes
    (one cell, one box, whatever its class) keeps at most ``max_detections``.

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
    keep = box_ops.nms(boxes, scores, params.nms_iou)[: params.max_detections]
    return boxes[keep], scores[keep], labels[keep]
