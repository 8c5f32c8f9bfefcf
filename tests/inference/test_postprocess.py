import numpy as np
import pytest
import torch

from cellstack.inference.postprocess import (
    PostprocessParams,
    mask_nms,
    paste_masks,
    pixels_to_labels,
    postprocess,
    remove_overlaps,
)
from cellstack.structures import Instances


def _flat(ys, xs, w):
    return np.sort((np.asarray(ys) * w + np.asarray(xs)).ravel())


def test_paste_full_box_mask_covers_exactly_the_box_pixels():
    boxes = torch.tensor([[2.0, 3.0, 7.0, 5.0]])  # columns 2..6, rows 3..4
    pixels = paste_masks(torch.ones(1, 28, 28), boxes, (10, 12), 0.5)[0]
    ys, xs = np.mgrid[3:5, 2:7]
    np.testing.assert_array_equal(np.sort(pixels), _flat(ys, xs, 12))


def test_paste_left_half_and_clipping():
    mask = torch.zeros(1, 28, 28)
    mask[:, :, :14] = 1.0
    pixels = paste_masks(mask, torch.tensor([[0.0, 0.0, 8.0, 4.0]]), (4, 8), 0.5)[0]
    ys, xs = np.mgrid[0:4, 0:4]
    np.testing.assert_array_equal(np.sort(pixels), _flat(ys, xs, 8))
    outside = paste_masks(
        torch.ones(1, 28, 28), torch.tensor([[-5.0, -5.0, 2.0, 2.0]]), (4, 8), 0.5
    )
    assert sorted(outside[0].tolist()) == [0, 1, 8, 9]


def test_mask_nms_and_overlap_removal():
    size = (4, 10)
    a = np.arange(0, 6)  # row 0, columns 0..5
    b = np.arange(1, 6)  # almost the same cell: IoU 5/6
    c = np.arange(4, 9)  # overlaps a at 4, 5: IoU 2/9
    assert mask_nms([a, b, c], size, 0.5).tolist() == [0, 2]
    assert mask_nms([a, b, c], size, 0.1).tolist() == [0]
    kept = remove_overlaps([a, c], size)
    assert kept[1].tolist() == [6, 7, 8]
    labels = pixels_to_labels(kept, size)
    assert labels[0, :9].tolist() == [1, 1, 1, 1, 1, 1, 2, 2, 2]


def test_postprocess_order_and_thresholds():
    roi = torch.ones(4, 28, 28)
    inst = Instances(
        (20, 20),
        boxes=torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11], [12, 12, 14, 14], [15, 0, 20, 5]]),
        scores=torch.tensor([0.6, 0.9, 0.8, 0.1]),
        labels=torch.tensor([0, 1, 0, 2]),
        roi_masks=roi,
    )
    out = postprocess(
        inst, PostprocessParams(mask_thresh=0.5, score_thresh=0.3, mask_nms_iou=0.5, min_size=5)
    )
    # Sorted by score; box 0 suppressed by the more confident box 1; the 2x2 cell is under
    # min_size; the 0.1 score is under the threshold.
    assert out.scores.tolist() == pytest.approx([0.9])
    assert out.labels.tolist() == [1]
    assert len(out.pixels[0]) == 100
    empty = postprocess(inst[np.zeros(4, bool)], PostprocessParams())
    assert len(empty) == 0
