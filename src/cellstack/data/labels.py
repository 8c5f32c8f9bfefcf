"""The label-image layout, as Cellpose and StarDist users keep their data.

``DIR/images/{stem}.png|tif`` with ``DIR/labels/{stem}.tif|png``: a label image of the
same size, uint16 (or uint32) instance ids, 0 = background. An optional
``DIR/cell_types.csv`` with columns ``id,cell_type`` names each image's cell type.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from cellstack.data.images import IMAGE_SUFFIXES, image_size, list_images, read_image, write_tiff
from cellstack.data.records import ImageRecord
from cellstack.errors import DataError

LABEL_SUFFIXES = (".tif", ".tiff", ".png")


def read_label_image(
    path: str | Path, *, expected_shape: tuple[int, int] | None = None
) -> np.ndarray:
    """Read a label image as int32[H, W] (0 = background).

    Raises:
        DataError: unreadable, colour, negative or fractional ids, or a size other than
            ``expected_shape``.
    """
    label = read_image(path)
    if label.ndim != 2:
        raise DataError(f"{path}: a label image must be single-channel, got shape {label.shape}")
    if label.dtype.kind == "f":
        if not np.all(np.mod(label, 1) == 0):
            raise DataError(f"{path}: label image has fractional values")
    if label.min() < 0:
        raise DataError(f"{path}: label image has negative ids")
    if expected_shape is not None and tuple(label.shape) != tuple(expected_shape):
        raise DataError(
            f"{path}: label image is {label.shape[1]}x{label.shape[0]}, the image is "
            f"{expected_shape[1]}x{expected_shape[0]}"
        )
    return label.astype(np.int32)


def find_label(labels_dir: Path, stem: str) -> Path | None:
    """The label file for ``stem`` in ``labels_dir`` (any of :data:`LABEL_SUFFIXES`)."""
    for suffix in LABEL_SUFFIXES:
        candidate = labels_dir / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def read_cell_types(path: Path) -> dict[str, str]:
    """``{id: cell_type}`` from a ``cell_types.csv`` (columns ``id,cell_type``)."""
    from cellstack.fileio import open_text

    with open_text(path) as f:
        reader = csv.DictReader(f)
        if not {"id", "cell_type"} <= set(reader.fieldnames or []):
            raise DataError(f"{path}: needs columns id,cell_type")
        return {row["id"].strip(): row["cell_type"].strip() for row in reader}


def read_label_dir(root: str | Path, *, require_labels: bool = True) -> list[ImageRecord]:
    """Read ``root/images`` + ``root/labels`` into records.

    Raises:
        DataError: no images, or (with ``require_labels``) an image without a label.
    """
    root = Path(root)
    images = list_images(root / "images")
    if not images:
        raise DataError(f"{root / 'images'}: no images ({', '.join(IMAGE_SUFFIXES)})")
    types_csv = root / "cell_types.csv"
    cell_types = read_cell_types(types_csv) if types_csv.is_file() else {}
    records = []
    for image_path in images:
        label_path = find_label(root / "labels", image_path.stem)
        if label_path is None and require_labels:
            raise DataError(f"{image_path}: no label image {root / 'labels' / image_path.stem}.tif")
        h, w = image_size(image_path)
        records.append(
            ImageRecord(
                image_id=image_path.stem,
                image_path=image_path,
                height=h,
                width=w,
                cell_type=cell_types.get(image_path.stem, "cell"),
                sample_id=image_path.stem,
                label_path=label_path,
            )
        )
    return records


def write_label_tiff(path: str | Path, label: np.ndarray) -> None:
    """Write a label image as uint16 TIFF (uint32 beyond 65535 instances), atomically."""
    label = np.asarray(label)
    dtype = np.uint16 if label.max(initial=0) <= np.iinfo(np.uint16).max else np.uint32
    write_tiff(path, label.astype(dtype))
