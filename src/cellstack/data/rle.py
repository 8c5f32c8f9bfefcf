"""Kaggle run-length encoding of binary masks, vectorised with numpy.

Format (Sartorius, and most Kaggle segmentation competitions): a string of
space-separated ``start length`` pairs; ``start`` is 1-indexed and pixels are numbered
row-major (left to right, then top to bottom) over an image of ``height x width``.
Runs must be sorted, must not overlap and must lie inside the image.

Every function works on whole arrays of runs: there is no Python loop per run, only
(where a list of masks is involved) one per mask.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from cellstack.errors import DataError


def parse_runs(
    rle: str, shape: tuple[int, int], *, where: str = "RLE"
) -> tuple[np.ndarray, np.ndarray]:
    """Parse and validate an RLE string.

    Args:
        rle: ``"start length start length ..."``; an empty string is an empty mask.
        shape: ``(H, W)`` of the image.
        where: names the source in error messages, e.g. ``"train.csv row 12 (id abc)"``.

    Returns:
        ``(starts, lengths)``: int64[R] 0-indexed flat starts and int64[R] run lengths.

    Raises:
        DataError: non-numeric tokens, an odd count, non-positive starts or lengths,
            unsorted or overlapping runs, or a run past the end of the image.
    """
    tokens = rle.split()
    if not tokens:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    try:
        values = np.array(tokens, dtype=np.int64)
    except (ValueError, OverflowError):
        bad = next((t for t in tokens if not t.lstrip("-").isdigit()), None)
        if bad is None:
            big = max(tokens, key=len)
            raise DataError(f"{where}: RLE value {big[:30]!r} is too large") from None
        raise DataError(f"{where}: non-numeric RLE token {bad[:30]!r}") from None
    if len(values) % 2:
        raise DataError(f"{where}: RLE has an odd number of values ({len(values)})")
    n_pixels = int(shape[0]) * int(shape[1])
    if values.max() >= 2**62:  # before any sum: start + length could wrap around int64
        raise DataError(
            f"{where}: RLE value {int(values.max())} is past the {shape[1]}x{shape[0]} image "
            f"({n_pixels} pixels)"
        )
    starts = values[0::2] - 1
    lengths = values[1::2]
    if starts.min() < 0:
        raise DataError(f"{where}: RLE starts are 1-indexed; found start {starts.min() + 1}")
    if lengths.min() <= 0:
        raise DataError(f"{where}: RLE run length must be positive; found {lengths.min()}")
    ends = starts + lengths
    if len(starts) > 1 and np.any(starts[1:] < ends[:-1]):
        raise DataError(f"{where}: RLE runs are unsorted or overlap")
    if ends[-1] > n_pixels:
        raise DataError(
            f"{where}: RLE run ends at pixel {int(ends[-1])}, past the {shape[1]}x{shape[0]} "
            f"image ({n_pixels} pixels)"
        )
    return starts, lengths


def runs_to_indices(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Flat pixel indices covered by runs: int64[sum(lengths)], ascending."""
    if len(starts) == 0:
        return np.zeros(0, dtype=np.int64)
    run_offset = np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.repeat(starts, lengths) + (np.arange(int(lengths.sum())) - run_offset)


def decode(rle: str, shape: tuple[int, int], *, where: str = "RLE") -> np.ndarray:
    """Decode an RLE string into bool[H, W]."""
    starts, lengths = parse_runs(rle, shape, where=where)
    n = int(shape[0]) * int(shape[1])
    # Mark +1 at each run start and -1 at each run end; the running sum is the mask.
    edges = np.zeros(n + 1, dtype=np.int32)
    np.add.at(edges, starts, 1)
    np.add.at(edges, starts + lengths, -1)
    return (np.cumsum(edges[:-1]) > 0).reshape(shape)


