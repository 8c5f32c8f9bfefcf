"""Images larger than memory, block by block, on Dask workers.

The geometry and the algorithm without Dask (windows, owned cells, duplicates, the
composition, the in-memory reference) are :mod:`cellstack.distributed.blockgrid`; this
module is the Dask job. The image is cut into overlapping windows (``block`` px square,
neighbours overlapping by ``overlap`` px: the geometry of the tiled predictor,
:func:`~cellstack.inference.predictor.tile_starts`). Each window is segmented whole by
the :class:`Segmenter`, and a cell belongs to the one window whose *core* (the window
minus half the overlap on each inner side,
:func:`~cellstack.inference.predictor.tile_core`) holds the centre of its box: every
cell is owned by exactly one block, and a cell up to ``overlap / 2`` px from a core edge
is seen whole by its owner. A cell that still touches its window's inner edge was cut:
it is counted (``cut`` in ``results.json``) and a warning says to raise the overlap. The
default overlap is twice the largest object the model trained on (the 95th percentile of
its box sides, at the scale it predicts at).

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
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cellstack.data.images import intensity_limits
from cellstack.data.omezarr import create_labels, open_labels
from cellstack.distributed.blockgrid import (
    ArrayImage,
    Block,
    as_lazy,
    block_grid,
    compose,
    default_overlap,
    drop,
    kept_cells,
    overlaps,
    segment_window,
    window_of,
    windows_meet,
)
from cellstack.distributed.cluster import limit_threads
from cellstack.distributed.tasks import JOB, TaskRunner, open_job, start_job
from cellstack.errors import CellstackError
from cellstack.fileio import atomic_write
from cellstack.inference.result import TABLE_COLUMNS
from cellstack.inference.segmenter import Segmenter

#: Hidden folder of per-block results inside the output (removed when the job ends).
WORK = ".cellstack-blocks"


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
    window = image if isinstance(image, np.ndarray) else window_of(image, blk)
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
        loaded.append((blk, drop(labels, keep), scores, offset))
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
    lazy = as_lazy(image)
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
        return window_of(lazy, blk) if isinstance(lazy, ArrayImage) else lazy

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
            [(b, [o for o in grid if windows_meet(b, o)], str(work)) for b in grid],
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
        over = [(b, int(offsets[b.index])) for b in grid if overlaps(b, region)]
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
