"""Real microscopy files are read by their own axes or refused, never misread."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from cellstack.data.images import read_image, to_gray_uint8
from cellstack.errors import DataError


def _tif(path, array, **kw):
    tifffile.imwrite(path, array, **kw)
    return path


PLANE = np.arange(40 * 48, dtype=np.uint16).reshape(40, 48)
GRAY = {"photometric": "minisblack"}  # a plain TIFF of gray planes: axes Q, unnamed


@pytest.mark.parametrize(
    ("name", "array", "kw", "axes", "say"),
    [
        ("zstack", np.stack([PLANE] * 10), GRAY, "QYX", "axis Q (length 10, index 0) is not named"),
        (
            "two_channels",
            np.stack([PLANE] * 2),
            GRAY,
            "QYX",
            "--z-axis 0, --t-axis 0 or --c-axis 0",
        ),
        (
            "hyperstack",
            np.zeros((3, 2, 40, 48), np.uint16),
            {"imagej": True, "metadata": {"axes": "TCYX"}},
            "TCYX",
            "has 2 channels; choose one with channel=N in Python or --channel N",
        ),
        (
            "ome_cyx",
            np.stack([PLANE] * 2),
            {"ome": True, "metadata": {"axes": "CYX"}},
            "CYX",
            "has 2 channels",
        ),
    ],
)
def test_unresolved_stacks_are_refused_naming_shape_and_axes(
    cli, run, tmp_path, name, array, kw, axes, say
):
    """Z-stacks and time series with named axes are segmented plane by plane
    (tests/inference/test_segmenter.py); an unnamed axis or an unchosen channel is never
    guessed."""
    folder = tmp_path / "in"
    folder.mkdir()
    _tif(folder / f"{name}.tif", array, **kw)
    res = cli.fails("predict", run, folder, "--out", tmp_path / "p", match=f"{name}.tif")
    assert f"axes {axes!r}" in res.err and str(array.shape) in res.err and say in res.err
    assert not (tmp_path / "p").exists()


def test_training_reads_one_plane_per_file(tmp_path):
    path = _tif(tmp_path / "z.tif", np.stack([PLANE] * 3), imagej=True, metadata={"axes": "ZYX"})
    with pytest.raises(DataError, match="is not one 2-D image"):
        read_image(path)


def test_singleton_axes_are_one_plane(tmp_path):
    path = _tif(tmp_path / "a.tif", PLANE[None, None], imagej=True, metadata={"axes": "ZCYX"})
    np.testing.assert_array_equal(read_image(path), PLANE)


def test_nan_pixels_do_not_change_the_scaling(cli, run, tmp_path):
    rng = np.random.default_rng(0)
    img = rng.normal(100.0, 10.0, (40, 48)).astype(np.float32)
    holed = img.copy()
    holed[::7, ::5] = np.nan
    holed[3, 3] = np.inf
    gray = to_gray_uint8(holed)
    finite = np.isfinite(holed)
    # Same percentiles as the finite pixels alone would give.
    lo, hi = np.percentile(holed[finite].astype(np.float64), [0.5, 99.5])
    expect = np.clip(np.round((holed[finite] - lo) * 255 / (hi - lo)), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(gray[finite], expect)
    assert gray.max() == 255 and gray.min() == 0
    folder = tmp_path / "in"
    folder.mkdir()
    _tif(folder / "nan.tif", holed)
    assert cli("predict", run, folder, "--out", tmp_path / "p").code == 0


def test_eight_bit_gray_and_rgb_scale_alike():
    rng = np.random.default_rng(1)
    gray = rng.integers(90, 130, (30, 40)).astype(np.uint8)
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    np.testing.assert_array_equal(to_gray_uint8(rgb), to_gray_uint8(gray))


def test_every_dtype_of_the_same_pixels_scales_alike():
    """One normalisation rule: the same pixels as uint8, uint16 (x257), float 0-1 and
    float 0-255 give the same bytes, so the model sees the same image."""
    rng = np.random.default_rng(2)
    gray = rng.integers(20, 200, (30, 40)).astype(np.uint8)
    ref = to_gray_uint8(gray)
    assert ref.min() == 0 and ref.max() == 255  # 8-bit is stretched too now
    for other in (
        gray.astype(np.uint16) * 257,
        gray.astype(np.float32) / 255,
        gray.astype(np.float32),
        gray.astype(np.float64) / 255,
    ):
        np.testing.assert_array_equal(to_gray_uint8(other), ref, err_msg=str(other.dtype))


def test_truncated_png_is_a_prepare_problem(cli, data, tmp_path):
    victim = sorted((data / "train").glob("*.png"))[0]
    raw = victim.read_bytes()
    victim.write_bytes(raw[: len(raw) * 2 // 3])
    out = tmp_path / "prep"
    res = cli("prepare", "sartorius", data, "--out", out, "--quiet")
    assert res.code == 0
    assert victim.stem in (out / "problems.csv").read_text()
    assert victim.stem not in (out / "records.csv").read_text()


def test_multi_frame_gif_is_refused(cli, run, tmp_path):
    from PIL import Image

    folder = tmp_path / "in"
    folder.mkdir()
    frames = [Image.fromarray(np.full((20, 20), v, np.uint8)) for v in (10, 200)]
    frames[0].save(folder / "a.png", save_all=True, append_images=frames[1:])
    cli.fails("predict", run, folder, "--out", tmp_path / "p", match="2 frames")


def test_api_errors_name_the_api_arguments(base_run, tmp_path):
    import tifffile

    import cellstack
    from cellstack.errors import CellstackError

    seg = cellstack.Segmenter.load(base_run, device="cpu")
    two = np.stack([PLANE, PLANE], axis=-1).astype(np.uint16)  # YXC, two channels
    with pytest.raises(CellstackError, match="channel=N") as e:
        seg(np.moveaxis(two, -1, 0), axes="CYX")
    assert "channel=(0, 1)" in str(e.value)
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, np.stack([PLANE] * 3))
    with pytest.raises(CellstackError, match=r"spec=PlaneSpec\(z_axis=...\)\)$"):
        seg(path, axes="ZYX")
