"""The instance-mask representations and the conversions between them, in one place.

- **label image** ``int[H, W]``: 0 = background, each instance one id (any ids, not
  necessarily consecutive); what users, napari and Cellpose keep;
- **sparse matrix** ``bool[N, H*W]`` (CSR): one row per instance, row-major pixels; what
  the metric, matching and tuning compute on;
- **runs** ``(starts, lengths, runs_per_mask)``: runs of row-major pixel indices per
  instance; what the mask cache stores (the RLE *string* codec is :mod:`rle`);
- **pixel lists** ``list[int64[K]]``: the flat pixel indices of each mask, ascending;
  what post-processing builds masks as.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from cellstack.data.rle import grouped_runs


def sparse_from_labels(label: np.ndarray) -> sp.csr_matrix:
    """Label image int[H, W] (0 = background) -> sparse bool[N, H*W].

    Rows follow ascending instance id; ids need not be consecutive.
    """
    flat = np.asarray(label).ravel()
    idx = np.flatnonzero(flat)
    ids, rows = np.unique(flat[idx], return_inverse=True)
    return sp.csr_matrix(
        (np.ones(len(idx), dtype=bool), (rows.ravel(), idx)), shape=(len(ids), flat.size)
    )


def sparse_from_dense(masks: np.ndarray) -> sp.csr_matrix:
    """bool[N, H, W] -> sparse bool[N, H*W]."""
    masks = np.asarray(masks)
    return sp.csr_matrix(masks.reshape(masks.shape[0], -1).astype(bool))


def sparse_to_runs(masks: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(starts, lengths, runs_per_mask)`` of the rows of a bool[N, H*W] CSR matrix."""
    masks = masks.tocsr()
    masks.sort_indices()
    idx = masks.indices.astype(np.int64)
    row = np.repeat(np.arange(masks.shape[0]), np.diff(masks.indptr))
    first, starts, lengths = grouped_runs(row, idx)
    runs_per_mask = np.bincount(row[first], minlength=masks.shape[0])
    return starts, lengths, runs_per_mask


def sparse_to_labels(masks: sp.csr_matrix, shape: tuple[int, int]) -> np.ndarray:
    """Paint masks into int32[H, W] with ids 1..N; where masks overlap the later one wins."""
    label = np.zeros(shape[0] * shape[1], dtype=np.int32)
    row = np.repeat(np.arange(1, masks.shape[0] + 1, dtype=np.int32), np.diff(masks.indptr))
    np.maximum.at(label, masks.indices, row)  # the highest id wins, as painting in order
    return label.reshape(shape)


def pixels_to_sparse(pixels: list[np.ndarray], image_size: tuple[int, int]) -> sp.csr_matrix:
    """Pixel-index lists -> sparse bool[N, H*W] (the metric's form)."""
    counts = np.array([len(p) for p in pixels], dtype=np.int64)
    indptr = np.concatenate(([0], np.cumsum(counts)))
    cols = np.concatenate(pixels) if pixels else np.zeros(0, dtype=np.int64)
    n = image_size[0] * image_size[1]
    return sp.csr_matrix((np.ones(len(cols), bool), cols, indptr), shape=(len(pixels), n))


def pixels_to_labels(pixels: list[np.ndarray], image_size: tuple[int, int]) -> np.ndarray:
    """Paint pixel-index lists into a label image int32[H, W] with ids 1..N."""
    label = np.zeros(image_size[0] * image_size[1], dtype=np.int32)
    for i, p in enumerate(pixels, start=1):
        label[p] = i
    return label.reshape(image_size)


def outline_pixels(labels: np.ndarray) -> np.ndarray:
    """bool[H, W]: the pixels of cells (``labels`` int[H, W], 0 = background) with a
    4-neighbour of another id, each cell's inner boundary (what overlays draw and
    Cellpose's ``outlines`` hold)."""
    edge = np.zeros(labels.shape, dtype=bool)
    edge[:-1] |= labels[:-1] != labels[1:]
    edge[1:] |= labels[1:] != labels[:-1]
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    return edge & (labels > 0)
