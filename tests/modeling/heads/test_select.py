"""The shared pieces of every head: test-time box selection, class-specific box lookup
and the mask targets cut from the ground truth."""

import torch

from cellstack.modeling.heads.base import mask_targets_for
from cellstack.modeling.heads.results import BoxPredictions
from cellstack.modeling.heads.select import BoxParams, select_detections
from cellstack.modeling.heads.stage import at_class


def _pred(probs, boxes):
    """BoxPredictions with class-specific boxes: background box zero, then per class."""
    probs = torch.tensor(probs, dtype=torch.float32)
    k, c1 = probs.shape
    per_class = torch.zeros(k, c1, 4)
    for i, b in enumerate(boxes):
        for c in range(1, c1):
            per_class[i, c] = torch.tensor(b, dtype=torch.float32) + (c - 1)  # class shifts
    return BoxPredictions(per_class[:, 1].clone(), probs, per_class)


def test_a_box_takes_its_best_class_and_that_class_box():
    pred = _pred([[0.1, 0.2, 0.7], [0.2, 0.6, 0.2]], [[0, 0, 10, 10], [40, 40, 50, 50]])
    boxes, scores, classes = select_detections(pred, BoxParams(score_thresh=0.05))
    order = scores.argsort(descending=True)
    assert classes[order].tolist() == [1, 0]  # 0-based class of the best probability
    assert torch.allclose(scores[order], torch.tensor([0.7, 0.6]))
    assert boxes[order][0].tolist() == [1, 1, 11, 11]  # class 2's box (shifted by 1)


def test_objectness_scores_a_cell_of_undecided_type_by_one_minus_background():
    # two types split 0.45 / 0.45: best class 0.45, but it is a cell with p = 0.9
    pred = _pred([[0.1, 0.45, 0.45]], [[0, 0, 10, 10]])
    _, by_class, _ = select_detections(pred, BoxParams(score_thresh=0.5))
    _, by_object, _ = select_detections(pred, BoxParams(score_thresh=0.5, score_mode="objectness"))
    assert len(by_class) == 0 and torch.allclose(by_object, torch.tensor([0.9]))


def test_nms_is_class_agnostic_and_the_cap_keeps_the_best():
    # the same cell scored as two classes: one box survives, whatever the class
    pred = _pred(
        [[0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.3, 0.7, 0.0], [0.4, 0.6, 0.0]],
        [[0, 0, 10, 10], [-1, -1, 9, 9], [30, 30, 40, 40], [60, 60, 70, 70]],
    )
    boxes, scores, _ = select_detections(pred, BoxParams(score_thresh=0.05, nms_iou=0.5))
    assert len(boxes) == 3 and scores[0] == 0.8
    boxes, scores, _ = select_detections(pred, BoxParams(nms_iou=0.5, max_detections=2))
    assert torch.allclose(scores, torch.tensor([0.8, 0.7]))


def test_degenerate_and_low_boxes_are_dropped():
    pred = _pred([[0.1, 0.9, 0.0], [0.9, 0.1, 0.0]], [[5, 5, 5, 9], [0, 0, 10, 10]])
    boxes, _, _ = select_detections(pred, BoxParams(score_thresh=0.2))
    assert len(boxes) == 0  # a zero-width box, and one under the threshold


def test_at_class_reads_class_specific_and_agnostic_boxes():
    boxes = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)
    labels = torch.tensor([2, 1])
    assert torch.equal(at_class(boxes, labels), torch.stack([boxes[0, 2], boxes[1, 1]]))
    agnostic = boxes[:, :1]
    assert torch.equal(at_class(agnostic, labels), agnostic[:, 0])


def test_mask_targets_are_the_truth_cut_to_each_box_at_the_head_size():
    gt = torch.zeros(2, 32, 32, dtype=torch.uint8)
    gt[0, 4:12, 4:12] = 1  # an 8 x 8 square
    gt[1, 16:32, 0:16] = 1
    boxes = torch.tensor([[4.0, 4.0, 12.0, 12.0], [0.0, 0.0, 8.0, 8.0], [0.0, 16.0, 16.0, 32.0]])
    matched = torch.tensor([0, 0, 1])
    t = mask_targets_for(gt, matched, boxes, 14)
    assert t.shape == (3, 14, 14) and t.dtype == torch.float32
    assert t[0].all() and t[2].all()  # the box holds the whole cell: all foreground
    # a box over the square's top-left quarter: the lower-right part is foreground
    assert t[1, :7, :7].sum() == 0 and t[1, 8:, 8:].all()
    assert mask_targets_for(gt, matched[:0], boxes[:0], 14).shape == (0, 14, 14)