def _runs_of_flat(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    padded = np.concatenate(([False], flat, [False]))
    changes = np.flatnonzero(padded[1:] != padded[:-1])
    return changes[0::2], changes[1::2] - changes[0::2]


def _format_runs(starts: np.ndarray, lengths: np.ndarray) -> str:
    pairs = np.empty(2 * len(starts), dtype=np.int64)
    pairs[0::2] = starts + 1
    pairs[1::2] = lengths
    return " ".join(pairs.astype(str).tolist())


def encode(mask: np.ndarray) -> str:
    """Encode a binary mask bool[H, W] (any dtype; nonzero is foreground)."""
    if mask.ndim != 2:
        raise ValueError(f"encode expects a 2-D mask, got shape {mask.shape}")
    starts, lengths = _runs_of_flat(np.asarray(mask).ravel() != 0)
    return _format_runs(starts, lengths)


def encode_pixels(pixels: np.ndarray) -> str:
    """Encode a mask given as ascending flat row-major pixel indices int[K]."""
    pixels = np.asarray(pixels, dtype=np.int64)
    if len(pixels) == 0:
        return ""
    breaks = np.flatnonzero(np.diff(pixels) != 1) + 1
    starts = pixels[np.concatenate(([0], breaks))]
    ends = pixels[np.concatenate((breaks - 1, [len(pixels) - 1]))]
    return _format_runs(starts, ends - starts + 1)


def grouped_runs(group: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Runs of flat pixel indices ``idx`` sorted by ``(group, idx)`` (e.g. instance, pixel).

    A run breaks where the group changes or the next pixel is not adjacent.

    Returns:
        ``(first, starts, lengths)``: each run's position in ``idx``, its first pixel and
        its length (int64[R] each).
    """
    new_run = np.ones(len(idx), dtype=bool)
    new_run[1:] = (group[1:] != group[:-1]) | (idx[1:] != idx[:-1] + 1)
    first = np.flatnonzero(new_run)
    return first, idx[first], np.diff(np.append(first, len(idx)))


def encode_labels(label: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Encode every instance of a label image at once.

    Args:
        label: int[H, W] instance ids, 0 = background.

    Returns:
        ``(ids, rles)``: the instance ids present (int64[N], ascending) and their RLEs.
    """
    flat = np.asarray(label).ravel()
    idx = np.flatnonzero(flat)
    if len(idx) == 0:
        return np.zeros(0, dtype=np.int64), []
    ids_of_pixel = flat[idx].astype(np.int64)
    order = np.argsort(ids_of_pixel, kind="stable")  # stable: pixels stay row-major per id
    idx, ids_of_pixel = idx[order], ids_of_pixel[order]
    run_first, run_starts, run_lengths = grouped_runs(ids_of_pixel, idx)
    run_ids = ids_of_pixel[run_first]
    ids, first_run = np.unique(run_ids, return_index=True)
    bounds = np.append(first_run, len(run_ids))
    rles = [_format_runs(run_starts[a:b], run_lengths[a:b]) for a, b in itertools.pairwise(bounds)]
    return ids, rles


def rles_to_sparse(
    rles: Sequence[str], shape: tuple[int, int], *, where: Sequence[str] | None = None
) -> sp.csr_matrix:
    """Stack N RLE masks as a sparse bool[N, H*W] matrix (CSR, sorted indices).

    ``where[i]`` names mask i's source in error messages.
    """
    indices = []
    for i, rle in enumerate(rles):
        starts, lengths = parse_runs(rle, shape, where=where[i] if where else f"mask {i}")
        indices.append(runs_to_indices(starts, lengths))
    counts = np.array([len(x) for x in indices], dtype=np.int64)
    indptr = np.concatenate(([0], np.cumsum(counts)))
    cols = np.concatenate(indices) if indices else np.zeros(0, dtype=np.int64)
    data = np.ones(len(cols), dtype=bool)
    n_pixels = int(shape[0]) * int(shape[1])
    return sp.csr_matrix((data, cols, indptr), shape=(len(rles), n_pixels))


def rles_to_labels(rles: Sequence[str], shape: tuple[int, int]) -> np.ndarray:
    """Paint RLE masks into a label image int32[H, W] with ids 1..N.

    Where masks overlap, the later mask wins, as when painting in order.
    """
    label = np.zeros(int(shape[0]) * int(shape[1]), dtype=np.int32)
    for i, rle in enumerate(rles, start=1):
        starts, lengths = parse_runs(rle, shape, where=f"mask {i - 1}")
        label[runs_to_indices(starts, lengths)] = i
    return label.reshape(shape)
