"""Label images, the codec: read an instance-id image (any dtype, checked), write one
as a TIFF. The folder layouts built on them (Cellpose, StarDist) are
:mod:`~cellstack.data.labelfolders`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cellstack.data.images import read_image
from cellstack.errors import DataError

LABEL_SUFFIXES = (".tif", ".tiff", ".png")


def read_label_image(
    path: str | Path, *, expected_shape: tuple[int, int] | None = None
) -> np.ndarray:
    """Read a label image as int32[H, W] (0 = background); a Cellpose GUI
    ``*_seg.npy`` gives its ``masks`` (:func:`~cellstack.data.segnpy.read_seg_npy`).

    Raises:
        DataError: unreadable, colour, negative or fractional ids, or a size other than
            ``expected_shape``.
    """
    from cellstack.data.segnpy import SEG_SUFFIX, read_seg_npy

    if str(path).endswith(SEG_SUFFIX):
        return read_seg_npy(path, expected_shape=expected_shape)
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
    if label.size and label.max() > np.iinfo(np.int32).max:
        # Ids only name objects: renumber them 1..n rather than let a cast wrap them
        # (a float or 64-bit id past 2^31 would turn negative or merge with another).
        ids, inverse = np.unique(label, return_inverse=True)
        first = 0 if ids[0] == 0 else 1  # background stays 0
        return (inverse.reshape(label.shape) + first).astype(np.int32)
    return label.astype(np.int32)


#: Label image dtypes: int32 (the default: napari opens int32/uint32 images as Labels),
#: uint32, or uint16 for tools that want it (at most 65535 objects).
LABEL_DTYPES = ("int32", "uint32", "uint16")


def write_label_tiff(
    path: str | Path,
    label: np.ndarray,
    *,
    dtype: str = "int32",
    axes: str | None = None,
    where: object = None,
) -> None:
    """Write a label image int[*lead, H, W] as a zlib TIFF of ``dtype``, atomically.

    ``axes`` (e.g. ``"ZYX"``) is stored in the TIFF's metadata so that tifffile,
    napari and cellstack read a stack back with its axes.

    Raises:
        DataError: the ids do not fit ``dtype`` (uint16 with more than 65535 objects).
    """
    import tifffile

    from cellstack.fileio import atomic_path

    label = np.asarray(label)
    if dtype not in LABEL_DTYPES:
        raise ValueError(f"dtype must be one of {LABEL_DTYPES}, got {dtype!r}")
    top = int(label.max(initial=0))
    if top > np.iinfo(dtype).max:
        raise DataError(
            f"{where or path}: {top} objects do not fit {dtype} label ids; use int32 or uint32"
        )
    metadata = {"axes": axes} if axes else None
    with atomic_path(path) as tmp:
        tifffile.imwrite(
            tmp,
            np.ascontiguousarray(label.astype(dtype)),
            compression="zlib",
            photometric="minisblack",  # never RGB, whatever the number of planes
            metadata=metadata,
        )
