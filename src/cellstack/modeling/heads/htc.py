"""Hybrid Task Cascade heads (Chen et al., 2019), as the original configured them.

HTC is the cascade of :mod:`~cellstack.modeling.heads.cascade` with three additions:

* **interleaved execution**: in training, stage ``i``'s mask branch learns on RoIs
  re-sampled from the boxes stage ``i`` has just refined, as it sees them at test time;
* **mask information flow**: stage ``i``'s mask head adds (through a 1x1 conv) the
  conv features of stage ``i - 1``'s mask head, run on the same RoIs;
* **a semantic branch** (:class:`SemanticHead`): every FPN level is fused at one level
  (stride 4 with the original's stem), convolved, and gives both foreground logits and
  an embedding that is RoI-pooled and added to every box and mask RoI feature. Its
  target is the union of the instance masks (cell vs background), so it needs no extra
  labels; padding is ignored. Its loss (weight 0.2) is part of the total: the original's
  loss decay dropped it by accident, we keep it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cellstack.modeling.heads.base import RoIHeads
from cellstack.modeling.heads.layers import MaskHead
from cellstack.modeling.heads.results import RoIFeatures
from cellstack.modeling.heads.stage import RoIStage
from cellstack.modeling.poolers import AlignedMultiScaleRoIAlign


class SemanticHead(nn.Module):
    """mmdet's FusedSemanticHead with one foreground logit.

    Each level gets a 1x1 conv (+ReLU); the others are bilinearly resized to the fusion
    level and summed; ``num_convs`` 3x3 convs follow, then a 1x1 logit and a 1x1
    embedding (+ReLU) with the FPN's channel count.

    Args:
        channels: FPN channels (input and embedding).
        num_levels: levels passed in (all FPN levels).
        fusion_level: index of the level whose resolution the branch runs at.
        num_convs: 3x3 convs after fusion.
    """

    def __init__(
        self, channels: int, num_levels: int, fusion_level: int = 1, num_convs: int = 4
    ) -> None:
        super().__init__()
        if not 0 <= fusion_level < num_levels:
            raise ValueError(f"fusion_level {fusion_level} is not one of {num_levels} levels")
        self.num_levels = num_levels
        self.fusion_level = fusion_level
        self.lateral = nn.ModuleList(nn.Conv2d(channels, channels, 1) for _ in range(num_levels))
        self.convs = nn.ModuleList(
            nn.Conv2d(channels, channels, 3, padding=1) for _ in range(num_convs)
        )
        self.logits = nn.Conv2d(channels, 1, 1)
        self.embedding = nn.Conv2d(channels, channels, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, levels: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``levels`` float[B, C, H_l, W_l] finest first -> ``(logits float[B, 1, H_f,
        W_f], embedding float[B, C, H_f, W_f])`` at the fusion level's size."""
        if len(levels) != self.num_levels:
            raise ValueError(f"semantic head expects {self.num_levels} levels, got {len(levels)}")
        x = F.relu(self.lateral[self.fusion_level](levels[self.fusion_level]))
        size = x.shape[-2:]
        for i, feat in enumerate(levels):
            if i != self.fusion_level:
                feat = F.interpolate(feat, size=size, mode="bilinear", align_corners=True)
                x = x + F.relu(self.lateral[i](feat))
        for conv in self.convs:
            x = F.relu(conv(x))
        return self.logits(x), F.relu(self.embedding(x))


