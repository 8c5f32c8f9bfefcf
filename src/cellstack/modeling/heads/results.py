"""What the RoI heads pass around: pooled-feature caches, box predictions, sampled
RoIs and losses (plain result types, no computation)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

Window = tuple[float, float, float, float]


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
