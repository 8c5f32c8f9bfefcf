import numpy as np
import pytest

from cellstack.data import rle
from cellstack.errors import DataError
from tests.conftest import random_labels


def test_known_encoding_is_row_major_and_one_indexed():
    mask = np.array([[0, 1, 1], [1, 0, 0]], dtype=bool)
    # pixels numbered 1..6 left to right, then top to bottom: 2,3 then 4
    assert rle.encode(mask) == "2 3"
    assert rle.encode(np.array([[1, 0, 1], [1, 0, 0]], bool)) == "1 1 3 2"
    np.testing.assert_array_equal(rle.decode("2 3", (2, 3)), mask)


@pytest.mark.parametrize("shape", [(1, 1), (7, 5), (64, 33)])
def test_round_trip_random_masks(shape, rng):
    for density in (0.0, 0.1, 0.5, 1.0):
        mask = rng.random(shape) < density
        np.testing.assert_array_equal(rle.decode(rle.encode(mask), shape), mask)


def test_encode_labels_matches_per_mask_encoding(rng):
    labels = random_labels(rng, (60, 70), 25)
    ids, rles = rle.encode_labels(labels)
    np.testing.assert_array_equal(ids, np.unique(labels[labels > 0]))
    for i, r in zip(ids, rles, strict=True):
        assert r == rle.encode(labels == i)
    relabelled = rle.rles_to_labels(rles, labels.shape)
    for k, i in enumerate(ids, start=1):
        np.testing.assert_array_equal(relabelled == k, labels == i)


def test_encode_labels_empty():
    ids, rles = rle.encode_labels(np.zeros((4, 4), np.int32))
    assert len(ids) == 0 and rles == []


def test_sparse_matches_dense(rng):
    labels = random_labels(rng, (30, 41), 9)
    ids, rles = rle.encode_labels(labels)
    sparse = rle.rles_to_sparse(rles, labels.shape)
    assert sparse.shape == (len(ids), labels.size)
    dense = sparse.toarray().reshape(len(ids), *labels.shape)
    for row, i in zip(dense, ids, strict=True):
        np.testing.assert_array_equal(row, labels == i)


def test_empty_rle_is_empty_mask():
    assert not rle.decode("", (3, 4)).any()
    assert rle.encode(np.zeros((3, 4), bool)) == ""


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1 2 3", "odd number"),
        ("1 2 x 3", "non-numeric RLE token 'x'"),
        ("0 2", "1-indexed"),
        ("1 0", "must be positive"),
        ("5 3 6 2", "unsorted or overlap"),
        ("10 5", "past the 4x3 image"),
    ],
)
def test_bad_rle_names_its_source(text, message):
    with pytest.raises(DataError, match=message) as err:
        rle.decode(text, (3, 4), where="train.csv row 7 (id abc)")
    assert "train.csv row 7 (id abc)" in str(err.value)
    assert "\n" not in str(err.value)


def test_run_touching_the_last_pixel_is_valid():
    mask = rle.decode("11 2", (3, 4))
    assert mask[2, 2] and mask[2, 3] and mask.sum() == 2
