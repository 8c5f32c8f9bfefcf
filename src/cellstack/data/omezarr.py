"""Images larger than memory, read lazily, and OME-Zarr label images written by chunk.

Inputs (:func:`open_lazy`): a zarr array, an OME-Zarr image (NGFF 0.4 ``.zattrs`` or
0.5 ``zarr.json``; its multiscale's level 0, axes from its metadata) or a TIFF (read
through tifffile's zarr store, tile by tile). Only a window is ever read: a
:class:`LazyImage` is a path and a recipe, cheap to send to a Dask worker, which opens
the store itself.

Output (:func:`create_labels`): an NGFF 0.4 label image, the layout napari-ome-zarr,
Fiji (MoBIE, BigDataViewer) and QuPath read::

    labels.ome.zarr/            .zattrs {"labels": ["cells"]}
        cells/                  .zattrs {"multiscales": [...], "image-label": {...}}
            0/                  int32[H, W] instance ids, 0 = background, chunked

Needs the ``zarr`` package (``pip install 'cellstack[ome]'``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cellstack.errors import CellstackError, DataError

#: NGFF version written (0.4: zarr v2 files, the most widely read today).
NGFF_VERSION = "0.4"
#: The label image's name inside the output group.
LABEL_NAME = "cells"
#: Suffixes read as zarr (a folder) rather than as an image file.
ZARR_SUFFIXES = (".zarr",)
TIFF_SUFFIXES = (".tif", ".tiff")


def zarr_module():
    """The ``zarr`` package, or a one-line error saying how to install it."""
    try:
        import zarr
    except ImportError:
        raise CellstackError(
            "OME-Zarr and large images need the zarr package: pip install 'cellstack[ome]'"
        ) from None
    return zarr


def is_zarr(path: str | Path) -> bool:
    """``path`` names a zarr store (a ``*.zarr`` folder)."""
    return Path(path).suffix.lower() in ZARR_SUFFIXES


@dataclass(frozen=True)
class LazyImage:
    """A 2-D image on disk, read a window at a time.

    Attributes:
        path: the zarr folder or TIFF file.
        array_path: inside a zarr group, the level-0 array (``""``: the store is the
            array; for a TIFF, unused).
        index: how the stored axes become (Y, X): an int picks a position on a
            singleton axis, ``slice(None)`` keeps Y and X.
        shape: (H, W) after ``index``.
        dtype: the stored dtype.
    """

    path: Path
    array_path: str
    index: tuple[Any, ...]
    shape: tuple[int, int]
    dtype: np.dtype

    def _array(self):
        zarr = zarr_module()
        if self.path.suffix.lower() in TIFF_SUFFIXES:
            import tifffile

            return zarr.open(tifffile.imread(self.path, aszarr=True), mode="r")
        node = zarr.open(str(self.path), mode="r")
        return node[self.array_path] if self.array_path else node

    def read(self, ys: slice, xs: slice) -> np.ndarray:
        """The pixels ``[ys, xs]`` (half-open, in the image's Y/X), as stored.

        Raises:
            DataError: the store cannot give them (a damaged or missing chunk file).
        """
        index = list(self.index)
        axes = [k for k, i in enumerate(index) if i == slice(None)]
        index[axes[0]], index[axes[1]] = ys, xs
        return self._get(self._array(), tuple(index), ys, xs)

    def _get(self, array, index: tuple, ys: slice, xs: slice) -> np.ndarray:
        try:
            return np.asarray(array[index])
        except Exception as exc:  # codecs and stores raise many unrelated types
            detail = str(exc).splitlines()[0] if str(exc) else ""
            raise DataError(
                f"{self.path}: cannot read rows {ys.start}:{ys.stop}, cols {xs.start}:{xs.stop} "
                f"({type(exc).__name__}: {detail})"
            ) from None

    def sample(self, max_pixels: int = 2**22) -> np.ndarray:
        """A strided sample of the whole image of at most about ``max_pixels`` pixels:
        enough for intensity percentiles, never the whole image in memory."""
        h, w = self.shape
        step = max(1, int(np.ceil(np.sqrt(h * w / max_pixels))))
        array = self._array()
        index = list(self.index)
        axes = [k for k, i in enumerate(index) if i == slice(None)]
        index[axes[0]], index[axes[1]] = slice(None, None, step), slice(None, None, step)
        return self._get(array, tuple(index), slice(0, h, step), slice(0, w, step))


def _ngff_attrs(node) -> dict:
    """The NGFF metadata of a zarr group: 0.5 keeps it under ``ome``, 0.4 at the top."""
    attrs = dict(node.attrs)
    return dict(attrs.get("ome", attrs))


def _plane_index(shape: tuple[int, ...], axes: str, where: str) -> tuple[tuple, tuple[int, int]]:
    """The index that makes ``shape`` with ``axes`` (letters, Y and X among them) one
    2-D plane: singleton axes dropped; any other axis is an error."""
    axes = axes.upper()
    if len(axes) != len(shape) or "Y" not in axes or "X" not in axes:
        raise DataError(f"{where}: axes {axes!r} of shape {shape} hold no Y and X plane")
    index: list[Any] = []
    for axis, n in zip(axes, shape, strict=True):
        if axis in "YX":
            index.append(slice(None))
        elif n == 1:
            index.append(0)
        else:
            raise DataError(
                f"{where}: axis {axis} has {n} positions; large images are segmented as one "
                "2-D plane (write the plane you want as its own zarr array)"
            )
    return tuple(index), (int(shape[axes.index("Y")]), int(shape[axes.index("X")]))


def open_lazy(path: str | Path) -> LazyImage:
    """A :class:`LazyImage` of a zarr array, an OME-Zarr image or a TIFF.

    Raises:
        DataError: not found, not readable as zarr/TIFF, no multiscales in a group, or
            not one 2-D plane (every axis but Y and X must have length 1).
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: not found")
    if path.suffix.lower() in TIFF_SUFFIXES:
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                shape, axes, dtype = tuple(series.shape), series.axes, series.dtype
        except Exception as exc:  # tifffile raises many types on corrupt files
            raise DataError(f"{path}: cannot read TIFF ({type(exc).__name__}: {exc})") from None
        axes = axes.replace("S", "C") if "S" in axes and shape[axes.index("S")] == 1 else axes
        index, size = _plane_index(shape, axes, str(path))
        return LazyImage(path, "", index, size, np.dtype(dtype))
    zarr = zarr_module()
    try:
        node = zarr.open(str(path), mode="r")
    except Exception as exc:  # zarr raises several types for what is not a store
        raise DataError(f"{path}: cannot open as zarr ({type(exc).__name__}: {exc})") from None
    if hasattr(node, "shape"):  # a bare array: 2-D, or singleton axes around one plane
        letters = "YX" if node.ndim == 2 else "Q" * (node.ndim - 2) + "YX"
        index, size = _plane_index(tuple(node.shape), letters, str(path))
        return LazyImage(path, "", index, size, np.dtype(node.dtype))
    meta = _ngff_attrs(node)
    multiscales = meta.get("multiscales")
    if not multiscales:
        raise DataError(f"{path}: a zarr group without OME-Zarr multiscales metadata")
    ms = multiscales[0]
    level0 = ms["datasets"][0]["path"]
    axes = "".join(a["name"] if isinstance(a, dict) else a for a in ms.get("axes", "yx"))
    array = node[level0]
    index, size = _plane_index(tuple(array.shape), axes, f"{path}/{level0}")
    return LazyImage(path, level0, index, size, np.dtype(array.dtype))


def create_labels(
    out: str | Path, shape: tuple[int, int], chunks: int, *, dtype: str = "int32"
) -> Any:
    """Create the NGFF label image at ``out`` (see the module docstring), chunked
    ``chunks`` x ``chunks`` and filled with 0, and return its level-0 zarr array.

    Chunks are what workers write: each writes whole chunks, so no two write the same
    file.
    """
    zarr = zarr_module()
    root = zarr.open_group(str(out), mode="w", zarr_format=2)
    root.attrs["labels"] = [LABEL_NAME]
    group = root.create_group(LABEL_NAME)
    group.attrs["multiscales"] = [
        {
            "version": NGFF_VERSION,
            "name": LABEL_NAME,
            "axes": [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}],
            "datasets": [
                {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1, 1]}]}
            ],
        }
    ]
    group.attrs["image-label"] = {"version": NGFF_VERSION}
    return group.create_array(
        "0", shape=tuple(shape), chunks=(chunks, chunks), dtype=dtype, fill_value=0
    )


def open_labels(out: str | Path, mode: str = "r+") -> Any:
    """The level-0 array of a label image made by :func:`create_labels`."""
    zarr = zarr_module()
    return zarr.open_group(str(out), mode=mode)[f"{LABEL_NAME}/0"]


def write_label_zarr(out: str | Path, labels: np.ndarray, chunks: int = 1024) -> None:
    """One 2-D label image (int32[H, W]) as an NGFF label image at ``out``."""
    if labels.ndim != 2:
        raise DataError(f"{out}: OME-Zarr labels are written for 2-D images, got {labels.shape}")
    array = create_labels(out, labels.shape, min(chunks, max(labels.shape)))
    array[...] = labels.astype(np.int32)
