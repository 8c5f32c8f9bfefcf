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

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align

from cellstack.modeling.anchors import clip_to_window
from cellstack.modeling.heads.layers import inference_layout
from cellstack.modeling.heads.results import (
    BoxPredictions,
    HeadLosses,
    RoIFeatures,
    SampledRoIs,
    StageLosses,
    Window,
)
from cellstack.modeling.heads.stage import RoIStage, at_class
from cellstack.modeling.poolers import AlignedMultiScaleRoIAlign


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
            targets: per image ``boxes`` float32[N, 4], ``classes`` int64[N], ``masks``
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
                x = inference_layout(self.mask_features(feats, chunk))
                logits = self.mask_logits(x, len(self.stages) - 1)
                lab = image_labels[s : s + MASK_CHUNK]
                idx = torch.arange(len(lab), device=lab.device)
                parts.append(
                    torch.stack([torch.sigmoid(lg[idx, lab].float()) for lg in logits]).mean(0)
                )
            out.append(torch.cat(parts))
        return out


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
