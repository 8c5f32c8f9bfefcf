"""Run a trained detector on images of any size.

An image of at most ``tile_size**2`` pixels (the memory budget of one pass) goes
through the model whole, whatever its shape (padded to the stride by the model). A
larger one is cut into the fewest tiles of one size that fit the budget and cover it
with at least ``tile_overlap`` px of overlap (:func:`plan_tiles`); a detection is kept
only by the tile whose core (the tile minus half the overlap on each inner side) holds
its box centre, so a cell seen by two tiles is kept once. Cells up to
``tile_overlap / 2`` px from a core edge are seen whole by the tile that keeps them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from cellstack.data.dataset import rescale_image
from cellstack.inference.postprocess import PostprocessParams, is_confluent, postprocess
from cellstack.inference.thresholds import Thresholds
from cellstack.modeling.detector import CellDetector
from cellstack.modeling.heads.select import BoxParams
from cellstack.structures import Instances


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``[0, length)`` with overlap."""
    if length <= tile:
        return [0]
    step = tile - overlap
    starts = list(range(0, length - tile, step))
    starts.append(length - tile)
    return starts


def tile_core(start: int, tile: int, overlap: int, total: int) -> tuple[float, float]:
    """The half-open range of box centres that the tile starting at ``start`` keeps."""
    lo = 0.0 if start == 0 else start + overlap / 2
    hi = float(total) if start + tile >= total else start + tile - overlap / 2
    return lo, hi


@dataclass(frozen=True)
class Tiling:
    """How an image goes through the model: tiles on a grid of rows and columns.

    Attributes:
        shape: the image's (H, W), as the model sees it (after any resize).
        rows, cols: ``(start, stop)`` of each band of tiles along y and x; a tile is a
            row band by a column band. Every start is on the model's stride grid.
    """

    shape: tuple[int, int]
    rows: tuple[tuple[int, int], ...]
    cols: tuple[tuple[int, int], ...]

    @property
    def offsets(self) -> tuple[tuple[int, int], ...]:
        """The (y, x) top-left corner of each tile, row-major."""
        return tuple((y, x) for y, _ in self.rows for x, _ in self.cols)

    @property
    def tile(self) -> tuple[int, int]:
        """(rows, columns) of the first tile (the others are the same, or the last
        band up to a stride longer)."""
        return self.rows[0][1] - self.rows[0][0], self.cols[0][1] - self.cols[0][0]


def band_cores(bands: tuple[tuple[int, int], ...]) -> list[tuple[float, float]]:
    """The half-open range of box centres each band keeps: neighbours meet in the middle
    of their overlap, so the cores partition the axis (a cell is kept once) and a cell
    centred in a core lies at least half the overlap from that band's inner edges."""
    cuts = [(bands[k + 1][0] + bands[k][1]) / 2 for k in range(len(bands) - 1)]
    edges = [0.0, *cuts, float(bands[-1][1])]
    return [(edges[k], edges[k + 1]) for k in range(len(bands))]


