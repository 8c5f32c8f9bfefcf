import numpy as np
import pytest
import scipy.sparse as sp
from scipy import ndimage

from cellstack.data.masks import sparse_from_labels
from cellstack.evaluation.matching import as_sparse, overlaps
from cellstack.evaluation.metric import IOU_THRESHOLDS, score_image
from tests.conftest import random_labels


def reference_score(truth: np.ndarray, pred: np.ndarray) -> float:
    """Straight from the definition, with one dense mask per object."""
    t_ids = [i for i in np.unique(truth) if i]
    p_ids = [i for i in np.unique(pred) if i]
    if not t_ids and not p_ids:
        return 1.0
    iou = np.zeros((len(t_ids), len(p_ids)))
    for a, i in enumerate(t_ids):
        for b, j in enumerate(p_ids):
            inter = np.logical_and(truth == i, pred == j).sum()
            union = np.logical_or(truth == i, pred == j).sum()
            iou[a, b] = inter / union
    values = []
    for t in np.arange(0.5, 1.0, 0.05):
        matches = iou > t
        tp = int(matches.any(axis=1).sum())
        fp = len(p_ids) - int(matches.any(axis=0).sum())
        fn = len(t_ids) - tp
        values.append(tp / (tp + fp + fn))
    return float(np.mean(values))


