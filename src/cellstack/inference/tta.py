"""Flip test-time augmentation as exact, invertible transforms.

A view flips the *padded* batch (padding to a multiple of the largest stride comes
first), so every FPN level of a flipped view is the flipped level of the original grid:
cell ``i`` of a flipped map is cell ``G - 1 - i`` of the original. With anchors centred
on their cells (:class:`~cellstack.modeling.anchors.CentredAnchorGenerator`) the same
holds for anchors, so RPN outputs un-flip anchor by anchor (negating dx for a
horizontal flip, dy for a vertical one). Boxes flip as ``x -> W - x`` in the padded
frame and RoI masks flip on the box's own grid, which is exact with aligned RoIAlign.

Every flip is its own inverse: ``forward`` and ``back`` are the same map.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cellstack.errors import CellstackError
from cellstack.modeling.anchors import RPNOutputs


@dataclass(frozen=True)
class Flip:
    """A flip of the padded batch of size ``(H, W)``.

    Attributes:
        horizontal: mirror left-right (x -> W - x).
        vertical: mirror top-bottom (y -> H - y).
    """

    horizontal: bool = False
    vertical: bool = False

    @property
    def name(self) -> str:
        return {(False, False): "none", (True, False): "h", (False, True): "v"}.get(
            (self.horizontal, self.vertical), "hv"
        )

    @property
    def identity(self) -> bool:
        return not (self.horizontal or self.vertical)

    def _dims(self, ndim: int) -> list[int]:
        return ([ndim - 1] if self.horizontal else []) + ([ndim - 2] if self.vertical else [])

    def maps(self, x: torch.Tensor) -> torch.Tensor:
        """Images or feature maps float[..., H, W] (also RoI masks [..., M, M])."""
        dims = self._dims(x.ndim)
        return x.flip(dims) if dims else x

    def rpn(self, outputs: RPNOutputs) -> RPNOutputs:
        """Maps flipped, and each anchor's dx (horizontal) and dy (vertical) negated."""
        deltas = []
        for d in outputs.deltas:
            d = self.maps(d)
            sign = torch.ones(4, dtype=d.dtype, device=d.device)
            sign[0] = -1.0 if self.horizontal else 1.0
            sign[1] = -1.0 if self.vertical else 1.0
            b, c, h, w = d.shape
            deltas.append((d.reshape(b, c // 4, 4, h, w) * sign[:, None, None]).reshape(d.shape))
        return RPNOutputs([self.maps(o) for o in outputs.objectness], deltas)

    def boxes(self, boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """float[..., 4] xyxy boxes in a padded frame of ``size = (H, W)``."""
        if self.identity:
            return boxes
        h, w = size
        x0, y0, x1, y1 = boxes.unbind(-1)
        if self.horizontal:
            x0, x1 = w - x1, w - x0
        if self.vertical:
            y0, y1 = h - y1, h - y0
        return torch.stack([x0, y0, x1, y1], dim=-1)

    def window(
        self, window: tuple[float, float, float, float], size: tuple[int, int]
    ) -> tuple[float, float, float, float]:
        """An image's pixel window (x0, y0, x1, y1) as seen in this view."""
        return tuple(self.boxes(torch.tensor(window, dtype=torch.float64), size).tolist())


FLIPS = {f.name: f for f in (Flip(), Flip(True), Flip(False, True), Flip(True, True))}


def parse_flips(names: list[str] | tuple[str, ...]) -> tuple[Flip, ...]:
    """``["none", "h", "v", "hv"]`` -> flips; unknown names are a clear error."""
    bad = [n for n in names if n not in FLIPS]
    if bad or not names:
        raise CellstackError(
            f"unknown flip {bad[0] if bad else '(none given)'}; use some of {', '.join(FLIPS)}"
        )
    return tuple(FLIPS[n] for n in names)
