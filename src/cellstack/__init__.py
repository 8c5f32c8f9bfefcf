"""cellstack: instance segmentation of cells in microscopy images.

Mask R-CNN, Cascade Mask R-CNN and HTC detectors with LIVECell pretraining and a
three-stage (proposals, boxes, masks) ensemble of models and flips, re-implemented
from the 11th-place solution of Kaggle's Sartorius Cell Instance Segmentation.
"""

from cellstack.errors import CellstackError
from cellstack.structures import Instances

__version__ = "0.1.0"
__all__ = ["CellstackError", "Instances", "__version__"]
