from pathlib import Path

import numpy as np
import pytest
import torch

from cellstack.data import rle
from cellstack.data.masks import pixels_to_sparse, sparse_from_labels
from cellstack.data.records import ImageRecord
from cellstack.errors import CellstackError
from cellstack.evaluation.metric import score_image
from cellstack.inference.postprocess import PostprocessParams, convex_refill, postprocess
from cellstack.inference.thresholds import Thresholds
from cellstack.inference.tune import TuneGrid, calibrate, score_grid
from cellstack.structures import Instances

SIZE = (64, 80)


def _scene(seed=0):
    """Truth: four 10x10 cells. Detections: each cell (scores .45-.9), a shifted
    duplicate of each (score .35), two small false positives (.5 and .25)."""
    rng = np.random.default_rng(seed)
    truth = np.zeros(SIZE, np.int32)
    boxes, scores = [], []
    for i, (y, x) in enumerate([(5, 5), (5, 40), (35, 10), (40, 60)]):
        truth[y : y + 10, x : x + 10] = i + 1
        boxes += [[x, y, x + 10, y + 10], [x + 3, y + 2, x + 13, y + 12]]
        scores += [0.45 + 0.15 * i, 0.35]
    boxes += [[70, 2, 74, 6], [30, 30, 33, 33]]
    scores += [0.5, 0.25]
    n = len(boxes)
    masks = torch.ones(n, 28, 28) * 0.9
    masks += torch.from_numpy(rng.normal(0, 0.02, (n, 28, 28))).float()
    raw = Instances(
        SIZE,
        boxes=torch.tensor(boxes, dtype=torch.float32),
        scores=torch.tensor(scores),
        classes=torch.tensor([1] * (n - 1) + [0]),
        roi_masks=masks,
    )
    return raw, truth


def test_fast_grid_equals_full_postprocessing():
    raw, truth = _scene()
    grid = TuneGrid(
        mask_offset=(-0.1, 0.0, 0.15),
        mask_nms_iou=(0.05, 0.3),
        min_size=(0, 20),
        score_thresh=(0.2, 0.4, 0.7),
    )
    fast = score_grid(raw, sparse_from_labels(truth), grid)
    assert list(fast) == grid.points() and len(fast) == 36 and len(set(fast.values())) > 3
    for (mt, off, nms, ms, st), value in fast.items():
        params = PostprocessParams(mt, st, nms, ms, mask_offset=off)
        cells = postprocess(raw, params)
        slow = score_image(truth, pixels_to_sparse(cells.pixels, SIZE), shape=SIZE).score
        assert value == pytest.approx(slow, abs=1e-12), (off, nms, ms, st)


def test_tune_improves_on_bad_thresholds_and_never_lowers_the_score():
    raws, records = [], []
    for seed in range(3):
        raw, truth = _scene(seed)
        raws.append(raw)
        rles = rle.encode_labels(truth)[1]
        records.append(ImageRecord(f"im{seed}", Path("x.png"), *SIZE, cell_type="astro", rles=rles))
    bad = Thresholds(PostprocessParams(score_thresh=0.85, mask_nms_iou=0.9))
    result = calibrate(lambda _: raws, records, ("cort", "astro"), bad, progress=False)
    assert result.after > result.before
    assert result.after == pytest.approx(1.0)  # the grid can drop every false positive
    tuned = result.thresholds.per_type["astro"]
    # Duplicates (score 0.35) overlap their cell with IoU 56/144 = 0.39; the false
    # positives are 9-16 px with scores 0.25 and 0.5 (the true cells score 0.45 and up).
    assert tuned.mask_nms_iou < 0.39 or tuned.score_thresh > 0.35
    assert tuned.min_size > 16 or tuned.score_thresh > 0.5
    # Of the points that reach 1.0, the nearest to the current thresholds: a confidence
    # of 0.45 drops the duplicates, so the mask NMS stays where it was.
    assert tuned.score_thresh == 0.45 and tuned.mask_nms_iou == 0.9
    again = calibrate(lambda _: raws, records, ("cort", "astro"), result.thresholds, progress=False)
    assert again.after >= again.before == pytest.approx(result.after)


