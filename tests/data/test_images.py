import numpy as np
import pytest
import tifffile

from cellstack.data.images import image_size, read_image, to_gray_uint8, write_png, write_tiff
from cellstack.errors import DataError


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_png_and_tiff_round_trip(tmp_path, rng, dtype):
    img = rng.integers(0, np.iinfo(dtype).max, size=(13, 17)).astype(dtype)
    write_png(tmp_path / "a.png", img)
    write_tiff(tmp_path / "a.tif", img)
    for name in ("a.png", "a.tif"):
        back = read_image(tmp_path / name)
        assert back.dtype == dtype
        np.testing.assert_array_equal(back, img)
        assert image_size(tmp_path / name) == (13, 17)


def test_rgb_and_channel_first(tmp_path, rng):
    rgb = rng.integers(0, 255, size=(9, 11, 3)).astype(np.uint8)
    write_png(tmp_path / "rgb.png", rgb)
    assert read_image(tmp_path / "rgb.png").shape == (9, 11, 3)
    # Planar RGB says so in its tags (axes SYX) and reads as colour ...
    tifffile.imwrite(
        tmp_path / "planar.tif", np.moveaxis(rgb, -1, 0), photometric="rgb", planarconfig="separate"
    )
    np.testing.assert_array_equal(read_image(tmp_path / "planar.tif"), rgb)
    # ... three gray planes do not: the axes come from the file, never from the shape.
    tifffile.imwrite(tmp_path / "cf.tif", np.moveaxis(rgb, -1, 0), photometric="minisblack")
    with pytest.raises(DataError, match=r"shape \(3, 9, 11\) with axes 'QYX'"):
        read_image(tmp_path / "cf.tif")
    assert to_gray_uint8(rgb).shape == (9, 11)


def test_to_gray_rescales_16_bit():
    img = np.linspace(1000, 1400, 100).reshape(10, 10).astype(np.uint16)
    gray = to_gray_uint8(img)
    assert gray.dtype == np.uint8 and gray.min() == 0 and gray.max() == 255


def test_corrupt_empty_and_missing_files_name_the_file(tmp_path):
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    (tmp_path / "empty.tif").write_bytes(b"")
    for name, message in [
        ("corrupt.png", "cannot read image"),
        ("empty.tif", "empty"),
        ("missing.png", "not found"),
    ]:
        with pytest.raises(DataError, match=message) as err:
            read_image(tmp_path / name)
        assert name in str(err.value)
