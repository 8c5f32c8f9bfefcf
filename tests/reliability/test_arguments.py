"""Numbers at the edges and the Python API's arguments: every out-of-range value is a
one-line error naming the option, key or row."""

from __future__ import annotations

import csv

import numpy as np
import pytest

import cellstack
from cellstack.errors import ArgumentTypeError, CellstackError

# --- numbers at the edges -------------------------------------------------------------


def _first_annotation(data, value: str) -> None:
    path = data / "train.csv"
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    rows[0]["annotation"] = value
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


@pytest.mark.parametrize(
    "value", ["9223372036854775807 10", "1 9223372036854775807", "5 1 9223372036854775000 3"]
)
def test_rle_values_past_the_image_are_errors_everywhere(cli, data, tmp_path, value):
    _first_annotation(data, value)
    cli.fails("evaluate", data, data / "train.csv", "--quiet", match="past the")
    out = tmp_path / "prep"
    assert cli("prepare", "sartorius", data, "--out", out, "--quiet").code == 0
    assert "past the" in (out / "problems.csv").read_text()


@pytest.mark.parametrize(
    ("flag", "value", "match"),
    [
        ("--diameter", "0", "positive finite"),
        ("--diameter", "inf", "positive finite"),
        ("--diameter", "nan", "positive finite"),
        ("--diameter", "-3", "positive finite"),
        ("--scale", "0", "positive finite"),
        ("--scale", "1e-3", "outside"),
        ("--scale", "1e9", "outside"),
        ("--scale", "inf", "positive finite"),
        ("--diameter", "1e-3", "outside"),
        ("--diameter", "1e9", "outside"),
    ],
)
def test_resize_factors_are_bounded(cli, run, images, tmp_path, flag, value, match):
    cli.fails("predict", run, images, "--out", tmp_path / "p", flag, value, match=match)


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("data.augment.hflip=2.5", "data.augment.hflip: must be in [0, 1]"),
        ("data.augment.scale_jitter=-0.1", "data.augment.scale_jitter: must be >= 0"),
        ("model.rpn.aspect_ratios=[]", "model.rpn.aspect_ratios: needs at least one value"),
        ("model.rpn.aspect_ratios=[0.5,0]", "model.rpn.aspect_ratios: ratios must be positive"),
        ("train.momentum=-3", "train.momentum: must be >= 0"),
        ("train.momentum=3", "train.momentum: must be in [0, 1]"),
        ("predict.box_nms_iou=-1", "predict.box_nms_iou: must be >= 0"),
        ("predict.rpn_nms_iou=.nan", "predict.rpn_nms_iou: must be a finite number"),
        ("predict.score_thresh=1.5", "predict.score_thresh: must be in [0, 1]"),
        ("model.rpn.fg_iou=.inf", "model.rpn.fg_iou: must be a finite number"),
        ("model.roi.stage_ious=[0.5,0.6,1.5]", "model.roi.stage_ious: must be in [0, 1]"),
        ("model.roi.positive_fraction=2", "model.roi.positive_fraction: must be in [0, 1]"),
    ],
)
def test_config_values_are_range_checked_with_their_key(cli, data, tmp_path, override, match):
    cli.fails("train", data, "--out", tmp_path / "r", override, match=match)
    assert not (tmp_path / "r").exists()


def test_dry_run_size_zero_is_refused(cli, run):
    cli.fails("predict", run, "--dry-run", "--dry-run-size", "0", "0", match="dry-run-size")


def test_folds_csv_with_a_non_integer_fold(cli, data, tmp_path):
    assert cli("folds", data, "--k", "2").code == 0
    path = data / "folds.csv"
    text = path.read_text().splitlines()
    head, first = text[0], text[1].split(",")
    first[1] = "one"
    path.write_text("\n".join([head, ",".join(first), *text[2:]]) + "\n")
    cli.fails("train", data, "--out", tmp_path / "r", "data.fold=0", match="is not an integer")