def test_thresholds_follow_the_majority_type_and_reject_unknown_keys():
    t = Thresholds(PostprocessParams(), {"astro": PostprocessParams(score_thresh=0.7)})
    assert t.for_classes(np.array([1, 1, 0]), ["cort", "astro"]).score_thresh == 0.7
    assert t.for_classes(np.array([0, 0, 1]), ["cort", "astro"]).score_thresh == 0.3
    assert t.for_classes(np.array([], int), ["cort", "astro"]).score_thresh == 0.3
    assert Thresholds.from_dict(t.to_dict()) == t
    with pytest.raises(CellstackError, match=r"t.yaml: unknown config key per_type.astro.score"):
        Thresholds.from_dict({"per_type": {"astro": {"score": 1}}}, "t.yaml")


def test_convex_refill_keeps_convex_masks_and_changes_concave_ones():
    # A U open at the top: rows through its arms cross the contour four times.
    c_shape = np.zeros((20, 20), bool)
    c_shape[2:18, 2:6] = c_shape[2:18, 14:18] = c_shape[14:18, 2:18] = True
    square = np.zeros((20, 20), bool)
    square[5:9, 10:15] = True
    pix = [np.flatnonzero(c_shape), np.flatnonzero(square)]
    filled, same = convex_refill(pix, (20, 20))
    assert np.array_equal(same, pix[1])
    # cv2.fillConvexPoly on a non-convex contour: the original's "corrupt astro" output,
    # which mimics the broken official astro annotations, not a clean fill.
    assert not np.array_equal(filled, pix[0]) and 0 < len(filled) < 16 * 16


def test_tune_scores_what_predict_applies_with_tied_scores():
    """Tied scores between overlapping detections: mask NMS keeps whichever comes first,
    so tune and predict must order them alike (a stable sort, detection order), and tune
    must score with the metric's own code."""
    truth = np.zeros(SIZE, np.int32)
    boxes, scores = [], []
    for i, (y, x) in enumerate([(5, 5), (5, 40), (35, 10), (40, 60), (20, 25)]):
        truth[y : y + 10, x : x + 10] = i + 1
        # The poor (shifted) box is listed first, with the same score as the good one.
        boxes += [[x + 4, y + 3, x + 14, y + 13], [x, y, x + 10, y + 10]]
        scores += [0.6, 0.6]
    n = len(boxes)
    raw = Instances(
        SIZE,
        boxes=torch.tensor(boxes, dtype=torch.float32),
        scores=torch.tensor(scores),
        classes=torch.zeros(n, dtype=torch.int64),
        roi_masks=torch.ones(n, 28, 28) * 0.9,
    )
    grid = TuneGrid(mask_nms_iou=(0.05, 0.5), min_size=(0,), score_thresh=(0.5,))
    fast = score_grid(raw, sparse_from_labels(truth), grid)
    for (mt, _, nms, ms, st), value in fast.items():
        cells = postprocess(raw, PostprocessParams(mt, st, nms, ms))
        slow = score_image(truth, pixels_to_sparse(cells.pixels, SIZE), shape=SIZE).score
        assert value == slow, (nms, value, slow)
    # With the strict NMS the first of each tie (the shifted box) survives, every time.
    strict = postprocess(raw, PostprocessParams(0.45, 0.5, 0.05, 0))
    np.testing.assert_array_equal(strict.boxes[:, 0], np.array(boxes)[0::2, 0])


def test_a_run_trained_at_a_scale_is_tuned_on_its_images_at_that_scale(base_run, base_data):
    """``data.scale`` (what finetuning from a built-in sets): tuning must see the images
    as prediction resizes them, and the truth at the same pixels."""
    from dataclasses import replace

    from cellstack.data.dataset import load_sample
    from cellstack.data.sartorius import read_train_csv
    from cellstack.inference.predict import raw_predictions
    from cellstack.inference.sources import load_source
    from cellstack.inference.tune import truth_at

    src = load_source(base_run, ("predict.score_thresh=0",))
    src = replace(src, cfg=replace(src.cfg, data=replace(src.cfg.data, scale=0.5)))
    records = read_train_csv(base_data / "train.csv")
    raws = raw_predictions(src, records, device="cpu", progress=False)
    for raw, rec in zip(raws, records, strict=True):
        h, w = (round(d * 0.5) for d in rec.shape)
        assert raw.image_size == (h, w) and len(raw) > 0
        truth = truth_at(rec, raw.image_size)
        assert truth.shape == (len(rec.rles), h * w)
        # Nearest-neighbour halving keeps about a quarter of each cell's pixels.
        full = load_sample(rec)[1]
        assert abs(truth.sum() - (full > 0).sum() / 4) < 0.1 * (full > 0).sum() / 4
        assert truth_at(rec, rec.shape).shape == (len(rec.rles), rec.shape[0] * rec.shape[1])
    result = calibrate(lambda _: raws, records, src.class_names, src.thresholds, progress=False)
    assert result.after >= result.before


