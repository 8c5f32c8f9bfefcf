"""Cellpose GUI files: ``{stem}_seg.npy``, read without running any code.

Cellpose's GUI saves a corrected segmentation as ``{image stem}_seg.npy``: ``np.save``
of a Python dict (``masks``: the instance ids, ``outlines``, ``filename``, ...), that
is, a pickle inside a ``.npy`` file. Loading it with ``allow_pickle=True`` would run
whatever the pickle asks for, so a ``_seg.npy`` from someone else could run code on
the reader's machine. :func:`read_seg_npy` parses the ``.npy`` header itself and
unpickles with :class:`_ArraysOnly`, which admits numpy arrays, dtypes and plain
containers (dict, list, tuple, str, numbers) and refuses anything else in one line.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from numpy.lib import format as npy_format

from cellstack.errors import DataError

#: What Cellpose appends to an image's stem for its GUI file.
SEG_SUFFIX = "_seg.npy"

#: The only callables a ``_seg.npy`` pickle may name: how numpy rebuilds an array, a
#: dtype and a scalar (module paths of numpy 1 and 2).
_ALLOWED = {
    (module, name)
    for module in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name in ("_reconstruct", "scalar")
} | {("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict")}


class _ArraysOnly(pickle.Unpickler):
    """An unpickler that resolves only :data:`_ALLOWED` globals."""

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name}")


def read_seg_npy(path: str | Path, *, expected_shape: tuple[int, int] | None = None) -> np.ndarray:
    """The ``masks`` of a Cellpose ``_seg.npy`` as int32[H, W] (0 = background).

    Raises:
        DataError: not a ``.npy`` file, a pickle that asks for anything but numpy
            arrays and plain containers (named, never run), no 2-D integer ``masks``,
            or a size other than ``expected_shape``.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            version = npy_format.read_magic(f)
            header = (
                npy_format.read_array_header_1_0
                if version == (1, 0)
                else npy_format.read_array_header_2_0
            )
            _, _, dtype = header(f)
            if dtype.hasobject:
                data = _ArraysOnly(f).load()  # the pickle follows the header
            else:  # a bare label array saved as .npy
                f.seek(0)
                data = {"masks": np.load(f, allow_pickle=False)}
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except pickle.UnpicklingError as exc:
        raise DataError(
            f"{path}: refused: the file asks to run {exc} (a _seg.npy holds numpy arrays "
            "and plain values only; cellstack never runs code from a file)"
        ) from None
    except (ValueError, EOFError, TypeError, AttributeError, IndexError) as exc:
        raise DataError(f"{path}: not a Cellpose _seg.npy file ({exc})") from None
    if isinstance(data, np.ndarray) and data.dtype.hasobject and data.shape == ():
        data = data.item()  # np.save of a dict stores a 0-d object array
    masks = data.get("masks") if isinstance(data, dict) else None
    if not isinstance(masks, np.ndarray) or masks.ndim != 2 or masks.dtype.kind not in "iub":
        raise DataError(f"{path}: no 2-D integer 'masks' in this _seg.npy")
    if expected_shape is not None and tuple(masks.shape) != tuple(expected_shape):
        raise DataError(
            f"{path}: masks are {masks.shape[1]}x{masks.shape[0]}, the image is "
            f"{expected_shape[1]}x{expected_shape[0]}"
        )
    if masks.size and int(masks.max()) > np.iinfo(np.int32).max:
        raise DataError(f"{path}: mask ids beyond int32")
    return masks.astype(np.int32)


def write_seg_npy(path: str | Path, labels: np.ndarray, image_name: str) -> None:
    """Write ``labels`` int[H, W] (ids 1..n, 0 = background) as a Cellpose GUI file
    that Cellpose opens beside the image ``image_name`` (in the same folder): the
    ``masks``, their ``outlines`` (each cell's boundary pixels carry its id, as Cellpose
    writes them), ``ismanual`` all False (predicted, not drawn) and the image's name.
    Written atomically; read back by :func:`read_seg_npy`.
    """
    from cellstack.data.masks import outline_pixels
    from cellstack.fileio import atomic_write

    masks = np.asarray(labels).astype(np.int32)
    data = {
        "masks": masks,
        "outlines": np.where(outline_pixels(masks), masks, 0).astype(np.int32),
        "ismanual": np.zeros(int(masks.max(initial=0)), dtype=bool),
        "filename": image_name,
        "chan_choose": [0, 0],
    }
    with atomic_write(path, "wb") as f:
        np.save(f, data, allow_pickle=True)  # our own dict: Cellpose's GUI reads a pickle