def test_a_17000_square_array_is_refused_by_the_api(base_run):
    seg = cellstack.Segmenter.load(base_run, device="cpu")
    big = np.lib.stride_tricks.as_strided(np.zeros(1, np.uint8), (17000, 17000), (0, 0))
    with pytest.raises(CellstackError, match="over the limit"):
        seg(big)


def test_a_scale_that_makes_the_image_too_large_is_refused(base_run):
    seg = cellstack.Segmenter.load(base_run, device="cpu", scale=16)
    with pytest.raises(CellstackError, match="resized by 16"):
        seg(np.zeros((2000, 2000), np.uint8))


# --- the Python API checks its arguments ----------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"path": 123}, ArgumentTypeError, "path must be"),
        ({"path": None}, ArgumentTypeError, "path must be"),
        ({"overrides": "predict.score_thresh=0.4"}, ArgumentTypeError, "overrides must be a list"),
        ({"overrides": [1, 2]}, ArgumentTypeError, "overrides must be a list"),
        ({"batch_size": 0}, CellstackError, "batch_size must be an integer >= 1"),
        ({"batch_size": 1.5}, CellstackError, "batch_size must be an integer >= 1"),
        ({"batch_size": True}, CellstackError, "batch_size must be an integer >= 1"),
        ({"diameter": True}, CellstackError, "diameter must be a positive finite number"),
        ({"device": 3}, ArgumentTypeError, "device must be auto, cpu, cuda"),
        ({"device": None}, ArgumentTypeError, "device must be auto, cpu, cuda"),
    ],
)
def test_load_checks_its_arguments(base_run, kwargs, error, match):
    path = kwargs.pop("path", base_run)
    with pytest.raises(error, match=match):
        cellstack.Segmenter.load(path, **{"device": "cpu", **kwargs})


@pytest.fixture(scope="module")
def api_seg(base_run):
    return cellstack.Segmenter.load(base_run, device="cpu")


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        ({"axes": 3}, ArgumentTypeError, "axes must be a string"),
        ({"channel": 1.5}, ArgumentTypeError, "channel must be a channel index"),
        ({"channel": True}, ArgumentTypeError, "channel must be a channel index"),
        ({"channel": "0"}, ArgumentTypeError, "channel must be a channel index"),
        ({"channel": []}, ArgumentTypeError, "channel must be a channel index"),
        ({"channel": -1}, CellstackError, "channel indices must be >= 0"),
        # (5, 5) and (10, 5) found 0 cells, silently
        ({"normalize": (5, 5)}, CellstackError, "needs lo < hi"),
        ({"normalize": (10, 5)}, CellstackError, "needs lo < hi"),
    ],
)
def test_call_checks_its_arguments(api_seg, call, error, match):
    with pytest.raises(error, match=match):
        api_seg(np.zeros((32, 32), np.uint8), **call)


def test_a_bool_array_is_refused(api_seg):
    with pytest.raises(CellstackError, match="bool array is a mask"):
        api_seg(np.zeros((32, 32), bool))


def test_axes_on_a_file_path_is_refused(api_seg, images):
    path = sorted(images.glob("*.png"))[0]
    with pytest.raises(CellstackError, match="axes= applies to arrays"):
        api_seg(path, axes="YX")


def test_a_non_array_item_is_refused(api_seg):
    with pytest.raises(ArgumentTypeError, match="expected a numpy array"):
        api_seg({"not": "an image"})


@pytest.mark.parametrize(
    ("images", "labels", "error", "match"),
    [
        ([np.zeros((32, 32), np.uint8)], None, ArgumentTypeError, "labels must be a list"),
        (None, [np.zeros((32, 32), np.int32)], ArgumentTypeError, "images must be a list"),
        ("a.png", ["b.tif"], ArgumentTypeError, "images must be a list"),
    ],
)
def test_optimize_thresholds_checks_its_arguments(api_seg, images, labels, error, match):
    with pytest.raises(error, match=match):
        api_seg.optimize_thresholds(images, labels)


