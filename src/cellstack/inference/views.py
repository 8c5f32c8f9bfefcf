"""The FPN features of an ensemble's views (model x flip) of one image, computed on
demand and kept between the merge stages within a byte budget."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
from torchvision.models.detection.image_list import ImageList

from cellstack.inference.tta import Flip
from cellstack.modeling.detector import CellDetector
from cellstack.modeling.heads.results import RoIFeatures


class ViewCache:
    """The FPN features of one image's views (model index, flip index), computed on
    demand and kept within a byte budget (the ensemble's module docstring, "Memory").

    Args:
        member: model index -> that detector, its weights loaded
            (:meth:`WeightCache.member`).
        flips: the views' flips, by flip index.
        image_list: the (padded) image.
        budget_bytes: RoI features kept at most; dtype: kept as this dtype (None: as
            computed).
        on_view: called with 1 after each view a stage has used (a progress bar's
            ``update``).
    """

    def __init__(
        self,
        member: Callable[[int], CellDetector],
        flips: Sequence[Flip],
        image_list: ImageList,
        budget_bytes: float,
        dtype: torch.dtype | None,
        on_view: Callable[[int], object] | None = None,
    ) -> None:
        self.member = member
        self.on_view = on_view
        self.flips = flips
        self.image_list = image_list
        self.budget = budget_bytes
        self.dtype = dtype
        self.kept: dict[tuple[int, int], RoIFeatures] = {}
        self.kept_bytes = 0
        self.last: tuple[tuple[int, int], RoIFeatures] | None = None

    def raw(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        """Backbone + FPN features of a view (always computed)."""
        model = self.member(key[0])
        flip = self.flips[key[1]]
        self.last = None  # let the previous view go before the next is computed
        flipped = ImageList(flip.maps(self.image_list.tensors), self.image_list.image_sizes)
        return model.features(flipped)

    def offer(self, key: tuple[int, int], raw: dict[str, torch.Tensor]) -> RoIFeatures:
        """The RoI features of freshly computed ``raw`` features, kept if they fit."""
        model = self.member(key[0])
        feats = model.roi_heads.prepare(model.roi_levels(raw))
        size = sum(t.numel() * _itemsize(t, self.dtype) for t in _tensors(feats))
        if self.kept_bytes + size <= self.budget:
            self.kept[key] = _cast(feats, self.dtype)
            self.kept_bytes += size
        self.last = (key, feats)
        return feats

    def roi(self, key: tuple[int, int]) -> RoIFeatures:
        """A view's RoI features: kept, the last computed, or computed again."""
        if key in self.kept:
            return _cast(self.kept[key], torch.float32) if self.dtype else self.kept[key]
        if self.last is not None and self.last[0] == key:
            return self.last[1]
        return self.offer(key, self.raw(key))

    def first_last(self, keys: list[tuple[int, int]]) -> Iterator[tuple[int, int]]:
        """``keys`` with the view in hand first, so it is not computed again; each
        view, once the stage has used it, is counted (``on_view``)."""
        if self.last is not None and self.last[0] in keys:
            keys = [self.last[0], *(k for k in keys if k != self.last[0])]
        for key in keys:
            yield key
            if self.on_view is not None:
                self.on_view(1)


def view_bytes(model: CellDetector, image_size: tuple[int, int]) -> float:
    """float32 bytes of one view's FPN levels for an image of ``image_size``."""
    d = model.size_divisor
    h, w = (-(-n // d) * d for n in image_size)
    channels = model.backbone.out_channels
    return float(sum(4 * channels * -(-h // s) * -(-w // s) for s in model.backbone.strides))


def _tensors(feats: RoIFeatures) -> list[torch.Tensor]:
    return [t for t in (*feats.levels, feats.semantic, feats.semantic_logits) if t is not None]


def _itemsize(t: torch.Tensor, dtype: torch.dtype | None) -> int:
    return (dtype or t.dtype).itemsize


def _cast(feats: RoIFeatures, dtype: torch.dtype | None) -> RoIFeatures:
    if dtype is None:
        return feats

    def cast(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.to(dtype)

    return RoIFeatures(
        [cast(t) for t in feats.levels], cast(feats.semantic), cast(feats.semantic_logits)
    )