def _bands(length: int, count: int, overlap: int, stride: int) -> tuple[tuple[int, int], ...]:
    """``count`` bands covering ``length`` px, each starting on the ``stride`` grid and
    overlapping the next by at least ``overlap`` px (the last may be up to ``stride - 1``
    px longer: it ends at the image's edge)."""
    side = _tile_side(length, count, overlap + stride - 1, stride)
    if count == 1 or side >= length:
        return ((0, length),)
    step = (length - side) / (count - 1)
    starts = [int(k * step) // stride * stride for k in range(count)]
    stops = [s + side for s in starts[:-1]] + [length]
    return tuple(zip(starts, stops, strict=True))


def _tile_side(length: int, count: int, overlap: int, stride: int) -> int:
    """The side of ``count`` tiles covering ``length`` px with ``overlap`` px between
    neighbours, rounded up to ``stride`` and capped at ``length``."""
    side = math.ceil((length + (count - 1) * overlap) / count)
    return min(length, math.ceil(side / stride) * stride)


def plan_tiles(shape: tuple[int, int], max_pixels: int, overlap: int, stride: int = 32) -> Tiling:
    """The fewest tiles, each of about ``max_pixels`` pixels at most, that cover an
    image of ``shape`` (H, W) with at least ``overlap`` px between neighbours (ties: the
    fewest pixels in all). An image within the budget is one tile: itself.

    Tiles start on the model's ``stride`` grid (its coarsest feature stride), so a cell
    gets the features a one-pass prediction would compute: off the grid, masks moved by
    a few pixels and agreed with Dask's blocks at 0.873 instead of 1.000. The last band
    of each axis may be up to ``stride - 1`` px longer than the others.

    Raises:
        ValueError: ``overlap`` leaves no tile within the budget (``overlap`` must be
            under ``sqrt(max_pixels)``, as the config's ``tile_overlap < tile_size``).
    """
    h, w = shape
    if h * w <= max_pixels:
        return Tiling(shape, ((0, h),), ((0, w),))
    room = overlap + stride - 1  # the overlap left after starts round down to the grid
    best = None  # ((tiles, pixels), rows, columns)
    for ny in range(1, h + 1):
        if best is not None and ny > best[0][0]:
            break  # this many rows already need more tiles than the best
        th = _tile_side(h, ny, room, stride)
        widest = max_pixels // th
        if widest <= room + stride:
            continue  # rows still too tall for any column to fit
        nx = max(1, math.ceil((w - room) / (widest - room - stride)))
        while _tile_side(w, nx, room, stride) > widest:
            nx += 1
        tw = _tile_side(w, nx, room, stride)
        key = (ny * nx, ny * nx * th * tw)
        if best is None or key < best[0]:
            best = (key, ny, nx)
    if best is None:
        raise ValueError(f"tile_overlap {overlap} leaves no tile of at most {max_pixels} px")
    _, ny, nx = best
    return Tiling(shape, _bands(h, ny, overlap, stride), _bands(w, nx, overlap, stride))


class Predictor:
    """Detections for images, from a model and post-processing thresholds.

    Args:
        model: a detector or an :class:`~cellstack.inference.ensemble.Ensemble` (put in
            eval mode here).
        params: post-processing thresholds, for all images or per cell type.
        device: where the model runs.
        tile_size, tile_overlap: tiling of large images (pixels): one pass holds at
            most ``tile_size**2`` pixels (:func:`plan_tiles`).
        batch_size: images (or tiles) per forward pass.
        scale: resize factor applied to images before the model (masks map back).
        amp: on CUDA, the backbone and FPN of every detector (an ensemble's too) run
            under float16 autocast; the heads and post-processing stay float32.
    """

    def __init__(
        self,
        model: CellDetector | torch.nn.Module,
        params: PostprocessParams | Thresholds,
        *,
        device: torch.device | str = "cpu",
        tile_size: int = 1024,
        tile_overlap: int = 128,
        batch_size: int = 2,
        scale: float = 1.0,
        amp: bool = False,
    ) -> None:
        if not scale > 0:
            raise ValueError(f"scale must be positive, got {scale}")
        self.scale = scale
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        dtype = torch.float16 if amp and self.device.type == "cuda" else None
        for module in self.model.modules():
            if isinstance(module, CellDetector):
                module.feature_autocast = dtype
        self.thresholds = params if isinstance(params, Thresholds) else Thresholds(params)
        self.tile_size = tile_size
        self.tile_overlap = tile_overlap
        self.batch_size = batch_size

    @torch.no_grad()
    def raw(
        self, images: Sequence[np.ndarray], box_params: BoxParams | None = None
    ) -> list[Instances]:
        """Model detections (boxes, scores, labels, roi_masks) for uint8[H, W] images.

        Images that fit in one pass go through the model ``batch_size`` at a time;
        larger ones are tiled (:meth:`tiling`). ``box_params`` replaces a single detector's own box
        selection (ensembles select their own).
        """
        out: list[Instances | None] = [None] * len(images)
        small = [k for k, im in enumerate(images) if im.size <= self.tile_size**2]
        forward = [images[k] for k in small]
        for k, inst in zip(small, self._forward(forward, box_params), strict=True):
            out[k] = inst.to("cpu")
        for k, image in enumerate(images):
            if out[k] is None:
                out[k] = self._tiled(image, box_params)
        return out

    def final_box_params(self, dense: bool = False) -> BoxParams | None:
        """A single detector's box selection that also drops, before the mask head, the
        boxes post-processing would drop for their score anyway (None: nothing to drop).

        The mask head is the costliest step per box (56x56 masks), and a low
        ``predict.box_score_thresh`` keeps many boxes that ``score_thresh`` then drops.
        Dropping them first leaves the result unchanged: box NMS and mask NMS are
        greedy in score order, so a lower-scored box never removes a higher one, and
        the thresholds of an image do not depend on the dropped boxes when one
        threshold set serves every image (no per-type entries, or a single class).
        ``dense``: for a confluent image, down to ``dense_score_thresh`` (the first
        pass of :meth:`__call__` keeps ``score_thresh``'s boxes only, so a sparse image
        sends no more boxes through the mask head than without a dense confidence).
        """
        if not isinstance(self.model, CellDetector):
            return None
        thresholds = self.thresholds
        if thresholds.per_type and len(self.model.class_names) > 1:
            return None
        every = (thresholds.default, *thresholds.per_type.values())
        floor = min(p.lowest_score if dense else p.score_thresh for p in every)
        own = self.model.box_params
        # select_detections keeps scores > its threshold, postprocess keeps >= score_thresh
        floor = float(np.nextafter(np.float32(floor), np.float32(0)))
        if floor <= own.score_thresh:
            return None
        return replace(own, score_thresh=floor)

    def __call__(self, images: Sequence[np.ndarray]) -> list[Instances]:
        """Post-processed, non-overlapping cells (see :func:`postprocess`), with the
        thresholds of each image's cell type."""
        names = self.model.class_names
        # Cells of the size the model learnt: resize in, decide there (min_size is in the
        # training scale), then paste the survivors' masks at the input's pixels.
        sizes = [im.shape for im in images]
        resized = self.resized(images)
        first = self.final_box_params()
        raws = self.raw(resized, first)
        params = [self.thresholds.for_classes(inst.classes.numpy(), names) for inst in raws]
        dense = self.final_box_params(dense=True)
        if first is not None and dense is not None and dense.score_thresh < first.score_thresh:
            # A confluent image goes through again, its boxes kept down to the dense
            # confidence: only such images pay for the second pass.
            again = [k for k, inst in enumerate(raws) if is_confluent(inst, params[k])]
            for k, inst in zip(again, self.raw([resized[k] for k in again], dense), strict=True):
                raws[k] = inst
        return [
            postprocess(inst, p, size) for inst, p, size in zip(raws, params, sizes, strict=True)
        ]

    def resized(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """uint8[H, W] images resized by ``scale``, as the model sees them
        (:func:`~cellstack.data.dataset.rescale_image`)."""
        return [rescale_image(im, self.scale) for im in images]

    def _forward(
        self, images: Sequence[np.ndarray], box_params: BoxParams | None = None
    ) -> list[Instances]:
        extra = {} if box_params is None else {"box_params": box_params}
        results = []
        for k in range(0, len(images), self.batch_size):
            chunk = images[k : k + self.batch_size]
            tensors = [
                torch.from_numpy(im.astype(np.float32) / 255)[None].to(self.device) for im in chunk
            ]
            results.extend(self.model(tensors, **extra))
        return results

    def tiling(self, h: int, w: int) -> Tiling:
        """The tiles an image of ``h`` x ``w`` pixels (as the model sees it) is cut into."""
        stride = getattr(self.model, "size_divisor", 32)
        return plan_tiles((h, w), self.tile_size**2, self.tile_overlap, stride)

    def _tiled(self, image: np.ndarray, box_params: BoxParams | None = None) -> Instances:
        h, w = image.shape
        layout = self.tiling(h, w)
        tiles = [(ys, xs) for ys in layout.rows for xs in layout.cols]
        cores = [(cy, cx) for cy in band_cores(layout.rows) for cx in band_cores(layout.cols)]
        crops = [image[y0:y1, x0:x1] for (y0, y1), (x0, x1) in tiles]
        parts = []
        for ((y, _), (x, _)), ((y_lo, y_hi), (x_lo, x_hi)), inst in zip(
            tiles, cores, self._forward(crops, box_params), strict=True
        ):
            inst = inst.to("cpu")
            shift = torch.tensor([x, y, x, y], dtype=inst.boxes.dtype)
            boxes = inst.boxes + shift
            cx = (boxes[:, 0] + boxes[:, 2]) / 2
            cy = (boxes[:, 1] + boxes[:, 3]) / 2
            keep = (cx >= x_lo) & (cx < x_hi) & (cy >= y_lo) & (cy < y_hi)
            parts.append(Instances((h, w), **{**inst.fields, "boxes": boxes})[keep])
        return Instances.cat(parts)
