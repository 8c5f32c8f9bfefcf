"""Multi-scale RoIAlign with ``aligned=True``.

torchvision's ``MultiScaleRoIAlign`` calls ``roi_align(..., aligned=False)``, which
samples half a pixel off: a box and its mirror image then see features that are not
mirrors of each other, which cost the original solution accuracy under flip TTA. We
always align, and map RoIs to levels as mmdet does (the original's setting): a RoI of
scale ``sqrt(w * h)`` goes to level ``floor(log2(scale / finest_scale))`` clamped to the
available levels, so RoIs under ``2 * finest_scale`` px use the finest map.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import roi_align


class AlignedMultiScaleRoIAlign(nn.Module):
    """Pool RoI features from the FPN levels.

    Args:
        strides: stride of each pooled level, finest first (e.g. (2, 4, 8, 16)).
        output_size: side of the pooled square.
        finest_scale: see the module docstring (mmdet default 56).
        sampling_ratio: samples per bin side (0 = adaptive, mmdet's default).
    """

    def __init__(
        self,
        strides: tuple[int, ...],
        output_size: int,
        *,
        finest_scale: float = 56.0,
        sampling_ratio: int = 0,
    ) -> None:
        super().__init__()
        self.strides = tuple(strides)
        self.output_size = output_size
        self.finest_scale = finest_scale
        self.sampling_ratio = sampling_ratio

    def map_levels(self, boxes: torch.Tensor) -> torch.Tensor:
        """int64[K] level index of each box float32[K, 4] xyxy."""
        wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=1e-6)
        scale = torch.sqrt(wh[:, 0] * wh[:, 1])
        level = torch.floor(torch.log2(scale / self.finest_scale + 1e-6))
        return level.clamp(0, len(self.strides) - 1).to(torch.int64)

    def forward(self, features: list[torch.Tensor], boxes: list[torch.Tensor]) -> torch.Tensor:
        """Pool features for every box.

        Args:
            features: one float[B, C, H_l, W_l] map per level, finest first.
            boxes: per image, float[K_i, 4] xyxy in input-image pixels.

        Returns:
            float[sum K_i, C, S, S], boxes in image order.
        """
        rois = torch.cat(
            [torch.cat([b.new_full((len(b), 1), i), b], dim=1) for i, b in enumerate(boxes)]
        )
        first = features[0]
        out = first.new_zeros((len(rois), first.shape[1], self.output_size, self.output_size))
        if len(rois) == 0:
            return out
        levels = self.map_levels(rois[:, 1:])
        for level, (feat, stride) in enumerate(zip(features, self.strides, strict=False)):
            idx = torch.nonzero(levels == level).squeeze(1)
            if len(idx) == 0:
                continue
            pooled = roi_align(
                feat,
                rois[idx],
                self.output_size,
                spatial_scale=1.0 / stride,
                sampling_ratio=self.sampling_ratio,
                aligned=True,
            )
            out[idx] = pooled.to(out.dtype)
        return out
