import contextlib
import io

import numpy as np
import pytest

from cellstack.data.masks import sparse_from_labels
from cellstack.evaluation.coco_ap import mask_ap
from tests.conftest import random_labels
from tests.evaluation.test_metric import perturb


def pycocotools_direct(truths, preds, scores):
    """COCO mask AP computed the usual way: dense masks, Fortran-order RLEs."""
    from pycocotools import mask as mu
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, gts, dts = [], [], []
    for k, (t, p) in enumerate(zip(truths, preds, strict=True), start=1):
        images.append({"id": k, "height": t.shape[0], "width": t.shape[1]})
        for i in np.unique(t[t > 0]):
            r = mu.encode(np.asfortranarray((t == i).astype(np.uint8)))
            gts.append(
                {
                    "id": len(gts) + 1,
                    "image_id": k,
                    "category_id": 1,
                    "segmentation": r,
                    "area": float(mu.area(r)),
                    "bbox": mu.toBbox(r).tolist(),
                    "iscrowd": 0,
                }
            )
        for n, i in enumerate(np.unique(p[p > 0])):
            r = mu.encode(np.asfortranarray((p == i).astype(np.uint8)))
            dts.append(
                {
                    "image_id": k,
                    "category_id": 1,
                    "segmentation": r,
                    "score": float(scores[k - 1][n]),
                }
            )
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": images, "annotations": gts, "categories": [{"id": 1}]}
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(dts), iouType="segm")
        ev.params.maxDets = [3000]
        ev.params.areaRng = [ev.params.areaRng[0]]
        ev.params.areaRngLbl = ["all"]
        ev.evaluate()
        ev.accumulate()
    prec = ev.eval["precision"][:, :, 0, 0, 0]
    return prec[prec > -1].mean(), prec[0][prec[0] > -1].mean()


def test_same_as_pycocotools_on_dense_masks(rng):
    truths = [random_labels(rng, (30, 44), 12) for _ in range(3)]
    preds = [perturb(t, rng) for t in truths]
    scores = [rng.random(len(np.unique(p)) - 1) for p in preds]
    got = mask_ap(
        {str(k): sparse_from_labels(t) for k, t in enumerate(truths)},
        {str(k): sparse_from_labels(p) for k, p in enumerate(preds)},
        {str(k): t.shape for k, t in enumerate(truths)},
        {str(k): s for k, s in enumerate(scores)},
    )
    ap, ap50 = pycocotools_direct(truths, preds, scores)
    assert got["ap"] == pytest.approx(ap, abs=1e-9)
    assert got["ap50"] == pytest.approx(ap50, abs=1e-9)
    assert 0 < got["ap"] < got["ap50"] <= 1


def test_perfect_and_empty(rng):
    t = random_labels(rng, (20, 20), 5)
    s = sparse_from_labels(t)
    assert mask_ap({"a": s}, {"a": s}, {"a": t.shape}) == {"ap": 1.0, "ap50": 1.0}
    assert mask_ap({"a": s}, {}, {"a": t.shape}) == {"ap": 0.0, "ap50": 0.0}
    empty = sparse_from_labels(np.zeros((20, 20), np.int32))
    assert np.isnan(mask_ap({"a": empty}, {"a": s}, {"a": t.shape})["ap"])
