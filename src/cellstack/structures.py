"""`Instances`: the one container that carries detections from model to export.

Borrowed from detectron2's idea: a set of N instances of one image, every field an
array (numpy or torch) or list with leading dimension N. Indexing applies to every
field at once, so ``inst[inst.scores > 0.5]`` keeps boxes, scores, classes and masks in
step.
Instances are immutable: :meth:`Instances.replace` and indexing return new objects.

Field conventions used across cellstack:

- ``boxes``: float32[N, 4], ``x1, y1, x2, y2`` in pixels of the image, continuous
  coordinates (a pixel ``(i, j)`` covers ``[j, j+1) x [i, i+1)``).
- ``scores``: float32[N] in [0, 1].
- ``classes``: int64[N], index into the run's class names (cell types). (``labels``
  elsewhere means a label image: int32[H, W] instance ids, 0 = background.)
- ``roi_masks``: float32[N, M, M] mask probabilities on the box's M x M grid (M = 2 x
  ``model.roi.mask_pool``), kept until the final paste so that ensembles can average
  them.
- ``pixels``: after post-processing, a list of N int64 arrays, each the flat indices
  (``row * W + col``) of one cell's pixels in the image; cells never share a pixel.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np


def _length(value: Any) -> int:
    return len(value)


class Instances:
    """N instances of one image of size ``(height, width)``.

    Args:
        image_size: ``(H, W)`` of the image the instances belong to.
        **fields: arrays, tensors or lists, each with leading dimension N.
    """

    __slots__ = ("_fields", "_image_size")

    def __init__(self, image_size: tuple[int, int], **fields: Any) -> None:
        h, w = (int(v) for v in image_size)
        lengths = {name: _length(value) for name, value in fields.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"Instances fields have different lengths: {lengths}")
        object.__setattr__(self, "_image_size", (h, w))
        object.__setattr__(self, "_fields", dict(fields))

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` of the image."""
        return self._image_size

    @property
    def fields(self) -> dict[str, Any]:
        """A copy of the name -> value mapping."""
        return dict(self._fields)

    def __getattr__(self, name: str) -> Any:
        try:
            return self._fields[name]
        except KeyError:
            raise AttributeError(
                f"Instances has no field {name!r} (fields: {sorted(self._fields)})"
            ) from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Instances is immutable; use .replace(**fields)")

    def has(self, name: str) -> bool:
        return name in self._fields

    def replace(self, **fields: Any) -> Instances:
        """A new Instances with ``fields`` added or replaced (``None`` removes one)."""
        merged = {**self._fields, **fields}
        merged = {k: v for k, v in merged.items() if v is not None}
        return Instances(self._image_size, **merged)

    def __len__(self) -> int:
        for value in self._fields.values():
            return _length(value)
        return 0

    def __getitem__(self, item: Any) -> Instances:
        """Select instances by int, slice, boolean mask or index array."""
        if isinstance(item, (int, np.integer)):
            n = len(self)
            if not -n <= item < n:
                raise IndexError(f"instance index {item} out of range for {n} instances")
            item = slice(item, item + 1 if item != -1 else None)
        out = {}
        for name, value in self._fields.items():
            if isinstance(value, list):
                out[name] = _index_list(value, item)
            else:
                out[name] = value[item]
        return Instances(self._image_size, **out)

    def __iter__(self) -> Iterator[Instances]:
        for i in range(len(self)):
            yield self[i]

    def to(self, device: Any) -> Instances:
        """Move every torch field to ``device`` (numpy fields and lists are kept)."""
        out = {k: v.to(device) if hasattr(v, "to") else v for k, v in self._fields.items()}
        return Instances(self._image_size, **out)

    @staticmethod
    def cat(items: Sequence[Instances]) -> Instances:
        """Concatenate instances of the same image (same size and field names)."""
        if not items:
            raise ValueError("Instances.cat needs at least one Instances")
        size = items[0].image_size
        names = set(items[0]._fields)
        for inst in items[1:]:
            if inst.image_size != size or set(inst._fields) != names:
                raise ValueError("Instances.cat needs the same image size and field names")
        out = {}
        for name in items[0]._fields:
            values = [inst._fields[name] for inst in items]
            first = values[0]
            if isinstance(first, list):
                out[name] = [x for v in values for x in v]
            elif isinstance(first, np.ndarray):
                out[name] = np.concatenate(values, axis=0)
            else:  # torch tensors; imported lazily so numpy-only users never pay for torch
                import torch

                out[name] = torch.cat(values, dim=0)
        return Instances(size, **out)

    def __repr__(self) -> str:
        parts = []
        for name, value in self._fields.items():
            shape = tuple(value.shape) if hasattr(value, "shape") else (len(value),)
            parts.append(f"{name}={shape}")
        return f"Instances(n={len(self)}, image_size={self._image_size}, {', '.join(parts)})"


def _index_list(values: list, item: Any) -> list:
    if isinstance(item, slice):
        return values[item]
    idx = np.asarray(item.cpu() if hasattr(item, "cpu") else item)
    if idx.dtype == bool:
        if len(idx) != len(values):
            raise IndexError(f"boolean index of length {len(idx)} for {len(values)} instances")
        idx = np.flatnonzero(idx)
    return [values[int(i)] for i in idx]
