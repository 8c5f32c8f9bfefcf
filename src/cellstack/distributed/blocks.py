"""Images larger than memory, block by block, on Dask workers.

The image is cut into overlapping windows (``block`` px square, neighbours overlapping
by ``overlap`` px: the geometry of the tiled predictor, :func:`~cellstack.inference.
predictor.tile_starts`). Each window is segmented whole by the :class:`Segmenter`, and
a cell belongs to the one window whose *core* (the window minus half the overlap on
each inner side, :func:`~cellstack.inference.predictor.tile_core`) holds the centre of
its box: every cell is owned by exactly one block, and a cell up to ``overlap / 2`` px
from a core edge is seen whole by its owner. A cell that still touches its window's
inner edge was cut: it is counted (``cut`` in ``results.json``) and a warning says to
raise the overlap. The default overlap is twice the largest object the model trained on
(the 95th percentile of its box sides, at the scale it predicts at).

Three passes of tasks, so that no worker ever holds more than a few windows and no two
write the same file:

1. *segment*: one task per window writes its owned cells (a label window with ids
   1..n, their scores and table rows) to ``OUT/.cellstack-blocks/b{k}.npz`` and
   returns n. Global ids are ``offset[k] + local id`` with ``offset`` the running sum
   of n over blocks in order: a vector of one number per block, not per cell.
2. *deduplicate*: one task per window decides which of its cells stay where a
   neighbour owns a version of the same cell (:func:`kept_cells`).
3. *write*: one task per output chunk (``block`` px, aligned to the zarr chunks)
   composes the owned cells of every window that overlaps it. Where two blocks' cells
   claim one pixel the higher score wins (ties: the lower block index), the rule
   :func:`compose` states once for both this and :func:`segment_in_memory`.

Intensities are scaled once for the whole image (0.5/99.5 percentiles of a strided
sample, :func:`~cellstack.data.images.intensity_limits`), so every block sees the same
mapping. A re-run with the same arguments resumes: blocks whose ``b{k}.npz`` exists are
not segmented again. A block that fails with a data error stops the job with one line
naming the image and the block; a worker that dies is replaced and its tasks retried by
Dask.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cellstack.data.images import intensity_limits
from cellstack.data.omezarr import LazyImage, create_labels, open_labels, open_lazy
from cellstack.distributed.cluster import limit_threads
from cellstack.distributed.tasks import JOB, TaskRunner, open_job, start_job
from cellstack.errors import CellstackError
from cellstack.fileio import atomic_write
from cellstack.inference.predictor import tile_core, tile_starts
from cellstack.inference.result import TABLE_COLUMNS
from cellstack.inference.segmenter import Segmenter

#: Hidden folder of per-block results inside the output (removed when the job ends).
WORK = ".cellstack-blocks"
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
    image = _as_lazy(image)
    grid = block_grid(image.shape, block, overlap)
    limits = intensity_limits(image.sample())
    found = [segment_window(segmenter, _window(image, b), b, image.shape, limits) for b in grid]
    parts, offset = [], 0
    for blk, cells in zip(grid, found, strict=True):
        near = [(o, found[o.index].labels, found[o.index].scores) for o in grid if _near(blk, o)]
        keep = kept_cells(blk, cells.labels, cells.scores, near)
        parts.append((blk, _drop(cells.labels, keep), cells.scores, offset))
        offset += len(cells.scores)
    return compose((0, image.shape[0], 0, image.shape[1]), parts)


def _near(blk: Block, other: Block) -> bool:
    """The windows of ``blk`` and ``other`` share pixels."""
    return _overlaps(other, (blk.y, blk.y + blk.h, blk.x, blk.x + blk.w))


def _drop(labels: np.ndarray, keep: np.ndarray) -> np.ndarray:
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


def _as_lazy(image: Any) -> LazyImage | ArrayImage:
    if isinstance(image, LazyImage | ArrayImage):
        return image
    if isinstance(image, str | Path):
        return open_lazy(image)
    return ArrayImage(image)


def _window(image: LazyImage | ArrayImage, blk: Block) -> np.ndarray:
    return image.read(slice(blk.y, blk.y + blk.h), slice(blk.x, blk.x + blk.w))


# --- the two passes, as functions a worker runs -----------------------------------------


def _block_file(work: Path, blk: Block) -> Path:
    return work / f"b{blk.index}.npz"


def _segment_task(segmenter, image, blk: Block, shape, limits, work: str) -> tuple[int, int]:
    """Pass 1 on a worker: segment ``blk`` and store its owned cells; ``(n, cut)``."""
    limit_threads()
    path = _block_file(Path(work), blk)
    if path.is_file():  # done by an earlier, interrupted run (written atomically)
        with np.load(path) as done:
            return len(done["scores"]), int(done["cut"])
    window = image if isinstance(image, np.ndarray) else _window(image, blk)
    cells = segment_window(segmenter, window, blk, shape, limits)
    with atomic_write(path, "wb") as f:
        np.savez_compressed(
            f,
            labels=cells.labels,
            scores=cells.scores,
            cut=np.int64(cells.cut),
            **{f"t_{c}": np.asarray(v) for c, v in cells.table.items() if c != "cell_type"},
            t_cell_type=np.asarray(cells.table["cell_type"], dtype=str),
        )
    return len(cells.scores), cells.cut


def _keep_file(work: Path, blk: Block) -> Path:
    return work / f"k{blk.index}.npy"


def _dedup_task(_, blk: Block, near: Sequence[Block], work: str) -> int:
    """Pass 2 on a worker: which of ``blk``'s cells stay (:func:`kept_cells`)."""
    work = Path(work)
    loaded = []
    for other in near:
        with np.load(_block_file(work, other)) as f:
            loaded.append((other, f["labels"], f["scores"]))
    mine = next(x for x in loaded if x[0].index == blk.index)
    keep = kept_cells(blk, mine[1], mine[2], loaded)
    with atomic_write(_keep_file(work, blk), "wb") as f:
        np.save(f, keep)
    return int((~keep).sum())


