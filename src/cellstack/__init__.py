"""cellstack: instance segmentation of cells in microscopy images.

Mask R-CNN, Cascade Mask R-CNN and HTC detectors with LIVECell pretraining and a
three-stage (proposals, boxes, masks) ensemble of models and flips, re-implemented
from the 11th-place solution of Kaggle's Sartorius Cell Instance Segmentation.

::

    import cellstack
    seg = cellstack.Segmenter.load("runs/r18")   # a run, a CV folder or an ensemble YAML
    result = seg(image)                          # labels, instances, table

``Segmenter``, ``Result`` and ``matching`` (tp/fp/fn, precision, recall, f1 of two
segmentations) load on first use, so ``import cellstack`` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cellstack.errors import CellstackError
from cellstack.structures import Instances

if TYPE_CHECKING:
    from cellstack.inference.result import Result
    from cellstack.inference.segmenter import Segmenter

__version__ = "0.1.0"
__all__ = ["CellstackError", "Instances", "Result", "Segmenter", "__version__", "matching"]


def __getattr__(name: str):
    if name in ("Segmenter", "Result"):
        from cellstack.inference import segmenter

        return getattr(segmenter, name)
    if name == "matching":
        from cellstack.evaluation.matching import matching

        return matching
    raise AttributeError(f"module 'cellstack' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The module's names, the lazily loaded ones included (tab completion sees them)."""
    return sorted({*globals(), *__all__})
