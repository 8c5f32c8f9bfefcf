"""`ImageRecord`: one annotated image of a dataset, whatever layout it came from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from cellstack.data import rle


@dataclass(frozen=True)
class ImageRecord:
    """An image and (optionally) its instance annotations.

    Exactly one of ``rles`` and ``label_path`` holds the annotations, or neither for
    an unannotated image.

    Attributes:
        image_id: unique id (the file stem for folder layouts).
        image_path: the image file.
        height, width: image size in pixels.
        cell_type: the image's cell type (one per image, as in Sartorius), or "cell".
        sample_id: the biological sample, used to group folds.
        rles: one Kaggle RLE string per instance.
        label_path: a label image uint16/uint32[H, W], 0 = background.
    """

    image_id: str
    image_path: Path
    height: int
    width: int
    cell_type: str = "cell"
    sample_id: str = ""
    rles: tuple[str, ...] | None = None
    label_path: Path | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return (self.height, self.width)

    @property
    def has_annotations(self) -> bool:
        return self.rles is not None or self.label_path is not None

    def sparse_masks(self) -> sp.csr_matrix:
        """Instance masks as a sparse bool[N, H*W] matrix (row-major pixels)."""
        from cellstack.evaluation.matching import sparse_from_labels

        if self.rles is not None:
            where = [f"{self.image_id} instance {i}" for i in range(len(self.rles))]
            return rle.rles_to_sparse(self.rles, self.shape, where=where)
        if self.label_path is not None:
            return sparse_from_labels(self.label_image())
        raise ValueError(f"image {self.image_id} has no annotations")

    def label_image(self) -> np.ndarray:
        """Instance ids int32[H, W] (0 = background); overlapping RLEs: later wins."""
        if self.rles is not None:
            return rle.rles_to_labels(self.rles, self.shape)
        if self.label_path is not None:
            from cellstack.data.labels import read_label_image

            return read_label_image(self.label_path, expected_shape=self.shape)
        raise ValueError(f"image {self.image_id} has no annotations")
