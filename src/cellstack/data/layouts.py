"""Find which layout a path holds and load it, for the CLI and the trainers.

- Sartorius: a ``train.csv`` (or a folder holding one) with images in ``train/``.
- Label images: a folder with ``images/`` and ``labels/`` (or ``masks/``), or a flat
  Cellpose folder of images beside their ``*_masks`` files.
- COCO / LIVECell: a ``.json`` annotation file, images beside it or in ``images/``.
- Prepared: a folder written by ``cellstack prepare`` (``prepared.json``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import scipy.sparse as sp

from cellstack.data import rle
from cellstack.data.labelfolders import (
    LABEL_DIRS,
    find_label,
    has_mask_files,
    label_folder,
    read_label_dir,
)
from cellstack.data.labels import LABEL_SUFFIXES, read_label_image
from cellstack.data.masks import sparse_from_labels
from cellstack.data.records import ImageRecord
from cellstack.errors import DataError

LAYOUT_HELP = (
    "expected a folder made by cellstack prepare, a Sartorius train.csv (or a folder with "
    "one), a folder with images/ and labels/ (or masks/), a Cellpose folder (images "
    "beside *_masks files), or a COCO .json"
)


def load_dataset(path: str | Path) -> list[ImageRecord]:
    """Load annotated images from any supported layout (see module docstring)."""
    from cellstack.data.livecell import read_coco_instances
    from cellstack.data.prepare import is_prepared, read_prepared
    from cellstack.data.sartorius import read_train_csv

    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: not found")
    if path.is_dir() and is_prepared(path):
        return read_prepared(path)
    if path.is_file() and path.suffix.lower() == ".csv":
        return read_train_csv(path)
    if path.is_file() and path.suffix.lower() == ".json":
        return read_coco_instances(path)
    if path.is_dir() and (path / "train.csv").is_file():
        return read_train_csv(path / "train.csv")
    if path.is_dir() and label_folder(path) is not None:
        return read_label_dir(path)
    raise DataError(f"{path}: unknown layout; {LAYOUT_HELP}")


def load_predictions(path: str | Path, truths: Sequence[ImageRecord]) -> dict[str, sp.csr_matrix]:
    """Load predicted masks for the images of ``truths``.

    Args:
        path: a ``submission.csv``, or a folder of label images (``{id}.tif|png``,
            directly or in a ``labels/`` subfolder).
        truths: gives each image's size; predictions for other ids are kept only if
            their size can be known (label images).

    Returns:
        ``{image_id: sparse bool[M, H*W]}``.
    """
    from cellstack.data.sartorius import read_submission

    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: not found")
    shapes = {r.image_id: r.shape for r in truths}
    if path.is_file() and path.suffix.lower() == ".csv":
        out = {}
        for image_id, rles in read_submission(path).items():
            if image_id not in shapes:
                out[image_id] = sp.csr_matrix((0, 0), dtype=bool)
                continue
            where = [f"{path} (id {image_id}, prediction {i})" for i in range(len(rles))]
            out[image_id] = rle.rles_to_sparse(rles, shapes[image_id], where=where)
        return out
    if path.is_dir():
        folder = next((path / d for d in LABEL_DIRS if (path / d).is_dir()), path)
        masks_only = has_mask_files(folder)  # Cellpose writes them beside the images
        out = {}
        for image_id, shape in shapes.items():
            label_path = find_label(folder, image_id, masks_only=masks_only)
            if label_path is not None:
                out[image_id] = sparse_from_labels(
                    read_label_image(label_path, expected_shape=shape)
                )
        if not out:
            raise DataError(
                f"{folder}: no label image named after any truth id ({', '.join(LABEL_SUFFIXES)})"
            )
        return out
    raise DataError(f"{path}: predictions must be a submission .csv or a folder of label images")
