import numpy as np
import pytest

from cellstack.data import rle
from cellstack.data.sartorius import (
    read_submission,
    read_train_csv,
    write_submission,
    write_train_csv,
)
from cellstack.errors import DataError


def _row(image_id, annotation, **kw):
    base = {
        "id": image_id,
        "annotation": annotation,
        "width": 4,
        "height": 3,
        "cell_type": "cort",
        "sample_id": "s1",
    }
    return {**base, **kw}


def test_train_csv_round_trip(tmp_path):
    rows = [_row("a", "1 2"), _row("a", "6 3"), _row("b", "", cell_type="astro", sample_id="s2")]
    write_train_csv(tmp_path / "train.csv", rows)
    records = {r.image_id: r for r in read_train_csv(tmp_path / "train.csv")}
    assert records["a"].rles == ("1 2", "6 3")
    assert records["a"].shape == (3, 4)
    assert records["a"].image_path == tmp_path / "train" / "a.png"
    assert records["b"].rles == () and records["b"].cell_type == "astro"
    masks = records["a"].sparse_masks().toarray().reshape(2, 3, 4)
    np.testing.assert_array_equal(masks[0], rle.decode("1 2", (3, 4)))


def test_bad_rle_row_is_named(tmp_path):
    write_train_csv(tmp_path / "train.csv", [_row("a", "1 2"), _row("bad", "11 9")])
    with pytest.raises(DataError, match=r"train.csv row 2 \(id bad\).*past the 4x3 image"):
        read_train_csv(tmp_path / "train.csv")


def test_bad_size_and_inconsistent_rows(tmp_path):
    write_train_csv(tmp_path / "t1.csv", [_row("a", "1 2", width="wide")])
    with pytest.raises(DataError, match="row 1 .*width must be an integer"):
        read_train_csv(tmp_path / "t1.csv")
    write_train_csv(tmp_path / "t2.csv", [_row("a", "1 2"), _row("a", "5 1", cell_type="astro")])
    with pytest.raises(DataError, match="row 2 .*disagrees"):
        read_train_csv(tmp_path / "t2.csv")


def test_missing_columns_and_file(tmp_path):
    (tmp_path / "x.csv").write_text("id,foo\na,1\n")
    with pytest.raises(DataError, match="missing column"):
        read_train_csv(tmp_path / "x.csv")
    with pytest.raises(DataError, match="not found"):
        read_train_csv(tmp_path / "nope.csv")


def test_submission_round_trip_keeps_empty_images(tmp_path):
    preds = {"a": ["1 2", "5 3"], "empty": [], "b": ["3 1"]}
    write_submission(tmp_path / "submission.csv", preds)
    text = (tmp_path / "submission.csv").read_text().splitlines()
    assert text[0] == "id,predicted"
    assert "empty," in text
    assert read_submission(tmp_path / "submission.csv") == preds


def test_submission_needs_its_columns(tmp_path):
    (tmp_path / "s.csv").write_text("image,mask\na,1 2\n")
    with pytest.raises(DataError, match="needs columns id,predicted"):
        read_submission(tmp_path / "s.csv")
