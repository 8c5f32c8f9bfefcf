import numpy as np
import pytest

from cellstack.data.images import write_png
from cellstack.data.labelfolders import read_label_dir
from cellstack.data.labels import read_label_image, write_label_tiff
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


def test_stardist_and_cellpose_layouts_load_alike(tmp_path, rng):
    from cellstack.data.layouts import load_dataset, load_predictions

    labels = random_labels(rng, (20, 30))
    image = (labels * 9 % 255).astype(np.uint8)
    # StarDist: images/ + masks/; Cellpose: a flat folder of X.tif beside X_masks.tif.
    write_png(tmp_path / "sd" / "images" / "a.png", image)
    write_label_tiff(tmp_path / "sd" / "masks" / "a.tif", labels)
    write_png(tmp_path / "cp" / "a.png", image)
    write_label_tiff(tmp_path / "cp" / "a_masks.tif", labels)
    for root in (tmp_path / "sd", tmp_path / "cp"):
        (rec,) = load_dataset(root)
        assert rec.image_id == "a" and rec.shape == (20, 30)
        np.testing.assert_array_equal(rec.label_image(), labels)
    # Cellpose's own predictions (X_cp_masks.png) score as predictions.
    write_png(tmp_path / "cp_out" / "a_cp_masks.png", labels.astype(np.uint16))
    preds = load_predictions(tmp_path / "cp_out", [rec])
    assert preds["a"].shape[0] == len(np.unique(labels)) - 1
    # Two candidate truths for one image, or both labels/ and masks/: an error, not a pick.
    write_label_tiff(tmp_path / "cp" / "a_cp_masks.tif", labels)
    with pytest.raises(DataError, match="a_masks.tif and a_cp_masks.tif both label image 'a'"):
        load_dataset(tmp_path / "cp")
    write_label_tiff(tmp_path / "sd" / "labels" / "a.tif", labels)
    with pytest.raises(DataError, match="both labels/ and masks/"):
        load_dataset(tmp_path / "sd")


def test_label_dtypes_and_stack_axes(tmp_path):
    import tifffile

    stack = np.arange(2 * 6 * 7, dtype=np.int64).reshape(2, 6, 7)
    write_label_tiff(tmp_path / "s.tif", stack, axes="ZYX")
    with tifffile.TiffFile(tmp_path / "s.tif") as tif:
        assert tif.series[0].axes == "ZYX" and tif.series[0].dtype == np.int32
        np.testing.assert_array_equal(tif.asarray(), stack)
    with pytest.raises(DataError, match="70000 objects do not fit uint16"):
        write_label_tiff(tmp_path / "b.tif", np.full((2, 2), 70000), dtype="uint16")
    assert not (tmp_path / "b.tif").exists()