@pytest.mark.parametrize(
    ("y_true", "y_pred", "kwargs", "error", "match"),
    [
        # compared as flat pixels before
        (np.zeros((10, 11), int), np.zeros((11, 10), int), {}, CellstackError, "not the same"),
        # a background of 0.5 or NaN was an object
        (np.full((4, 4), 0.5), np.zeros((4, 4), int), {}, CellstackError, "fractional"),
        (np.full((4, 4), np.nan), np.zeros((4, 4), int), {}, CellstackError, "NaN"),
        # an int label stack was read as one mask per plane
        (np.full((2, 4, 4), 3), np.zeros((2, 4, 4), int), {}, CellstackError, "label images"),
        (np.zeros((4, 4), bool), np.zeros((4, 4), int), {}, CellstackError, "one object or many"),
        (
            np.zeros((4, 4), int),
            np.zeros((4, 4), int),
            {"thresh": "0.5"},
            ArgumentTypeError,
            "thresh",
        ),
        (None, np.zeros((4, 4), int), {}, ArgumentTypeError, "y_true must be a label image"),
    ],
)
def test_matching_checks_its_arguments(y_true, y_pred, kwargs, error, match):
    from cellstack.evaluation.matching import matching

    with pytest.raises(error, match=match):
        matching(y_true, y_pred, **kwargs)


@pytest.mark.parametrize("image", [np.full((48, 48), np.nan), np.full((48, 48), 7.0)])
def test_calibration_on_images_without_signal_keeps_the_model_as_it_is(api_seg, image):
    """0.0 -> 0.0 once moved every threshold to the grid's extremes (72 cells where the
    model found 32): a tie keeps the current thresholds and scale."""
    label = np.zeros((48, 48), np.int32)
    label[5:15, 5:15], label[25:40, 20:35] = 1, 2
    for images in ([image], [image, image]):
        tuned, result = api_seg.optimize_thresholds(images, [label] * len(images))
        assert result.kept and result.after == result.before
        assert tuned.predictor.thresholds == api_seg.predictor.thresholds
        assert tuned.scale == api_seg.scale


def test_calibration_on_empty_labels_names_them(api_seg):
    with pytest.raises(CellstackError, match="the 2 label images hold no object"):
        api_seg.optimize_thresholds(
            [np.zeros((32, 32), np.uint8)] * 2, [np.zeros((32, 32), int)] * 2
        )


def test_automatic_thresholds_of_a_run_that_learnt_nothing_stay_the_configs(cli, data, tmp_path):
    """A 4-iteration run scored 0.0 at every grid point and wrote the grid's extremes
    (mask 0.2, score 0.05, offset -0.12); now a tie keeps the config's values."""
    import yaml

    from cellstack.config import PredictConfig
    from tests.conftest import FAST

    run = tmp_path / "r"
    args = ["train.iterations=4", "train.eval_every=100", "train.auto_thresholds=true"]
    assert cli("train", data, "--out", run, *FAST, *args).code == 0
    written = yaml.safe_load((run / "thresholds.yaml").read_text())["default"]
    config = PredictConfig()
    for key in ("mask_thresh", "score_thresh", "mask_offset", "mask_nms_iou"):
        assert written[key] == getattr(config, key), key


def test_matching_a_stack_of_no_mask_counts_no_object():
    # The fuzzer's find: bool[0, H, W] once crashed reshaping an empty stack.
    from cellstack.evaluation.matching import matching

    empty = np.zeros((0, 4, 5), bool)
    labels = np.zeros((4, 5), np.int32)
    labels[1:3, 1:3] = 1
    m = matching(labels, empty)
    assert (m.n_true, m.n_pred, m.fn) == (1, 0, 1)