def _write_task(out: str, region, parts: Sequence[tuple[Block, int]], work: str) -> int:
    """Pass 3 on a worker: compose one output chunk from the blocks over it."""
    limit_threads()
    loaded = []
    for blk, offset in parts:
        with np.load(_block_file(Path(work), blk)) as f:
            labels, scores = f["labels"], f["scores"]
        keep = np.load(_keep_file(Path(work), blk))
        loaded.append((blk, _drop(labels, keep), scores, offset))
    y0, y1, x0, x1 = region
    labels = compose(region, loaded)
    open_labels(out)[y0:y1, x0:x1] = labels
    return int((labels > 0).sum())


@dataclass(frozen=True)
class BlockSummary:
    out: Path
    shape: tuple[int, int]
    blocks: int
    cells: int
    cut: int
    duplicates: int
    block: int
    overlap: int
    seconds: float


def segment(
    segmenter: Segmenter,
    image: str | Path | np.ndarray,
    out: str | Path,
    *,
    block: int = 2048,
    overlap: int | None = None,
    client: Any = None,
    overwrite: bool = False,
    progress: bool = True,
) -> BlockSummary:
    """Segment a large 2-D image block by block into an OME-Zarr label image.

    Args:
        segmenter: the model (sent to each worker once).
        image: a zarr / OME-Zarr folder or a TIFF (read lazily, a window per task), or a
            numpy array (windows are cut here and sent).
        out: the output folder (``labels.ome.zarr``): the NGFF label image ``cells``,
            ``objects.csv`` (one row per cell, global pixels) and ``results.json``.
        block: window size (px); overlap: between neighbouring windows (px; default
            :func:`default_overlap`).
        client: a ``dask.distributed.Client``; None runs the blocks in this process,
            one after another, with the same files and result.
        overwrite: replace a finished result of this function at ``out`` (a folder
            holding anything else is refused).
        progress: a progress bar over tasks (two per block, one per output chunk).

    Returns:
        A :class:`BlockSummary`.
    """
    from tqdm import tqdm

    t0 = time.perf_counter()
    out = Path(out)
    overlap = default_overlap(segmenter, block) if overlap is None else overlap
    lazy = _as_lazy(image)
    where = str(image) if isinstance(image, str | Path) else "the image"
    grid = block_grid(lazy.shape, block, overlap)
    limits = intensity_limits(lazy.sample())
    work = out / WORK
    if overwrite and _is_finished_result(out):
        import shutil

        shutil.rmtree(out)
    _prepare(out, work, lazy.shape, block, overlap)
    run = TaskRunner(client, segmenter)

    def inputs(blk: Block):
        return _window(lazy, blk) if isinstance(lazy, ArrayImage) else lazy

    regions = _regions(lazy.shape, block)
    total = 2 * len(grid) + len(regions)
    with tqdm(total=total, desc="blocks", unit="task", disable=not progress) as bar:
        counts = run.map(
            _segment_task,
            [(inputs(b), b, lazy.shape, limits, str(work)) for b in grid],
            lambda k, exc: f"{where}: {grid[k].name}: {exc}",
            bar,
        )
        dropped = run.map(
            _dedup_task,
            [(b, [o for o in grid if _near(b, o)], str(work)) for b in grid],
            lambda k, exc: f"{where}: {grid[k].name}: {exc}",
            bar,
            first=str(out),
        )
        offsets = _write_regions(run, out, grid, regions, counts, where, bar)
    cut = sum(c for _, c in counts)
    cells = _write_table(out / "objects.csv", grid, offsets, work)
    summary = BlockSummary(
        out,
        lazy.shape,
        len(grid),
        cells,
        cut,
        sum(dropped),
        block,
        overlap,
        time.perf_counter() - t0,
    )
    with atomic_write(out / "results.json") as f:
        json.dump({k: (str(v) if isinstance(v, Path) else v) for k, v in vars(summary).items()}, f)
    import shutil

    shutil.rmtree(work)
    return summary


