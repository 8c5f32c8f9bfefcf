"""Cascade Mask R-CNN heads (Cai & Vasconcelos, 2018), as the original configured them.

Three stages, each a box head (and by default a mask head) trained on the previous
stage's refined, detached boxes at a stricter IoU: 0.5 / 0.6 / 0.7, so later stages
specialise in tighter boxes. Regression is class-agnostic, the delta normalisation
tightens with the stage (target stds 0.1/0.2, 0.05/0.1, 0.033/0.067) because refined
boxes are closer to their targets, and the stage losses are weighted 1 / 0.5 / 0.25.
The box loss is smooth L1 with beta 1 (mmdet's cascade setting).

At test time the class logits are averaged over the stages, the boxes are the last
stage's, and the mask probabilities are averaged over the stages' mask heads, all run
on the final boxes (mmdet's ``CascadeRoIHead.simple_test``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cellstack.modeling.heads.base import RoIHeads
from cellstack.modeling.heads.layers import BoxHead, MaskHead
from cellstack.modeling.heads.stage import RoIStage


@dataclass(frozen=True)
class StageSpec:
    """Training rule of one cascade stage.

    Attributes:
        iou: foreground IoU threshold for sampling.
        loss_weight: multiplies the stage's losses.
        bbox_weights: box-coder weights, the inverse of the regression target stds.
    """

    iou: float
    loss_weight: float
    bbox_weights: tuple[float, float, float, float]


# The original's (mmdet's cascade_mask_rcnn) three stages; 1 / 0.033 = 30.3, 1 / 0.067 = 15.
CASCADE_STAGES = (
    StageSpec(0.5, 1.0, (10.0, 10.0, 5.0, 5.0)),
    StageSpec(0.6, 0.5, (20.0, 20.0, 10.0, 10.0)),
    StageSpec(0.7, 0.25, (1 / 0.033, 1 / 0.033, 1 / 0.067, 1 / 0.067)),
)


def cascade_stages(
    specs: Sequence[StageSpec],
    make_box_head: Callable[[], BoxHead],
    make_mask_head: Callable[[int], MaskHead],
    *,
    stage_masks: bool = True,
    batch_size_per_image: int = 512,
    positive_fraction: float = 0.25,
) -> list[RoIStage]:
    """One :class:`RoIStage` per spec, each with fresh heads.

    Args:
        make_box_head: builds a class-agnostic box head.
        make_mask_head: builds the mask head of stage ``i`` (HTC's differ by stage).
        stage_masks: a mask head on every stage (mmdet's default) or on the last only.
    """
    stages = []
    for i, spec in enumerate(specs):
        box_head = make_box_head()
        if not box_head.class_agnostic:
            raise ValueError("cascade stages regress class-agnostic boxes")
        with_mask = stage_masks or i == len(specs) - 1
        stages.append(
            RoIStage(
                box_head,
                make_mask_head(i) if with_mask else None,
                fg_iou=spec.iou,
                bbox_weights=spec.bbox_weights,
                loss_weight=spec.loss_weight,
                box_beta=1.0,
                batch_size_per_image=batch_size_per_image,
                positive_fraction=positive_fraction,
            )
        )
    return stages


class CascadeHeads(RoIHeads):
    """Cascade Mask R-CNN RoI heads (see the module docstring): :class:`RoIHeads` over
    the stages of :func:`cascade_stages`, not interleaved."""
