from dataclasses import replace

import numpy as np
import pytest
import torch

from cellstack.data.masks import pixels_to_labels
from cellstack.inference.postprocess import (
    PostprocessParams,
    mask_nms,
    paste_masks,
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


def _paste_one(mask, box, size, threshold):
    """The definition: sample the mask at the centre of every pixel of its box."""
    import torch.nn.functional as F

    h, w = size
    x1, y1, x2, y2 = box.tolist()
    c0, c1 = max(int(np.floor(x1)), 0), min(int(np.ceil(x2)), w)
    r0, r1 = max(int(np.floor(y1)), 0), min(int(np.ceil(y2)), h)
    if c1 <= c0 or r1 <= r0:
        return np.zeros(0, dtype=np.int64)
    gx = (torch.arange(c0, c1) + 0.5 - x1) / max(x2 - x1, 1e-6) * 2 - 1
    gy = (torch.arange(r0, r1) + 0.5 - y1) / max(y2 - y1, 1e-6) * 2 - 1
    grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=-1)[None]
    probs = F.grid_sample(mask[None, None], grid, align_corners=False, padding_mode="border")
    ys, xs = np.nonzero(probs[0, 0].numpy() > threshold)
    return ((ys + r0) * w + xs + c0).astype(np.int64)


@pytest.mark.parametrize("chunk_pixels", [1, 500, 1 << 22])
def test_batched_paste_equals_pasting_one_mask_at_a_time(chunk_pixels):
    gen = torch.Generator().manual_seed(0)
    n, size = 300, (90, 120)
    xy = torch.rand(n, 2, generator=gen) * torch.tensor([140.0, 110.0]) - 10
    wh = torch.rand(n, 2, generator=gen) * 40 + 0.2
    boxes = torch.cat([xy, xy + wh], dim=1)
    boxes[5] = torch.tensor([200.0, 200.0, 210.0, 210.0])  # outside the image
    masks = torch.rand(n, 14, 14, generator=gen)
    pasted = paste_masks(masks, boxes, size, 0.5, chunk_pixels=chunk_pixels)
    assert len(pasted) == n and len(pasted[5]) == 0
    for k in range(n):
        np.testing.assert_array_equal(pasted[k], _paste_one(masks[k], boxes[k], size, 0.5))


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
        classes=torch.tensor([0, 1, 0, 2]),
        roi_masks=roi,
    )
    out = postprocess(
        inst, PostprocessParams(mask_thresh=0.5, score_thresh=0.3, mask_nms_iou=0.5, min_size=5)
    )
    # Sorted by score; box 0 suppressed by the more confident box 1; the 2x2 cell is under
    # min_size; the 0.1 score is under the threshold.
    assert out.scores.tolist() == pytest.approx([0.9])
    assert out.classes.tolist() == [1]
    assert len(out.pixels[0]) == 100
    empty = postprocess(inst[np.zeros(4, bool)], PostprocessParams())
    assert len(empty) == 0


def _grid_of_cells(scores: list[float], side: int = 40) -> Instances:
    """Touching 10x10 cells in rows across a ``side`` x ``side`` image, one per score."""
    boxes = [
        [10.0 * (k % 4), 10.0 * (k // 4), 10.0 * (k % 4) + 10, 10.0 * (k // 4) + 10]
        for k in range(len(scores))
    ]
    return Instances(
        (side, side),
        boxes=torch.tensor(boxes),
        scores=torch.tensor(scores),
        classes=torch.zeros(len(scores), dtype=torch.int64),
        roi_masks=torch.ones(len(scores), 28, 28),
    )


def test_a_confluent_image_keeps_its_cells_down_to_the_dense_confidence():
    """Touching cells score lower: where the confident cells cover dense_fraction of the
    image, cells are kept down to dense_score_thresh; in a sparse image the same
    low-scored detection is dropped, and without a dense confidence nothing changes."""
    params = PostprocessParams(
        mask_thresh=0.5,
        score_thresh=0.8,
        mask_nms_iou=0.5,
        dense_score_thresh=0.4,
        dense_fraction=0.25,
    )
    # 5 confident cells cover 500 of 1600 pixels (0.31): confluent.
    confluent = _grid_of_cells([0.9] * 5 + [0.5, 0.3])
    assert sorted(postprocess(confluent, params).scores.tolist()) == pytest.approx(
        [0.5] + [0.9] * 5
    )
    # 3 confident cells cover 300 of 1600 (0.19): sparse, the 0.5 cell is dropped.
    sparse = _grid_of_cells([0.9] * 3 + [0.5])
    assert postprocess(sparse, params).scores.tolist() == pytest.approx([0.9] * 3)
    plain = replace(params, dense_score_thresh=None)
    assert postprocess(confluent, plain).scores.tolist() == pytest.approx([0.9] * 5)
    assert params.lowest_score == 0.4 and plain.lowest_score == 0.8


def test_the_dense_confidence_is_a_checked_thresholds_key(tmp_path):
    from cellstack.errors import ConfigError
    from cellstack.inference.thresholds import read_thresholds

    path = tmp_path / "thresholds.yaml"
    path.write_text("default:\n  score_thresh: 0.8\n  dense_score_thresh: 0.4\n")
    assert read_thresholds(path).default.dense_score_thresh == 0.4
    path.write_text("default:\n  dense_fraction: 1.5\n")
    with pytest.raises(ConfigError, match="dense_fraction"):
        read_thresholds(path)


def test_cells_decided_at_the_model_scale_are_pasted_at_the_image_pixels():
    """A model that saw the image at half size: its masks are pasted again at full
    resolution (smooth disks, not 2x2 blocks), disjoint, with boxes scaled."""
    from cellstack.inference.postprocess import PostprocessParams, postprocess

    m = 28
    yy, xx = np.mgrid[:m, :m]
    disk = torch.tensor(((yy - 13.5) ** 2 + (xx - 13.5) ** 2 < 13.5**2).astype(np.float32))
    half = Instances(
        (20, 20),
        boxes=torch.tensor([[2.0, 2, 12, 12], [8, 8, 18, 18]]),
        scores=torch.tensor([0.9, 0.8]),
        classes=torch.tensor([0, 0]),
        roi_masks=torch.stack([disk, disk]),
    )
    params = PostprocessParams(mask_thresh=0.5, score_thresh=0.1, mask_nms_iou=0.9, min_size=0)
    small = postprocess(half, params)
    full = postprocess(half, params, (40, 40))
    assert full.image_size == (40, 40) and len(full) == len(small) == 2
    np.testing.assert_allclose(full.boxes, small.boxes * 2)
    assert len(np.intersect1d(full.pixels[0], full.pixels[1])) == 0
    # The first cell against its disk drawn at full resolution (box 4..24, the disk's
    # radius 13.5 of 28 mask cells): the re-pasted mask is closer than the half-size
    # mask with every pixel doubled.
    yy, xx = np.mgrid[:40, :40] + 0.5
    truth = (yy - 14) ** 2 + (xx - 14) ** 2 < (20 * 13.5 / 28) ** 2
    pasted = np.zeros(1600, bool)
    pasted[full.pixels[0]] = True
    blocks = np.zeros(400, bool)
    blocks[small.pixels[0]] = True
    blocks = np.kron(blocks.reshape(20, 20), np.ones((2, 2), bool))

    def iou(a, b):
        return (a & b).sum() / (a | b).sum()

    assert iou(pasted.reshape(40, 40), truth) > iou(blocks, truth)
    assert postprocess(half, params, (20, 20)).pixels[0].tolist() == small.pixels[0].tolist()
