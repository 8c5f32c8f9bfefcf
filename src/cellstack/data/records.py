"""`ImageRecord`: one annotated image of a dataset, whatever layout it came from."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from cellstack.data import rle


@dataclass(frozen=True)
class ImageRecord:
    """An image and (optionally) its instance annotations.

    Exactly one of ``rles``, ``label_path`` and ``mask_path`` holds the annotations, or
    none for an unannotated image.

    Attributes:
        image_id: unique id (the file stem for folder layouts).
        image_path: the image file.
        height, width: image size in pixels.
        cell_type: the image's cell type (one per image, as in Sartorius), or "cell".
        sample_id: the biological sample, used to group folds.
        rles: one Kaggle RLE string per instance.
        label_path: a label image uint16/uint32[H, W], 0 = background.
        mask_path: a mask file of ``cellstack prepare`` (:mod:`cellstack.data.maskcache`).
        train_mask_path: cleaned masks (hole-filled, corrected) that training uses in
            place of the raw ones; scoring always uses the raw ones.
        split: the dataset's own split (LIVECell: train/val/test), "" when it has none.
    """

    image_id: str
    image_path: Path
    height: int
    width: int
    cell_type: str = "cell"
    sample_id: str = ""
    rles: tuple[str, ...] | None = None
    label_path: Path | None = None
    mask_path: Path | None = None
    train_mask_path: Path | None = None
    split: str = ""

    @property
    def shape(self) -> tuple[int, int]:
        return (self.height, self.width)

    def for_training(self) -> ImageRecord:
        """This record with its cleaned training masks in place of the raw ones, if any."""
        if self.train_mask_path is None:
            return self
        return replace(self, mask_path=self.train_mask_path)

    def sparse_masks(self) -> sp.csr_matrix:
        """Instance masks as a sparse bool[N, H*W] matrix (row-major pixels)."""
        from cellstack.data.masks import sparse_from_labels

        if self.rles is not None:
            where = [f"{self.image_id} instance {i}" for i in range(len(self.rles))]
            return rle.rles_to_sparse(self.rles, self.shape, where=where)
        if self.label_path is not None:
            return sparse_from_labels(self.label_image())
        if self.mask_path is not None:
            from cellstack.data.maskcache import load_masks

            return load_masks(self.mask_path, self.shape)
        raise ValueError(f"image {self.image_id} has no annotations")

    def label_image(self) -> np.ndarray:
        """Instance ids int32[H, W] (0 = background); overlapping RLEs: later wins."""
        if self.rles is not None:
            return rle.rles_to_labels(self.rles, self.shape)
        if self.label_path is not None:
            from cellstack.data.labels import read_label_image

            return read_label_image(self.label_path, expected_shape=self.shape)
        if self.mask_path is not None:
            from cellstack.data.maskcache import load_masks
            from cellstack.data.masks import sparse_to_labels

            return sparse_to_labels(load_masks(self.mask_path, self.shape), self.shape)
        raise ValueError(f"image {self.image_id} has no annotations")
