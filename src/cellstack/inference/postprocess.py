"""From model detections to non-overlapping cell masks, in the original's order.

1. paste each RoI mask into its box and binarise at ``mask_thresh``; grow or shrink
   its outline by ``mask_offset`` times its equivalent diameter (0: as pasted);
2. sort by confidence, drop those under ``score_thresh`` (under ``dense_score_thresh``
   instead where the cells at ``score_thresh`` cover ``dense_fraction`` of the image:
   :func:`confluence_keep`);
3. greedy mask NMS: drop a mask whose IoU with a kept, more confident one exceeds
   ``mask_nms_iou`` (low: cells hardly overlap);
4. drop masks smaller than ``min_size`` pixels (and empty ones);
5. optionally refill each mask's contours as convex polygons (``convex_refill``: the
   original's "corrupt astro", which mimics the broken official astrocyte annotations
   when the model was trained on cleaned masks);
6. remove overlaps: a mask loses the pixels taken by more confident masks (the
   competition requires each pixel in at most one cell).

Thresholds can differ per cell type (:class:`Thresholds`); an image's type is the
majority label of its detections, as in the original.

Masks are kept as lists of flat pixel indices (row-major, int64): a dense
bool[N, H, W] stack of a 2000 x 2000 image with 2000 cells would need 8 GB.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from cellstack.config import PostprocessParams
from cellstack.data.masks import pixels_to_sparse
from cellstack.structures import Instances


def paste_masks(
    roi_masks: torch.Tensor,
    boxes: torch.Tensor,
    image_size: tuple[int, int],
    threshold: float,
    *,
    chunk_pixels: int = 1 << 22,
) -> list[np.ndarray]:
    """Paste RoI mask probabilities into the image and binarise them.

    Masks are pasted in chunks of similar size: one ``grid_sample`` call samples every
    mask of a chunk at the pixel centres of its box (padded to the chunk's largest
    box), as detectron2's ``_do_paste_mask`` batches, and only the pixels inside each
    box and the image are kept, so the result is that of pasting one mask at a time.

    Args:
        roi_masks: float[N, M, M]; cell ``(i, j)`` covers the box's ``i``-th row and
            ``j``-th column of an M x M grid (the aligned RoIAlign convention).
        boxes: float[N, 4] xyxy image pixels.
        image_size: ``(H, W)``.
        threshold: a pixel is in the mask where the bilinearly sampled probability at
            its centre exceeds this.
        chunk_pixels: at most this many sampled pixels per chunk (bounds memory:
            ~4 bytes x 3 each).

    Returns:
        One int64 array of flat pixel indices per mask (ascending), in input order.
    """
    h, w = image_size
    n = len(boxes)
    out: list[np.ndarray] = [np.zeros(0, dtype=np.int64)] * n
    if n == 0:
        return out
    roi_masks = roi_masks.float().cpu()
    boxes = boxes.float().cpu()
    x1, y1, x2, y2 = boxes.unbind(1)
    c0 = torch.floor(x1).clamp(min=0).long()
    c1 = torch.ceil(x2).clamp(max=w).long()
    r0 = torch.floor(y1).clamp(min=0).long()
    r1 = torch.ceil(y2).clamp(max=h).long()
    cols, rows = (c1 - c0).clamp(min=0), (r1 - r0).clamp(min=0)
    box_w = (x2 - x1).clamp(min=1e-6)
    box_h = (y2 - y1).clamp(min=1e-6)
    order = torch.argsort(cols * rows).tolist()  # similar sizes share a chunk's padding
    start = 0
    while start < n:
        stop = start + 1
        while stop < n:
            k = order[stop]
            size = (stop + 1 - start) * int(rows[k]) * int(cols[k])  # sorted: k is largest
            if size > chunk_pixels:
                break
            stop += 1
        idx = torch.tensor(order[start:stop])
        start = stop
        hc, wc = int(rows[idx].max()), int(cols[idx].max())
        if hc == 0 or wc == 0:
            continue
        # Pixel centres in each box's normalised [-1, 1] frame (align_corners=False).
        gx = (c0[idx, None] + torch.arange(wc) + 0.5 - x1[idx, None]) / box_w[idx, None] * 2 - 1
        gy = (r0[idx, None] + torch.arange(hc) + 0.5 - y1[idx, None]) / box_h[idx, None] * 2 - 1
        grid = torch.stack(
            (gx[:, None, :].expand(-1, hc, -1), gy[:, :, None].expand(-1, -1, wc)), dim=-1
        )
        probs = F.grid_sample(
            roi_masks[idx, None], grid, mode="bilinear", padding_mode="border", align_corners=False
        )[:, 0]
        inside = (torch.arange(hc) < rows[idx, None])[:, :, None] & (
            torch.arange(wc) < cols[idx, None]
        )[:, None, :]
        k, ys, xs = np.nonzero((probs > threshold).logical_and_(inside).numpy())
        flat = (ys + r0[idx].numpy()[k]) * w + xs + c0[idx].numpy()[k]
        counts = np.bincount(k, minlength=len(idx))
        for j, pixels in zip(
            idx.tolist(), np.split(flat.astype(np.int64), np.cumsum(counts)[:-1]), strict=True
        ):
            out[j] = pixels
    return out


def offset_masks(
    pixels: list[np.ndarray], image_size: tuple[int, int], offsets: Sequence[float]
) -> list[list[np.ndarray]]:
    """Each mask grown (offset > 0) or shrunk (< 0) by ``offset`` times its equivalent
    diameter ``2 sqrt(area / pi)``, once per offset.

    A pixel joins a grown mask when its centre lies within that distance of the mask;
    it stays in a shrunk mask when it lies farther than that from the background
    (Euclidean distance transforms of the mask's box, computed once for every offset).
    Relative to each mask's own size, so an offset means the same for small and large
    cells and at any image scale; a mask shrunk to nothing comes back empty.

    Args:
        pixels: int64 flat pixel indices per mask (row-major, ascending).
        image_size: ``(H, W)``.
        offsets: fractions of the diameter, each in -0.5..0.5.

    Returns:
        One list of masks per offset, in the order given (offset 0: the masks given).
    """
    from scipy import ndimage

    h, w = image_size
    out: list[list[np.ndarray]] = [[] for _ in offsets]
    grow = max((o for o in offsets if o > 0), default=0.0)
    for p in pixels:
        if len(p) == 0 or all(o == 0 for o in offsets):
            for masks in out:
                masks.append(p)
            continue
        diameter = 2 * np.sqrt(len(p) / np.pi)
        pad = int(np.ceil(grow * diameter)) + 1
        ys, xs = np.divmod(p, w)
        y0, x0 = max(ys.min() - pad, 0), max(xs.min() - pad, 0)
        y1, x1 = min(ys.max() + pad + 1, h), min(xs.max() + pad + 1, w)
        crop = np.zeros((y1 - y0, x1 - x0), dtype=bool)
        crop[ys - y0, xs - x0] = True
        outside = inside = None
        for masks, offset in zip(out, offsets, strict=True):
            if offset == 0:
                masks.append(p)
                continue
            if offset > 0:
                if outside is None:  # distance of each background pixel to the mask
                    outside = ndimage.distance_transform_edt(~crop)
                keep = outside <= offset * diameter
            else:
                if inside is None:  # distance of each mask pixel to the background;
                    # the edge padding keeps a cell cut by the image border cut there
                    padded = np.pad(crop, 1, mode="edge")
                    inside = ndimage.distance_transform_edt(padded)[1:-1, 1:-1]
                keep = crop & (inside > -offset * diameter)
            ky, kx = np.nonzero(keep)
            masks.append(((ky + y0) * w + kx + x0).astype(np.int64))
    return out


def mask_nms(pixels: list[np.ndarray], image_size: tuple[int, int], iou: float) -> np.ndarray:
    """Greedy mask NMS over masks sorted by decreasing confidence; returns kept indices."""
    return nms_from_overlaps(self_overlaps(pixels, image_size), len(pixels), iou)


def self_overlaps(pixels: list[np.ndarray], image_size: tuple[int, int]):
    """Pairwise mask IoUs (an :class:`~cellstack.evaluation.matching.Overlaps`)."""
    from cellstack.evaluation.matching import overlaps

    m = pixels_to_sparse(pixels, image_size)
    return overlaps(m, m)


def nms_from_overlaps(ov, n: int, iou: float) -> np.ndarray:
    """Greedy NMS from precomputed pairwise IoUs of ``n`` masks sorted by confidence.

    Greedy NMS keeps a mask depending only on more confident ones, so the result for the
    ``k`` most confident masks is the prefix of the result for all: tuning confidence
    thresholds can truncate one NMS run.
    """
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    # Pairs (i, j) with i more confident than j and IoU above the threshold.
    hit = (ov.iou > iou) & (ov.truth_idx < ov.pred_idx)
    suppressors = [[] for _ in range(n)]
    for i, j in zip(ov.truth_idx[hit], ov.pred_idx[hit], strict=True):
        suppressors[j].append(i)
    kept = np.zeros(n, dtype=bool)
    for j in range(n):
        kept[j] = not any(kept[i] for i in suppressors[j])
    return np.flatnonzero(kept)


def convex_refill(pixels: list[np.ndarray], image_size: tuple[int, int]) -> list[np.ndarray]:
    """Refill each mask's contours (outer and holes, ``RETR_TREE``) with
    ``cv2.fillConvexPoly``, as the original did for astrocytes. Convex masks are
    unchanged; concave ones come out distorted the way the official astro annotations
    are (the original's "corrupt astro", +0.002 on the leaderboard)."""
    import cv2

    w = image_size[1]
    out = []
    for p in pixels:
        if len(p) == 0:
            out.append(p)
            continue
        ys, xs = np.divmod(p, w)
        y0, x0 = ys.min(), xs.min()
        crop = np.zeros((ys.max() - y0 + 1, xs.max() - x0 + 1), dtype=np.uint8)
        crop[ys - y0, xs - x0] = 1
        contours, _ = cv2.findContours(crop, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)
        filled = np.zeros_like(crop)
        for c in contours:
            cv2.fillConvexPoly(filled, c, 1)
        fy, fx = np.nonzero(filled)
        out.append(np.sort((fy + y0) * w + (fx + x0)).astype(np.int64))
    return out


def remove_overlaps(pixels: list[np.ndarray], image_size: tuple[int, int]) -> list[np.ndarray]:
    """Each mask loses the pixels of the masks before it (more confident ones)."""
    taken = np.zeros(image_size[0] * image_size[1], dtype=bool)
    out = []
    for p in pixels:
        p = p[~taken[p]]
        taken[p] = True
        out.append(p)
    return out


def confidence_order(scores: torch.Tensor) -> np.ndarray:
    """Indices that sort detections by decreasing score, ties kept in detection order
    (a stable sort): the one order both ``postprocess`` and ``tune`` apply, so tied
    scores can never give tune a different mask-NMS result than predict."""
    return np.argsort(-scores.detach().float().cpu().numpy(), kind="stable")


def confluence_keep(
    scores: np.ndarray,
    pixels: list[np.ndarray],
    image_size: tuple[int, int],
    params: PostprocessParams,
) -> np.ndarray:
    """bool[N]: the detections (``scores`` float[N], their masks' flat ``pixels``) kept
    by ``params.score_thresh``, or by ``params.dense_score_thresh`` where the masks
    scoring ``score_thresh`` or more cover at least ``params.dense_fraction`` of the
    image (a confluent field, whose touching cells score lower)."""
    keep = scores >= params.score_thresh
    if params.dense_score_thresh is None or not len(scores):
        return keep
    confident = [p for p, k in zip(pixels, keep, strict=True) if k]
    if covers(confident, image_size, params.dense_fraction):
        return scores >= params.dense_score_thresh
    return keep


def covers(pixels: list[np.ndarray], image_size: tuple[int, int], fraction: float) -> bool:
    """Whether masks (flat pixel indices) cover at least ``fraction`` of the image."""
    covered = len(np.unique(np.concatenate(pixels))) if pixels else 0
    return covered >= fraction * image_size[0] * image_size[1]


def is_confluent(inst: Instances, params: PostprocessParams) -> bool:
    """Whether raw detections (``boxes, scores, roi_masks``) make a confluent image for
    ``params`` (:func:`confluence_keep`): always False without a dense confidence."""
    if params.dense_score_thresh is None:
        return False
    sure = inst[inst.scores.detach().cpu() >= params.score_thresh]
    pixels = paste_masks(
        sure.roi_masks.detach(), sure.boxes.detach(), inst.image_size, params.mask_thresh
    )
    return covers(pixels, inst.image_size, params.dense_fraction)


def postprocess(
    inst: Instances, params: PostprocessParams, out_size: tuple[int, int] | None = None
) -> Instances:
    """Detections with ``boxes, scores, labels, roi_masks`` -> non-overlapping cells
    (see the module docstring).

    Args:
        inst: raw detections of an image of ``inst.image_size`` (the model's pixels).
        params: the thresholds; ``min_size`` counts the model's pixels.
        out_size: ``(H, W)`` of the image the cells are for, when the model saw it
            resized (``--diameter``, ``data.scale``): which detections survive is decided
            at the model's scale as above, then each survivor's mask probabilities are
            pasted again at full resolution (boxes scaled) before overlap removal, so the
            outlines are as smooth as the mask head made them, not the blocks of a
            low-resolution label image resized.

    Returns:
        Instances sorted by decreasing score with ``boxes, scores, labels`` (numpy) and
        ``pixels`` (list of int64 flat pixel indices), no ``roi_masks``.
    """
    size = inst.image_size
    inst = inst[confidence_order(inst.scores)]
    inst = inst[inst.scores.detach().cpu() >= params.lowest_score]
    pixels = paste_masks(inst.roi_masks.detach(), inst.boxes.detach(), size, params.mask_thresh)
    keep = confluence_keep(inst.scores.detach().cpu().numpy(), pixels, size, params)
    inst, pixels = inst[torch.from_numpy(keep)], [p for p, k in zip(pixels, keep, strict=True) if k]
    if params.mask_offset:
        (pixels,) = offset_masks(pixels, size, (params.mask_offset,))
    result = Instances(
        size,
        boxes=inst.boxes.detach().float().cpu().numpy(),
        scores=inst.scores.detach().float().cpu().numpy(),
        classes=inst.classes.detach().cpu().numpy(),
        pixels=pixels,
        index=np.arange(len(inst)),
    )
    result = result[mask_nms(result.pixels, size, params.mask_nms_iou)]
    sizes = np.array([len(p) for p in result.pixels])
    result = result[(sizes > 0) & (sizes >= params.min_size)]
    if out_size is not None and tuple(out_size) != tuple(size):
        sy, sx = out_size[0] / size[0], out_size[1] / size[1]
        boxes = result.boxes * np.array([sx, sy, sx, sy], dtype=np.float32)
        keep = torch.as_tensor(result.index, dtype=torch.int64)
        pixels = paste_masks(
            inst.roi_masks.detach()[keep], torch.from_numpy(boxes), out_size, params.mask_thresh
        )
        if params.mask_offset:
            (pixels,) = offset_masks(pixels, out_size, (params.mask_offset,))
        result = Instances(tuple(out_size), **{**result.fields, "boxes": boxes, "pixels": pixels})
        size = tuple(out_size)
    if params.convex_refill:
        result = result.replace(pixels=convex_refill(result.pixels, size))
    result = result.replace(pixels=remove_overlaps(result.pixels, size), index=None)
    return result[np.array([len(p) > 0 for p in result.pixels], dtype=bool)]
