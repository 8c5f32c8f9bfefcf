"""The Python API: arrays of any dtype and stacks in, labels and object tables out,
the same cells as ``cellstack predict`` writes."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import roifile
import tifffile

import cellstack
from cellstack.cli import main
from cellstack.data.images import read_image
from cellstack.errors import CellstackError
from cellstack.inference.result import TABLE_COLUMNS
from cellstack.inference.segmenter import Segmenter


@pytest.fixture(scope="module")
def seg(base_run):
    # A 2-iteration model: every detection is kept, so there are cells to check on any
    # CPU, whatever its kernels make of borderline scores.
    return cellstack.Segmenter.load(
        base_run, device="cpu", overrides=["predict.score_thresh=0", "predict.min_size=0"]
    )


@pytest.fixture(scope="module")
def plane(base_data):
    return read_image(sorted((base_data / "train").glob("*.png"))[0])


def test_an_array_of_any_dtype_gives_labels_and_a_table(seg, plane):
    result = seg(plane)
    assert result.labels.dtype == np.int32 and result.labels.shape == plane.shape
    n = len(result.instances)
    assert n > 0 and len(result) == n
    assert set(np.unique(result.labels)) == set(range(n + 1))
    t = result.table
    assert list(t)[: len(TABLE_COLUMNS)] == list(TABLE_COLUMNS)
    assert all(len(col) == n for col in t.values())
    for k in range(n):  # the table describes the label image
        ys, xs = np.nonzero(result.labels == t["label"][k])
        assert t["area"][k] == len(ys)
        assert t["centroid_y"][k] == pytest.approx(ys.mean())
        assert (t["bbox_y0"][k], t["bbox_x1"][k]) == (ys.min(), xs.max() + 1)
        assert t["cell_type"][k] in seg.class_names
    # Intensity scaling belongs to the segmenter: 16-bit, float and RGB give the same.
    as16 = plane.astype(np.uint16) * 200 + 1000
    np.testing.assert_array_equal(seg(as16.astype(np.float32)).labels, seg(as16).labels)
    rgb = np.repeat(plane[..., None], 3, axis=-1)
    np.testing.assert_array_equal(seg(rgb).labels, result.labels)


def test_stacks_give_label_stacks_of_the_same_leading_shape(seg, plane):
    single = seg(plane).labels
    stack = np.stack([plane, plane[::-1], plane])
    result = seg(stack, axes="ZYX")
    assert result.lead == "Z" and result.labels.shape == stack.shape
    # Planes are segmented one by one; ids run on across planes (one id, one object).
    n0 = single.max()
    np.testing.assert_array_equal(result.labels[0], single)
    np.testing.assert_array_equal(
        np.where(result.labels[2] > 0, result.labels[2] - (result.labels[1].max()), 0), single
    )
    assert len(np.unique(result.labels)) - 1 == len(result) == sum(map(len, result.planes))
    assert list(result.table["z"]) == sorted(result.table["z"]) and result.table["z"][n0] == 1
    with pytest.raises(AttributeError, match="result.planes"):
        result.instances
    # Channels are chosen, and several averaged; without a choice, a clear error.
    cyx = np.stack([plane, np.zeros_like(plane)])
    np.testing.assert_array_equal(seg(cyx, axes="CYX", channel=0).labels, single)
    with pytest.raises(CellstackError, match=r"has 2 channels; choose one"):
        seg(cyx, axes="CYX")
    with pytest.raises(CellstackError, match=r"needs its axes, e.g. axes='ZYX'"):
        seg(stack)
    with pytest.raises(CellstackError, match="channel 2 does not exist"):
        seg(cyx, axes="CYX", channel=2)


def test_segment_many_batches_arrays_and_files_alike(seg, plane, base_data):
    paths = sorted((base_data / "train").glob("*.png"))[:3]
    many = seg.segment_many(paths, progress=False)
    assert len(many) == 3
    np.testing.assert_array_equal(many[0].labels, seg(plane).labels)
    arrays = seg.segment_many([read_image(p) for p in paths], progress=False)
    for a, b in zip(many, arrays, strict=True):
        np.testing.assert_array_equal(a.labels, b.labels)


GRAY = {"photometric": "minisblack"}


def _tif(path, array, **kw):
    tifffile.imwrite(path, array, **kw)
    return path


def test_predict_reads_real_microscopy_files_by_their_axes(base_run, plane, tmp_path):
    """ZYX, CYX (2 channels), TYX, TCYX (an ImageJ hyperstack) and an OME-TIFF: each
    segmented plane by plane into labels of its leading shape, or refused naming axes."""
    p16 = plane.astype(np.uint16) * 100
    gray = GRAY
    files = {  # name: (array, tifffile arguments, leading shape and axes of the labels)
        "zyx": (np.stack([p16] * 3), {**gray, "metadata": {"axes": "ZYX"}}, (3,), "ZYX"),
        "tyx": (np.stack([p16] * 2), {"imagej": True, "metadata": {"axes": "TYX"}}, (2,), "TYX"),
        "cyx": (np.stack([p16, p16 // 2]), {**gray, "metadata": {"axes": "CYX"}}, (), "YX"),
        "hyper": (
            np.stack([np.stack([p16, p16 // 2])] * 2),
            {"imagej": True, "metadata": {"axes": "TCYX"}},
            (2,),
            "TYX",
        ),
        "ome": (
            np.stack([np.stack([p16, p16 // 2])] * 2),
            {"ome": True, "metadata": {"axes": "ZCYX"}},
            (2,),
            "ZYX",
        ),
    }
    channels = {"cyx", "hyper", "ome"}
    for name, (array, kw, _, _) in files.items():
        folder = tmp_path / ("multi" if name in channels else "single")
        folder.mkdir(exist_ok=True)
        _tif(folder / f"{name}.tif", array, **kw)
    # Several channels need a choice, refused before any output is written.
    predict = ["predict", str(base_run)]
    assert main([*predict, str(tmp_path / "multi"), "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()
    for folder, flags in (("multi", ["--channel", "0"]), ("single", [])):
        out = tmp_path / f"out_{folder}"
        args = [*predict, str(tmp_path / folder), "--out", str(out), "--quiet", "--save-rois"]
        assert main([*args, *flags]) == 0
    single = cellstack.Segmenter.load(base_run, device="cpu")(p16).labels
    for name, (_, _, lead_shape, axes) in files.items():
        out = tmp_path / ("out_multi" if name in channels else "out_single")
        labels = tifffile.imread(out / "labels" / f"{name}.tif")
        assert labels.shape == (*lead_shape, *plane.shape) and labels.dtype == np.int32
        with tifffile.TiffFile(out / "labels" / f"{name}.tif") as tif:
            assert tif.series[0].axes == axes
        np.testing.assert_array_equal(labels.reshape(-1, *plane.shape)[0], single)
        with open(out / "objects" / f"{name}.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert [int(r["label"]) for r in rows] == list(range(1, labels.max() + 1))
        entries = json.loads((out / "results.json").read_text())
        mine = [e for e in entries if e["image_id"] == name]
        assert [e["label_id"] for e in mine] == [int(r["label"]) for r in rows]
        rois = roifile.roiread(out / "rois" / f"{name}.zip")
        assert [r.name for r in rois] == [r["label"] for r in rows]
    # Kaggle rows exist for 2-D images only.
    with open(tmp_path / "out_multi" / "submission.csv", newline="") as f:
        assert {r["id"] for r in csv.DictReader(f)} == {"cyx"}


@pytest.mark.parametrize(
    ("array", "kw", "flags", "match"),
    [
        (np.zeros((4, 40, 48), np.uint16), GRAY, [], "axis Q (length 4, index 0) is not named"),
        (np.zeros((4, 40, 48), np.uint16), GRAY, ["--z-axis", "3"], "(--z-axis) 3 is out of range"),
        (np.zeros((40, 48), np.uint16), {}, ["--channel", "1"], "has no channel axis"),
    ],
)
def test_unresolvable_axes_are_one_line_errors(base_run, tmp_path, capsys, array, kw, flags, match):
    folder = tmp_path / "in"
    folder.mkdir()
    _tif(folder / "x.tif", array, **kw)
    args = ["predict", str(base_run), str(folder), "--out", str(tmp_path / "p"), *flags]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0] and "x.tif" in err[0]


def test_unnamed_axes_are_named_on_the_command_line(base_run, plane, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    _tif(folder / "q.tif", np.stack([plane] * 2), **GRAY)  # plain TIFF: axes QYX
    out = tmp_path / "p"
    args = ["predict", str(base_run), str(folder), "--out", str(out), "--t-axis", "0", "--quiet"]
    assert main(args) == 0
    with tifffile.TiffFile(out / "labels" / "q.tif") as tif:
        assert tif.series[0].axes == "TYX" and tif.series[0].shape == (2, *plane.shape)


def test_segmenter_arguments_are_checked_before_the_model_loads(tmp_path):
    with pytest.raises(CellstackError, match="not both"):
        Segmenter.load(tmp_path / "nowhere", diameter=20, scale=2)
    with pytest.raises(CellstackError, match="positive"):
        Segmenter.load(tmp_path / "nowhere", diameter=-1)


def test_fixed_normalisation_scales_every_image_alike(seg, plane):
    from cellstack.data.images import intensity_limits

    dim = (plane.astype(np.uint16) * 40).astype(np.uint16)  # 16-bit, as a camera writes
    limits = intensity_limits(dim)
    # Half of it alone would be stretched by its own percentiles; with the whole
    # image's limits it looks as it does inside the whole image.
    half = dim[:, : dim.shape[1] // 2]
    own = seg(half).image
    fixed = seg(half, normalize=limits).image
    whole = seg(dim).image[:, : dim.shape[1] // 2]
    assert np.array_equal(fixed, whole) and not np.array_equal(own, whole)
    for bad in ((1, 2, 3), "x", (0, float("nan")), False):
        with pytest.raises(TypeError, match="normalize must be True or a"):
            seg(plane, normalize=bad)


def test_raw_and_instances_take_the_planes_the_model_sees(seg, plane):
    result = seg(plane)
    (cells,) = seg.instances([result.image])
    assert len(cells) == len(result) > 0
    pairs = zip(cells.pixels, result.instances.pixels, strict=True)
    assert all(np.array_equal(a, b) for a, b in pairs)
    (raw,) = seg.raw([result.image])
    assert raw.has("roi_masks") and len(raw) >= len(cells)


def test_settings_per_call_apply_to_that_call_only(seg, plane):
    from cellstack.errors import CellstackError

    every = seg(plane)
    strict = seg(plane, score_thresh=0.99)
    assert len(strict) < len(every) and len(seg(plane)) == len(every)
    assert all(s >= 0.99 for s in strict.table["score"])
    assert len(seg(plane, min_size=plane.size + 1)) == 0  # no mask is larger than that
    half = seg(plane, scale=0.5)
    assert half.labels.shape == every.labels.shape  # masks mapped back to the input
    assert seg.with_settings() is seg and seg.scale == 1
    with pytest.raises(TypeError, match="score_thresh must be a number"):
        seg(plane, score_thresh="0.5")
    with pytest.raises(TypeError, match="min_size must be an integer"):
        seg(plane, min_size=2.5)
    with pytest.raises(CellstackError, match=r"score_thresh: must be in \[0, 1\], got 1.5"):
        seg(plane, score_thresh=1.5)


def test_optimize_thresholds_returns_a_segmenter_that_scores_what_it_promised(seg, base_data):
    from cellstack.data.dataset import load_sample
    from cellstack.data.sartorius import read_train_csv
    from cellstack.evaluation.metric import score_image

    samples = [load_sample(r) for r in read_train_csv(base_data / "train.csv")]
    images = [image for image, _ in samples]
    truths = [labels for _, labels in samples]
    tuned, result = seg.optimize_thresholds(images, truths, scales=False)
    assert result.after >= result.before and result.scale == seg.scale
    assert tuned.predictor.thresholds == result.thresholds
    assert tuned.source is seg.source  # the model is shared, this segmenter unchanged
    # What it promises is what predicting with it gives: the mean metric on these images.
    scores = [score_image(t, tuned(im).labels).score for im, t in zip(images, truths, strict=True)]
    assert np.mean(scores) == pytest.approx(result.after, abs=1e-9)
    # With the scale searched: the model's own scale first, then around the one that
    # gives the labels' cells the model's size; the segmenter predicts at the chosen one.
    scaled, result = seg.optimize_thresholds(images, truths)
    assert result.scales[0] == seg.scale and len(result.scales) > 1
    assert scaled.scale == result.scale in result.scales and result.after >= result.before
    assert 0 <= result.loo <= 1
    with pytest.raises(CellstackError, match="one label image per image, got 4 images and 3"):
        seg.optimize_thresholds(images, truths[:3])
    with pytest.raises(CellstackError, match=r"labels\[1\]: an integer label image of shape"):
        seg.optimize_thresholds(images[:2], [truths[0], truths[1][:5]])
