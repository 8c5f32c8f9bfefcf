"""COCO mask AP and AP50 through pycocotools, without dense masks.

Instances are compared class-agnostically (one category "cell"), as the competition
metric does. Masks go from our sparse row-major form straight to COCO RLE: COCO counts
runs column-major, so we hand pycocotools each H x W image as its W x H transpose.
Both sides are transposed alike, which leaves every IoU and area unchanged.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence

import numpy as np
import scipy.sparse as sp

#: Detections kept per image. Dense shsy5y images hold several hundred cells, so COCO's
#: default of 100 would cap recall (LIVECell evaluates with up to 2000).
MAX_DETS = 3000


def _coco_rles(masks: sp.csr_matrix, shape: tuple[int, int]) -> list[dict]:
    """Row-major sparse masks -> compressed COCO RLEs of the transposed image."""
    from pycocotools import mask as mask_utils

    h, w = shape
    n_pixels = h * w
    masks = masks.tocsr()
    masks.sort_indices()
    uncompressed = []
    for i in range(masks.shape[0]):
        idx = masks.indices[masks.indptr[i] : masks.indptr[i + 1]].astype(np.int64)
        if len(idx) == 0:
            uncompressed.append({"size": [w, h], "counts": [n_pixels]})
            continue
        breaks = np.flatnonzero(np.diff(idx) != 1)
        starts = np.concatenate(([idx[0]], idx[breaks + 1]))
        ends = np.concatenate((idx[breaks] + 1, [idx[-1] + 1]))
        gaps = starts - np.concatenate(([0], ends[:-1]))
        counts = np.empty(2 * len(starts) + 1, dtype=np.int64)
        counts[0:-1:2] = gaps
        counts[1::2] = ends - starts
        counts[-1] = n_pixels - ends[-1]
        uncompressed.append({"size": [w, h], "counts": counts.tolist()})
    return [mask_utils.frPyObjects(u, w, h) for u in uncompressed]


def mask_ap(
    truths: Mapping[str, sp.csr_matrix],
    preds: Mapping[str, sp.csr_matrix],
    shapes: Mapping[str, tuple[int, int]],
    scores: Mapping[str, Sequence[float]] | None = None,
) -> dict[str, float]:
    """COCO mask AP (IoU 0.50:0.95) and AP50 over all images.

    Args:
        truths, preds: ``{image_id: sparse bool[N, H*W]}``; a missing prediction is empty.
        shapes: ``{image_id: (H, W)}``.
        scores: ``{image_id: float[M]}`` confidences; default 1 for every prediction
            (then AP carries no ranking information, only precision and recall).

    Returns:
        ``{"ap": float, "ap50": float}``, NaN where there is no truth at all.
    """
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, gt_anns, dt_anns = [], [], []
    for num, (image_id, truth) in enumerate(truths.items(), start=1):
        shape = shapes[image_id]
        images.append({"id": num, "height": shape[1], "width": shape[0]})
        for rle in _coco_rles(truth, shape):
            gt_anns.append(
                {
                    "id": len(gt_anns) + 1,
                    "image_id": num,
                    "category_id": 1,
                    "segmentation": rle,
                    "area": float(mask_utils.area(rle)),
                    "bbox": mask_utils.toBbox(rle).tolist(),
                    "iscrowd": 0,
                }
            )
        pred = preds.get(image_id)
        if pred is None or pred.shape[0] == 0:
            continue
        image_scores = scores.get(image_id) if scores is not None else None
        for k, rle in enumerate(_coco_rles(pred, shape)):
            dt_anns.append(
                {
                    "image_id": num,
                    "category_id": 1,
                    "segmentation": rle,
                    "score": float(image_scores[k]) if image_scores is not None else 1.0,
                }
            )
    if not gt_anns:
        return {"ap": float("nan"), "ap50": float("nan")}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        gt = COCO()
        gt.dataset = {"images": images, "annotations": gt_anns, "categories": [{"id": 1}]}
        gt.createIndex()
        dt = gt.loadRes(dt_anns) if dt_anns else None
        if dt is None:
            return {"ap": 0.0, "ap50": 0.0}
        ev = COCOeval(gt, dt, iouType="segm")
        ev.params.maxDets = [MAX_DETS]
        ev.params.areaRng = [ev.params.areaRng[0]]  # "all" only
        ev.params.areaRngLbl = ["all"]
        ev.evaluate()
        ev.accumulate()
    precision = ev.eval["precision"][:, :, 0, 0, 0]  # [T, recall points]

    def _mean(p: np.ndarray) -> float:
        valid = p[p > -1]
        return float(valid.mean()) if len(valid) else 0.0

    return {"ap": _mean(precision), "ap50": _mean(precision[0])}