def perturb(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Drop, erode, dilate and shift some cells; add false positives."""
    out = np.zeros_like(labels)
    for i in np.unique(labels[labels > 0]):
        mask = labels == i
        r = rng.random()
        if r < 0.15:
            continue
        if r < 0.4:
            mask = ndimage.binary_erosion(mask) if mask.sum() > 8 else mask
        elif r < 0.6:
            mask = ndimage.binary_dilation(mask)
        elif r < 0.75:
            mask = np.roll(mask, 1, axis=1)
        out[mask & (out == 0)] = i
    out[rng.integers(0, 5) : rng.integers(6, 9), 0:3] = labels.max() + 1
    return out


def test_thresholds_are_the_competitions():
    np.testing.assert_allclose(
        IOU_THRESHOLDS, [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]
    )


@pytest.mark.parametrize("seed", range(8))
def test_matches_a_dense_reference(seed):
    rng = np.random.default_rng(seed)
    truth = random_labels(rng, (40, 50), 15)
    pred = perturb(truth, rng)
    got = score_image(truth, pred)
    assert got.score == pytest.approx(reference_score(truth, pred), abs=1e-12)
    assert 0 < got.score < 1


def test_identical_is_one_and_inputs_forms_agree(rng):
    truth = random_labels(rng, (30, 30), 10)
    assert score_image(truth, truth).score == 1.0
    ids = np.unique(truth[truth > 0])
    dense = np.stack([truth == i for i in ids])
    pred = perturb(truth, rng)
    s_label = score_image(truth, pred).score
    s_mixed = score_image(dense, sparse_from_labels(pred), shape=truth.shape).score
    assert s_label == s_mixed


def test_empty_edge_cases():
    empty = np.zeros((10, 10), np.int32)
    one = empty.copy()
    one[2:5, 2:5] = 1
    assert score_image(empty, empty).score == 1.0
    assert score_image(one, empty).score == 0.0
    assert score_image(empty, one).score == 0.0
    r = score_image(one, empty)
    assert list(r.fn) == [1] * 10 and list(r.tp) == [0] * 10


def test_iou_exactly_at_threshold_does_not_match():
    truth = np.zeros((4, 10), np.int32)
    truth[0, 0:4] = 1
    pred = np.zeros_like(truth)
    pred[0, 0:2] = 1  # IoU = 2/4 = 0.5: not > 0.5
    assert score_image(truth, pred).tp[0] == 0
    pred[0, 0:3] = 1  # IoU = 0.75: matches at 0.50..0.70, not at 0.75
    r = score_image(truth, pred)
    assert list(r.tp) == [1, 1, 1, 1, 1, 0, 0, 0, 0, 0]
    assert r.score == pytest.approx(0.5)


def test_overlapping_masks_count_each_object_once():
    # Two identical predictions over one truth: one TP, one FP at every threshold.
    t = np.zeros((1, 3, 3), bool)
    t[0, :2, :2] = True
    p = np.concatenate([t, t])
    r = score_image(t, p)
    assert list(r.tp) == [1] * 10 and list(r.fp) == [1] * 10
    assert r.score == pytest.approx(0.5)


def test_overlaps_sparse_iou():
    truth = np.zeros((5, 5), np.int32)
    truth[0:2, 0:2] = 1
    truth[3:5, 3:5] = 2
    pred = np.zeros_like(truth)
    pred[0:2, 0:3] = 7
    ov = overlaps(sparse_from_labels(truth), sparse_from_labels(pred))
    np.testing.assert_allclose(ov.dense(), [[4 / 6], [0.0]])


def test_size_mismatch_is_an_error():
    with pytest.raises(ValueError, match="image is 5x5"):
        as_sparse(np.zeros((4, 5), np.int32), (5, 5))
    with pytest.raises(ValueError, match="pixels"):
        as_sparse(sp.csr_matrix((1, 20), dtype=bool), (5, 5))


def test_matching_counts_objects_like_stardist():
    import cellstack

    truth = np.zeros((20, 20), np.int32)
    truth[0:5, 0:5], truth[10:15, 10:15], truth[0:4, 15:19] = 1, 2, 3
    pred = np.zeros_like(truth)
    pred[0:5, 0:5] = 7  # exact
    pred[10:15, 10:14] = 8  # IoU 0.8
    pred[17:19, 0:3] = 9  # nothing there
    m = cellstack.matching(truth, pred, thresh=0.5)
    assert (m.tp, m.fp, m.fn, m.n_true, m.n_pred) == (2, 1, 1, 3, 3)
    assert m.precision == m.recall == m.f1 == 2 / 3 and m.accuracy == 0.5
    assert cellstack.matching(truth, pred, thresh=0.85).tp == 1
    empty = np.zeros_like(truth)
    assert cellstack.matching(empty, empty).f1 == 1.0
    assert "matching" in dir(cellstack)


def test_prefix_scores_equal_scoring_each_prefix_and_disjoint_overlaps_the_product():
    import scipy.sparse as sp

    from cellstack.evaluation.matching import Overlaps, overlaps, overlaps_disjoint
    from cellstack.evaluation.metric import score_overlaps, score_prefixes

    rng = np.random.default_rng(0)
    size = (40, 50)
    truth = np.zeros(size, np.int32)
    pred = np.zeros(size, np.int32)
    for k in range(6):  # squares, predicted with random shifts (some poor, some missed)
        y, x = 2 + 12 * (k // 3), 2 + 15 * (k % 3)
        truth[y : y + 9, x : x + 9] = k + 1
        dy, dx = rng.integers(-3, 4, 2)
        pred[max(y + dy, 0) : y + dy + 9, max(x + dx, 0) : x + dx + 9] = k + 1
    t = sparse_from_labels(truth)
    pixels = [np.flatnonzero(pred == k + 1) for k in range(6)]
    fast = overlaps_disjoint(t, pixels)
    slow = overlaps(t, sparse_from_labels(pred))
    np.testing.assert_array_equal(fast.truth_idx, slow.truth_idx)
    np.testing.assert_array_equal(fast.pred_idx, slow.pred_idx)
    np.testing.assert_array_equal(fast.iou, slow.iou)
    counts = [0, 2, 4, 6]
    expected = [
        score_overlaps(
            Overlaps(
                6,
                k,
                slow.truth_idx[slow.pred_idx < k],
                slow.pred_idx[slow.pred_idx < k],
                slow.iou[slow.pred_idx < k],
            )
        ).score
        for k in counts
    ]
    np.testing.assert_array_equal(score_prefixes(slow, counts), expected)
    # Overlapping truth (two cells claim one prediction): the exact matching per prefix.
    both = sp.vstack([t, t[:1]]).tocsr()
    ov = overlaps(both, sparse_from_labels(pred))
    got = score_prefixes(ov, counts)
    want = [
        score_overlaps(
            Overlaps(
                7,
                k,
                ov.truth_idx[ov.pred_idx < k],
                ov.pred_idx[ov.pred_idx < k],
                ov.iou[ov.pred_idx < k],
            )
        ).score
        for k in counts
    ]
    np.testing.assert_array_equal(got, want)