def _write_regions(
    run: TaskRunner, out: Path, grid: list[Block], regions: list, counts, where: str, bar
) -> np.ndarray:
    """Write the label image region by region from the blocks' owned cells; returns
    each block's id offset (int64[blocks + 1]: the cells before it, then the total)."""
    work = out / WORK
    offsets = np.concatenate([[0], np.cumsum([n for n, _ in counts])]).astype(np.int64)
    if offsets[-1] > np.iinfo(np.int32).max:
        raise CellstackError(f"{where}: {offsets[-1]} cells do not fit int32 label ids")
    tasks = []
    for region in regions:
        over = [(b, int(offsets[b.index])) for b in grid if _overlaps(b, region)]
        tasks.append((str(out), region, over, str(work)))
    run.map(
        _write_task,
        [t[1:] for t in tasks],
        lambda k, exc: (
            f"{where}: output rows {regions[k][0]}:{regions[k][1]}, cols "
            f"{regions[k][2]}:{regions[k][3]}: {exc}"
        ),
        bar,
        first=str(out),
    )
    return offsets


def _prepare(out: Path, work: Path, shape, block: int, overlap: int) -> None:
    """Create (or, for an interrupted run with the same geometry, reopen) ``out``."""
    job = {"shape": list(shape), "block": block, "overlap": overlap}
    refusal = (
        f"{out}: holds an unfinished run with another geometry ({work / JOB}); choose "
        "another --out or remove it"
    )
    if open_job(work, job, refusal):
        return
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        finished = _is_finished_result(out)
        raise CellstackError(
            f"{out}: exists and is not empty; "
            + ("pass --overwrite to replace it, or " if finished else "")
            + "choose another --out"
        )
    create_labels(out, shape, block)
    start_job(work, job)


def _is_finished_result(out: Path) -> bool:
    """``out`` is exactly what :func:`segment` leaves: the label group, objects.csv and
    results.json, nothing else."""
    names = {p.name for p in out.iterdir()} if out.is_dir() else set()
    return names == {".zattrs", ".zgroup", "cells", "objects.csv", "results.json"}


def _regions(shape: tuple[int, int], chunk: int) -> list[tuple[int, int, int, int]]:
    h, w = shape
    return [
        (y, min(y + chunk, h), x, min(x + chunk, w))
        for y in range(0, h, chunk)
        for x in range(0, w, chunk)
    ]


def _overlaps(blk: Block, region: tuple[int, int, int, int]) -> bool:
    y0, y1, x0, x1 = region
    return blk.y < y1 and y0 < blk.y + blk.h and blk.x < x1 and x0 < blk.x + blk.w


def _write_table(path: Path, grid: list[Block], offsets: np.ndarray, work: Path) -> int:
    """``objects.csv``, streamed block by block (global ids and pixels); its rows."""
    rows = 0
    with atomic_write(path, newline="") as f:
        writer = csv.writer(f)
        writer.writerow(TABLE_COLUMNS)
        for blk in grid:
            keep = np.load(_keep_file(work, blk))
            with np.load(_block_file(work, blk)) as d:
                cols = [d[f"t_{c}"][keep] for c in TABLE_COLUMNS]
            cols[0] = cols[0] + offsets[blk.index]
            rows += int(keep.sum())
            for row in zip(*cols, strict=True):
                writer.writerow(
                    [f"{v:.6g}" if isinstance(v, float | np.floating) else v for v in row]
                )
    return rows
