"""Mask R-CNN RoI heads: one stage with a two-FC box head and a conv mask head.

Class-specific box regression with target stds (0.1, 0.1, 0.2, 0.2), RoIs sampled at
IoU 0.5, 512 per image with a quarter positive: the original's (mmdet's) settings.
"""

from __future__ import annotations

from cellstack.modeling.heads.base import RoIHeads
from cellstack.modeling.heads.layers import BoxHead, MaskHead
from cellstack.modeling.heads.stage import RoIStage
from cellstack.modeling.poolers import AlignedMultiScaleRoIAlign


class MaskRCNNHeads(RoIHeads):
    """Box and mask heads of Mask R-CNN (a single :class:`RoIStage`).

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
        stage = RoIStage(
            box_head,
            mask_head,
            fg_iou=fg_iou,
            bbox_weights=bbox_weights,
            batch_size_per_image=batch_size_per_image,
            positive_fraction=positive_fraction,
        )
        super().__init__(
            box_pooler=box_pooler, mask_pooler=mask_pooler, stages=[stage], num_classes=num_classes
        )
