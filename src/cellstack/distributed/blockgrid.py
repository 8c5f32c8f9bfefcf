"""Block geometry and the block algorithm, without Dask: the windows of an image
(:func:`block_grid`), the cells a window owns (:func:`segment_window`), which of them
stay where neighbours own a version of the same cell (:func:`kept_cells`), how owned
cells compose into one label image (:func:`compose`), and the whole algorithm in one
process (:func:`segment_in_memory`), the reference the Dask job
(:mod:`cellstack.distributed.blocks`) must reproduce.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cellstack.data.images import intensity_limits
from cellstack.data.omezarr import LazyImage, open_lazy
from cellstack.errors import CellstackError
from cellstack.inference.predictor import tile_core, tile_starts
from cellstack.inference.result import TABLE_COLUMNS
from cellstack.inference.segmenter import Segmenter

#: The smallest block and overlap accepted (a window must hold cells and context).
MIN_BLOCK, MIN_OVERLAP = 64, 16


@dataclass(frozen=True)
class Block:
    """One window of the image.

    Attributes:
        index: position in C order over the grid (rows of windows, then columns).
        y, x: the window's top-left pixel; h, w: its size (px).
        core_y, core_x: half-open ranges of box centres this window owns (px, global).
    """

    index: int
    y: int
    x: int
    h: int
    w: int
    core_y: tuple[float, float]
    core_x: tuple[float, float]

    @property
    def name(self) -> str:
        return (
            f"block {self.index} (rows {self.y}:{self.y + self.h}, cols {self.x}:{self.x + self.w})"
        )


def block_grid(shape: tuple[int, int], block: int, overlap: int) -> list[Block]:
    """The windows covering an image of ``shape`` (H, W).

    Raises:
        CellstackError: ``block`` < 64, ``overlap`` < 16 or ``overlap`` >= ``block / 2``
            (a core would be empty or thinner than the cells it must hold).
    """
    if not isinstance(block, int) or block < MIN_BLOCK:
        raise CellstackError(f"--block must be an integer >= {MIN_BLOCK} px, got {block!r}")
    if not isinstance(overlap, int) or overlap < MIN_OVERLAP or 2 * overlap >= block:
        raise CellstackError(
            f"--overlap must be an integer from {MIN_OVERLAP} px to under half of --block "
            f"({block}), got {overlap!r}"
        )
    h, w = shape
    blocks = []
    for y in tile_starts(h, block, overlap):
        for x in tile_starts(w, block, overlap):
            blocks.append(
                Block(
                    len(blocks),
                    y,
                    x,
                    min(block, h - y),
                    min(block, w - x),
                    tile_core(y, block, overlap, h),
                    tile_core(x, block, overlap, w),
                )
            )
    return blocks


def default_overlap(segmenter: Segmenter, block: int) -> int:
    """Twice the largest object the model trained on (95th percentile of box sides),
    in the input's pixels (the model predicts at ``segmenter.scale``), rounded up to 16
    px; 128 px for runs without recorded sizes. Capped below half the block."""
    largest = segmenter.source.largest
    overlap = 128 if largest is None else 2 * largest / segmenter.scale
    overlap = max(MIN_OVERLAP, int(math.ceil(overlap / 16) * 16))
    cap = (block // 2 - 1) // 16 * 16
    return min(overlap, max(cap, MIN_OVERLAP))


@dataclass(frozen=True)
class BlockCells:
    """The cells one window owns.

    Attributes:
        labels: int32[h, w] over the window, ids 1..n (0: background or not owned).
        scores: float32[n]; table: per cell, :data:`TABLE_COLUMNS` in global pixels.
        cut: how many owned cells touch the window's inner edge (seen partly).
    """

    labels: np.ndarray
    scores: np.ndarray
    table: dict[str, np.ndarray]
    cut: int


def segment_window(
    segmenter: Segmenter, window: np.ndarray, blk: Block, image_shape: tuple[int, int], limits
) -> BlockCells:
    """Segment one window and keep the cells whose box centre lies in its core."""
    result = segmenter(window, normalize=limits if limits is not None else True)
    t = result.table
    cy = (t["bbox_y0"] + t["bbox_y1"]) / 2 + blk.y
    cx = (t["bbox_x0"] + t["bbox_x1"]) / 2 + blk.x
    keep = (
        (cy >= blk.core_y[0]) & (cy < blk.core_y[1]) & (cx >= blk.core_x[0]) & (cx < blk.core_x[1])
    )
    ids = t["label"][keep]
    # Local ids 1..n in the result's order (decreasing score).
    lut = np.zeros(int(result.labels.max(initial=0)) + 1, dtype=np.int32)
    lut[ids] = np.arange(1, len(ids) + 1, dtype=np.int32)
    labels = lut[result.labels]
    table = {c: t[c][keep] for c in TABLE_COLUMNS}
    table["label"] = np.arange(1, len(ids) + 1, dtype=np.int64)
    for c, d in (("centroid_y", blk.y), ("bbox_y0", blk.y), ("bbox_y1", blk.y)):
        table[c] = table[c] + d
    for c, d in (("centroid_x", blk.x), ("bbox_x0", blk.x), ("bbox_x1", blk.x)):
        table[c] = table[c] + d
    h, w = image_shape
    inner = np.zeros(labels.shape, dtype=bool)
    if blk.y > 0:
        inner[0] = True
    if blk.y + blk.h < h:
        inner[-1] = True
    if blk.x > 0:
        inner[:, 0] = True
    if blk.x + blk.w < w:
        inner[:, -1] = True
    cut = len(np.unique(labels[inner & (labels > 0)]))
    return BlockCells(labels, t["score"][keep].astype(np.float32), table, cut)


def compose(
    region: tuple[int, int, int, int],
    parts: Iterable[tuple[Block, np.ndarray, np.ndarray, int]],
) -> np.ndarray:
    """int32 ids of ``region`` (y0, y1, x0, x1) from the owned cells of windows.

    Args:
        parts: ``(block, labels, scores, offset)`` in block order: a window's owned
            label window (local ids), its cells' scores, and the id offset of its block.

    Where two blocks' cells claim one pixel the higher score wins; on a tie the earlier
    block. Within a block cells never overlap.
    """
    y0, y1, x0, x1 = region
    out = np.zeros((y1 - y0, x1 - x0), dtype=np.int32)
    best = np.full(out.shape, -np.inf, dtype=np.float32)
    for blk, labels, scores, offset in parts:
        ys = slice(max(y0, blk.y), min(y1, blk.y + blk.h))
        xs = slice(max(x0, blk.x), min(x1, blk.x + blk.w))
        if ys.start >= ys.stop or xs.start >= xs.stop:
            continue
        ids = labels[ys.start - blk.y : ys.stop - blk.y, xs.start - blk.x : xs.stop - blk.x]
        score = np.concatenate([[-np.inf], scores]).astype(np.float32)[ids]
        dst = (slice(ys.start - y0, ys.stop - y0), slice(xs.start - x0, xs.stop - x0))
        take = (ids > 0) & (score > best[dst])
        out[dst][take] = ids[take] + offset
        best[dst][take] = score[take]
    return out


#: A cell is the same cell as another block's when at least this fraction of its
#: pixels lie in that cell.
DUPLICATE_COVER = 0.5


def kept_cells(
    blk: Block,
    labels: np.ndarray,
    scores: np.ndarray,
    near: Iterable[tuple[Block, np.ndarray, np.ndarray]],
) -> np.ndarray:
    """bool[n]: which of ``blk``'s owned cells stay.

    Two windows can both own a version of one cell near a core edge (each sees a
    slightly different mask, so each box centre falls in its own core). A cell goes
    when at least :data:`DUPLICATE_COVER` of its pixels lie in cells of other blocks
    that rank higher (higher score; on a tie the lower block index), counted together:
    :func:`compose` gives those pixels to them, so a kept cell keeps more than half of
    its own (two neighbours' cells, each under half, once hid one whole). Every cell
    lies inside its window, so ``blk``'s window and its neighbours' decide it.

    Args:
        near: ``(block, labels, scores)`` of the windows that overlap ``blk``'s.
    """
    n = len(scores)
    keep = np.ones(n, dtype=bool)
    if n == 0:
        return keep
    area = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    covered = np.zeros(n, dtype=np.int64)  # pixels of each cell in higher-ranked cells
    for other, theirs, their_scores in near:
        if other.index == blk.index:
            continue
        y0, y1 = max(blk.y, other.y), min(blk.y + blk.h, other.y + other.h)
        x0, x1 = max(blk.x, other.x), min(blk.x + blk.w, other.x + other.w)
        if y0 >= y1 or x0 >= x1:
            continue
        a = labels[y0 - blk.y : y1 - blk.y, x0 - blk.x : x1 - blk.x].ravel().astype(np.int64)
        b = theirs[y0 - other.y : y1 - other.y, x0 - other.x : x1 - other.x].ravel()
        both = (a > 0) & (b > 0)
        if not both.any():
            continue
        pairs, inter = np.unique(a[both] * (len(their_scores) + 1) + b[both], return_counts=True)
        mine, its = np.divmod(pairs, len(their_scores) + 1)
        s_mine, s_its = scores[mine - 1], their_scores[its - 1]
        ranks_higher = (s_its > s_mine) | ((s_its == s_mine) & (other.index < blk.index))
        np.add.at(covered, mine[ranks_higher] - 1, inter[ranks_higher])
    return covered < DUPLICATE_COVER * area


def segment_in_memory(
    segmenter: Segmenter, image: np.ndarray, block: int, overlap: int | None = None
) -> np.ndarray:
    """The block result for an image that fits in memory, in this process: int32[H, W]
    ids (the reference :func:`segment` must reproduce, up to relabelling)."""
    overlap = default_overlap(segmenter, block) if overlap is None else overlap
    image = as_lazy(image)
    grid = block_grid(image.shape, block, overlap)
    limits = intensity_limits(image.sample())
    found = [segment_window(segmenter, window_of(image, b), b, image.shape, limits) for b in grid]
    parts, offset = [], 0
    for blk, cells in zip(grid, found, strict=True):
        near = [
            (o, found[o.index].labels, found[o.index].scores) for o in grid if windows_meet(blk, o)
        ]
        keep = kept_cells(blk, cells.labels, cells.scores, near)
        parts.append((blk, drop(cells.labels, keep), cells.scores, offset))
        offset += len(cells.scores)
    return compose((0, image.shape[0], 0, image.shape[1]), parts)


def windows_meet(blk: Block, other: Block) -> bool:
    """The windows of ``blk`` and ``other`` share pixels."""
    return overlaps(other, (blk.y, blk.y + blk.h, blk.x, blk.x + blk.w))


def drop(labels: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """``labels`` with the cells ``keep`` rejects set to 0 (ids of the others kept)."""
    lut = np.concatenate([[0], np.where(keep, np.arange(1, len(keep) + 1), 0)]).astype(np.int32)
    return lut[labels]


class ArrayImage:
    """A numpy image with :class:`~cellstack.data.omezarr.LazyImage`'s reading
    interface, so arrays and files go through the same code."""

    def __init__(self, array: np.ndarray) -> None:
        array = np.asarray(array)
        if array.ndim != 2:
            raise CellstackError(f"a large image must be 2-D (H, W), got shape {array.shape}")
        self.array = array
        self.shape = (int(array.shape[0]), int(array.shape[1]))
        self.dtype = array.dtype

    def read(self, ys: slice, xs: slice) -> np.ndarray:
        return self.array[ys, xs]

    def sample(self, max_pixels: int = 2**22) -> np.ndarray:
        h, w = self.shape
        step = max(1, int(np.ceil(np.sqrt(h * w / max_pixels))))
        return self.array[::step, ::step]


def as_lazy(image: Any) -> LazyImage | ArrayImage:
    if isinstance(image, LazyImage | ArrayImage):
        return image
    if isinstance(image, str | Path):
        return open_lazy(image)
    return ArrayImage(image)


def window_of(image: LazyImage | ArrayImage, blk: Block) -> np.ndarray:
    return image.read(slice(blk.y, blk.y + blk.h), slice(blk.x, blk.x + blk.w))


def overlaps(blk: Block, region: tuple[int, int, int, int]) -> bool:
    y0, y1, x0, x1 = region
    return blk.y < y1 and y0 < blk.y + blk.h and blk.x < x1 and x0 < blk.x + blk.w
