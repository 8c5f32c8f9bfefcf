"""Compact instance-mask files: one ``.npz`` of row-major runs per image.

``cellstack prepare`` decodes annotations (Kaggle RLE strings, COCO polygons) once and
stores every instance of an image as runs of its flat, row-major pixel indices:

- ``starts`` int32[R], ``lengths`` int32[R]: all runs, instance after instance, each
  instance's runs ascending;
- ``runs_per_mask`` int32[N]: how many runs each instance has (an instance may have 0);
- ``shape`` int64[2]: ``(H, W)`` of the image.

A 704x520 image with a few hundred cells takes tens of kilobytes, and loading it is a
handful of vectorised numpy operations (no string parsing, no polygon rasterising).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from cellstack.data.masks import sparse_to_runs
from cellstack.data.rle import runs_to_indices
from cellstack.errors import DataError
from cellstack.fileio import atomic_write


def save_masks(path: str | Path, masks: sp.csr_matrix, shape: tuple[int, int]) -> None:
    """Write instance masks bool[N, H*W] (sparse, row-major pixels) atomically."""
    if masks.shape[1] != shape[0] * shape[1]:
        raise ValueError(f"masks have {masks.shape[1]} pixels, shape {shape} has another count")
    starts, lengths, runs_per_mask = sparse_to_runs(masks)
    with atomic_write(path, "wb") as f:
        np.savez_compressed(
            f,
            starts=starts.astype(np.int32),
            lengths=lengths.astype(np.int32),
            runs_per_mask=runs_per_mask.astype(np.int32),
            shape=np.asarray(shape, dtype=np.int64),
        )


def load_masks(path: str | Path, shape: tuple[int, int]) -> sp.csr_matrix:
    """Read a mask file as sparse bool[N, H*W] (CSR, sorted indices).

    Raises:
        DataError: the file is missing, unreadable, or for another image size.
    """
    path = Path(path)
    try:
        with np.load(path) as z:
            starts = z["starts"].astype(np.int64)
            lengths = z["lengths"].astype(np.int64)
            runs_per_mask = z["runs_per_mask"].astype(np.int64)
            stored = tuple(int(v) for v in z["shape"])
    except FileNotFoundError:
        raise DataError(f"{path}: mask file not found (run cellstack prepare again)") from None
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a cellstack mask file ({exc})") from None
    if stored != tuple(shape):
        raise DataError(f"{path}: masks are for a {stored[1]}x{stored[0]} image, not {shape}")
    if runs_per_mask.sum() != len(starts) or len(starts) != len(lengths):
        raise DataError(f"{path}: corrupt mask file (run counts disagree)")
    cols = runs_to_indices(starts, lengths)
    run_bounds = np.concatenate(([0], np.cumsum(runs_per_mask)))
    pixels_per_run = np.concatenate(([0], np.cumsum(lengths)))
    indptr = pixels_per_run[run_bounds]
    n_pixels = shape[0] * shape[1]
    if len(cols) and (cols.min() < 0 or cols.max() >= n_pixels):
        raise DataError(f"{path}: corrupt mask file (pixel outside the image)")
    data = np.ones(len(cols), dtype=bool)
    return sp.csr_matrix((data, cols, indptr), shape=(len(runs_per_mask), n_pixels))