class FlowMaskHead(MaskHead):
    """Mask head that adds the previous stage's mask features (HTC's information flow).

    Args:
        in_channels, num_convs, num_classes, dim: as :class:`MaskHead`.
        with_previous: this stage receives a previous stage's features (all but the
            first), of ``previous_channels`` channels, through a 1x1 conv + ReLU.
    """

    def __init__(
        self,
        in_channels: int,
        num_convs: int,
        num_classes: int,
        dim: int = 256,
        *,
        with_previous: bool,
        previous_channels: int | None = None,
        group_norm: bool = False,
    ) -> None:
        super().__init__(in_channels, num_convs, num_classes, dim, group_norm=group_norm)
        self.residual = None
        if with_previous:
            self.residual = nn.Conv2d(previous_channels or self.feature_channels, in_channels, 1)
            nn.init.kaiming_normal_(self.residual.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(self.residual.bias)

    def forward(
        self, x: torch.Tensor, previous: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.residual is not None:
            if previous is None:
                raise ValueError("this HTC mask head needs the previous stage's features")
            x = x + F.relu(self.residual(previous))
        feature = self.convs(x)
        return self.logits(F.relu(self.upsample(feature))), feature


class HTCHeads(RoIHeads):
    """Hybrid Task Cascade RoI heads (see the module docstring).

    Args:
        box_pooler, mask_pooler: aligned RoIAlign poolers (7 and 14).
        stages: cascade stages (``cascade_stages``) whose mask heads are
            :class:`FlowMaskHead`, one per stage.
        num_classes: foreground classes.
        semantic_head: the semantic branch.
        semantic_stride: stride of its fusion level.
        semantic_weight: weight of its loss (the original's 0.2).
    """

    def __init__(
        self,
        *,
        box_pooler: AlignedMultiScaleRoIAlign,
        mask_pooler: AlignedMultiScaleRoIAlign,
        stages: Sequence[RoIStage],
        num_classes: int,
        semantic_head: SemanticHead,
        semantic_stride: int,
        semantic_weight: float = 0.2,
    ) -> None:
        if not all(isinstance(s.mask_head, FlowMaskHead) for s in stages):
            raise ValueError("every HTC stage needs a FlowMaskHead")
        super().__init__(
            box_pooler=box_pooler,
            mask_pooler=mask_pooler,
            stages=stages,
            num_classes=num_classes,
            interleaved=True,
        )
        self.semantic_head = semantic_head
        self.semantic_stride = semantic_stride
        self.semantic_weight = semantic_weight
        self.semantic_box_pooler = AlignedMultiScaleRoIAlign(
            (semantic_stride,), box_pooler.output_size
        )
        self.semantic_mask_pooler = AlignedMultiScaleRoIAlign(
            (semantic_stride,), mask_pooler.output_size
        )

    def prepare(self, levels: list[torch.Tensor]) -> RoIFeatures:
        logits, embedding = self.semantic_head(levels)
        return RoIFeatures(levels, semantic=embedding, semantic_logits=logits)

    def box_features(self, feats: RoIFeatures, boxes: list[torch.Tensor]) -> torch.Tensor:
        return self.box_pooler(feats.levels, boxes) + self.semantic_box_pooler(
            [feats.semantic], boxes
        )

    def mask_features(self, feats: RoIFeatures, boxes: list[torch.Tensor]) -> torch.Tensor:
        return self.mask_pooler(feats.levels, boxes) + self.semantic_mask_pooler(
            [feats.semantic], boxes
        )

    def mask_logits(self, x: torch.Tensor, upto: int) -> list[torch.Tensor]:
        """Run the mask heads in a chain, each fed the previous one's features."""
        out, previous = [], None
        for stage in self.stages[: upto + 1]:
            logits, previous = stage.mask_head(x, previous)
            out.append(logits)
        return out

    def extra_losses(self, feats: RoIFeatures, targets: list[dict]) -> torch.Tensor:
        """Weighted binary cross-entropy of the semantic logits against the union of the
        instance masks, sampled at the centre of each output cell; padding is ignored."""
        logits = feats.semantic_logits[:, 0]
        target, valid = semantic_targets(targets, tuple(logits.shape[-2:]), self.semantic_stride)
        loss = F.binary_cross_entropy_with_logits(logits.float(), target, reduction="none")
        return loss[valid].mean() * self.semantic_weight


def semantic_targets(
    targets: list[dict], size: tuple[int, int], stride: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Foreground targets of the semantic branch.

    Args:
        targets: per image ``masks`` uint8[N, H_i, W_i] at the image's own size.
        size: (H_s, W_s) of the branch's output (padded batch size / stride).
        stride: the output's stride.

    Returns:
        ``(target float32[B, H_s, W_s], valid bool[B, H_s, W_s])``: 1 where a cell covers
        the cell-centre pixel; ``valid`` is False over the padding.
    """
    masks = targets[0]["masks"]
    target = torch.zeros((len(targets), *size), dtype=torch.float32, device=masks.device)
    valid = torch.zeros((len(targets), *size), dtype=torch.bool, device=masks.device)
    ys = torch.arange(size[0], device=masks.device) * stride + stride // 2
    xs = torch.arange(size[1], device=masks.device) * stride + stride // 2
    for b, t in enumerate(targets):
        h, w = t["masks"].shape[-2:]
        ny, nx = int((ys < h).sum()), int((xs < w).sum())
        union = t["masks"].amax(dim=0) if len(t["masks"]) else t["masks"].new_zeros((h, w))
        target[b, :ny, :nx] = union[ys[:ny, None], xs[None, :nx]].float()
        valid[b, :ny, :nx] = True
    return target, valid
