import numpy as np
import pytest

from cellstack.data.images import write_png
from cellstack.data.labels import read_label_dir, read_label_image, write_label_tiff
from cellstack.errors import DataError
from tests.conftest import random_labels


def test_label_dir_round_trip(tmp_path, rng):
    labels = random_labels(rng, (20, 30), 6)
    write_png(tmp_path / "images" / "x1.png", np.zeros((20, 30), np.uint8))
    write_label_tiff(tmp_path / "labels" / "x1.tif", labels)
    (tmp_path / "cell_types.csv").write_text("id,cell_type\nx1,astro\n")
    (rec,) = read_label_dir(tmp_path)
    assert rec.image_id == "x1" and rec.shape == (20, 30) and rec.cell_type == "astro"
    np.testing.assert_array_equal(rec.label_image(), labels)
    assert rec.sparse_masks().shape == (len(np.unique(labels)) - 1, 600)


def test_label_tiff_keeps_many_ids(tmp_path):
    labels = np.arange(70000, dtype=np.int64).reshape(280, 250)
    write_label_tiff(tmp_path / "big.tif", labels)
    np.testing.assert_array_equal(read_label_image(tmp_path / "big.tif"), labels)


def test_missing_label_and_wrong_size(tmp_path):
    write_png(tmp_path / "images" / "a.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(DataError, match=r"a.png: no label image"):
        read_label_dir(tmp_path)
    write_label_tiff(tmp_path / "labels" / "a.tif", np.zeros((8, 9), np.uint16))
    (rec,) = read_label_dir(tmp_path)
    with pytest.raises(DataError, match=r"a.tif: label image is 9x8, the image is 8x8"):
        rec.label_image()


def test_colour_label_rejected(tmp_path):
    write_png(tmp_path / "rgb.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(DataError, match="single-channel"):
        read_label_image(tmp_path / "rgb.png")