def _disk(size, centre, radius):
    yy, xx = np.mgrid[: size[0], : size[1]]
    return np.flatnonzero((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2)


def test_an_outline_offset_grows_and_shrinks_by_a_share_of_each_cells_diameter():
    from cellstack.inference.postprocess import offset_masks

    size = (60, 60)
    small, large = _disk(size, (15, 15), 5), _disk(size, (35, 35), 12)
    grown, same, shrunk = offset_masks([small, large], size, (0.1, 0.0, -0.1))
    assert same[0] is small and same[1] is large
    for before, g, s in zip([small, large], grown, shrunk, strict=True):
        d = 2 * np.sqrt(len(before) / np.pi)
        assert set(before) <= set(g) and set(s) <= set(before)
        # The radius moves by 0.1 d either way: area (r +- 0.1 d)^2 / r^2 of the disk's.
        for mask, sign in ((g, 1), (s, -1)):
            expected = len(before) * ((d / 2 + sign * 0.1 * d) / (d / 2)) ** 2
            assert abs(len(mask) - expected) < 0.15 * expected
    # A cell cut by the image border stays cut there: shrinking keeps the border row.
    edge = _disk(size, (0, 30), 8)
    ((cut,),) = offset_masks([edge], size, (-0.1,))
    assert np.any(cut < size[1]) and len(cut) < len(edge)
    assert offset_masks([np.zeros(0, np.int64)], size, (0.2,))[0][0].size == 0
    with pytest.raises(CellstackError, match="default.mask_offset out of range: 0.6"):
        Thresholds(PostprocessParams(mask_offset=0.6))  # the config's rule, where made


def test_leave_one_image_out_scores_each_image_with_what_the_others_chose():
    from cellstack.inference.tune import _Scored, choose

    grid = TuneGrid(mask_nms_iou=(0.1,), score_thresh=(0.3, 0.6))
    points = grid.points()  # two points: score 0.3 and score 0.6
    # Images 0 and 1 prefer 0.3, image 2 prefers 0.6; at the second scale every image
    # scores 0.1 more.
    base = np.array([[0.8, 0.5], [0.7, 0.6], [0.2, 0.9]])
    current = Thresholds(PostprocessParams(score_thresh=0.3))
    scored = [_Scored(1.0, [None] * 3, base), _Scored(1.5, [None] * 3, base + 0.1)]
    assert len(points) == 2
    result = choose(scored, grid, current)
    assert result.before == pytest.approx(np.mean([0.8, 0.7, 0.2]))
    # 0.6 has the better mean (0.767 against 0.667 at scale 1.5), but two images of three
    # prefer 0.3: within noise, so the current 0.3 stays. Scale 1.5 is better on every
    # image: it is taken.
    assert result.thresholds.default.score_thresh == 0.3 and not result.kept
    assert result.scale == 1.5 and result.scale_before == 1.0
    assert result.after == pytest.approx(np.mean([0.9, 0.8, 0.3]))
    # Left out, each image is scored with what the other two chose (0.3 at scale 1.5).
    assert result.loo == pytest.approx(np.mean([0.9, 0.8, 0.3]))
    assert result.estimated_gain == pytest.approx(0.1)
    assert "leave-one-image-out score" in result.table() and "scale 1.5" in result.table()
    assert "estimated gain +0.1000" in result.table()


def test_without_evidence_of_a_gain_the_models_thresholds_are_kept():
    from cellstack.inference.tune import _Scored, choose

    grid = TuneGrid(mask_nms_iou=(0.1,), score_thresh=(0.3, 0.6, 0.9))
    current = Thresholds(PostprocessParams(score_thresh=0.3, mask_nms_iou=0.1))
    # One image loves 0.9, two mildly dislike it: the best mean is luck.
    lucky = np.array([[0.5, 0.5, 0.95], [0.5, 0.5, 0.4], [0.5, 0.5, 0.4]])
    result = choose(
        [_Scored(1.0, [None] * 3, lucky), _Scored(1.2, [None] * 3, lucky)], grid, current
    )
    assert result.kept and result.thresholds == current and result.scale == 1.0
    assert result.after == result.before == pytest.approx(0.5)
    assert "kept the model's thresholds" in result.table()
    # No signal at all (every point scores 0, as on an image with no cells or no
    # signal): nothing moves.
    flat = choose([_Scored(1.0, [None] * 4, np.zeros((4, 3)))], grid, current)
    assert flat.kept and flat.thresholds == current and flat.estimated_gain == 0
    # One unit: no estimate, nothing moves.
    one = choose([_Scored(1.0, [None], lucky[:1])], grid, current)
    assert one.kept and np.isnan(one.loo) and "no estimate" in one.table()
    assert "leave-one-image-out" not in one.table()


def test_one_image_is_searched_as_its_four_quadrants():
    from cellstack.inference.tune import quadrants, score_images

    raw, truth = _scene()
    sparse = sparse_from_labels(truth)
    parts = quadrants(raw, sparse)
    assert len(parts) == 4
    # Every detection and every true cell lands in exactly one quadrant, whole.
    assert sum(len(r) for r, _ in parts) == len(raw)
    assert sum(t.shape[0] for _, t in parts) == sparse.shape[0] == 4
    assert all(t.shape[1] == sparse.shape[1] for _, t in parts)
    grid = TuneGrid(mask_nms_iou=(0.3,), score_thresh=(0.3, 0.6))
    current = Thresholds(PostprocessParams(score_thresh=0.3))
    scored = score_images([raw], [sparse], ("cort", "astro"), current, grid, progress=False)
    assert scored.units == "tiles" and scored.scores.shape == (4, 2)
    result = calibrate(lambda _: [raw], [sparse], ("cort", "astro"), current, grid, progress=False)
    assert result.units == "tiles" and not np.isnan(result.loo)
    assert "leave-one-tile-out" in result.table()


def test_candidate_scales_start_at_the_models_own_and_centre_on_the_labels_size():
    from cellstack.inference.tune import candidate_scales

    # Labels' cells half the model's size: centred on 2x, the model's own scale first.
    scales = candidate_scales(1.0, 30.0, 15.0)
    assert scales[0] == 1.0 and 2.0 in scales and len(scales) == 4
    assert candidate_scales(1.0, 30.0, 30.0) == (1.0, round(2**-0.25, 4), round(2**0.25, 4))
    assert candidate_scales(1.0, None, 15.0)[0] == 1.0  # unknown size: around its own
    assert max(candidate_scales(1.0, 30.0, 0.1)) == 16.0  # within the resize limits


def test_the_api_and_the_folder_calibrate_the_same_images_alike(base_run, base_data):
    """One calibration routine: ``Segmenter.optimize_thresholds`` on arrays and
    ``cellstack tune``'s search on the folder give one result, scale search included."""
    import cellstack
    from cellstack.data.dataset import load_sample
    from cellstack.data.sartorius import read_train_csv
    from cellstack.inference.calibration import calibrate_source
    from cellstack.inference.sources import load_source

    records = read_train_csv(base_data / "train.csv")[:2]
    folder = calibrate_source(load_source(base_run), records, device="cpu", progress=False)
    samples = [load_sample(r) for r in records]
    seg = cellstack.Segmenter.load(base_run, device="cpu")
    _, api = seg.optimize_thresholds([s[0] for s in samples], [s[1] for s in samples])
    assert len(folder.scales) > 1  # the scale was searched
    assert api.scales == folder.scales and api.scale == folder.scale
    assert api.thresholds == folder.thresholds
    assert api.before == pytest.approx(folder.before) and api.after == pytest.approx(folder.after)
