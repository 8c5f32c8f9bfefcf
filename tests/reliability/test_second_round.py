"""Second round of probes: nothing of the user's deleted, workflows that run, numbers at
the edges, the Python API's arguments and the remaining messages. Each probe asserts
its exact outcome: a one-line error naming what is wrong, or a correct result with the
user's files unchanged (checksums)."""

from __future__ import annotations

import csv
import shutil
import threading

import numpy as np
import pytest
import tifffile

import cellstack
from cellstack.errors import ArgumentTypeError, CellstackError
from cellstack.fileio import output_lock
from cellstack.inference.export import MANIFEST
from tests.reliability.conftest import checksums

# --- 1. nothing of the user's is deleted ---------------------------------------------


def test_overwrite_keeps_the_users_files_in_predicts_folders(cli, run, images, tmp_path):
    out = tmp_path / "p"
    assert cli("predict", run, images, "--out", out, "--save-rois").code == 0
    mine = {
        out / "labels" / "my_truth.tif": np.arange(12, dtype=np.int32).reshape(3, 4),
        out / "rois" / "hand_drawn.zip": None,
    }
    tifffile.imwrite(out / "labels" / "my_truth.tif", mine[out / "labels" / "my_truth.tif"])
    (out / "rois" / "hand_drawn.zip").write_bytes(b"PK\x05\x06" + bytes(18))
    (out / "notes.txt").write_text("mine")
    before = {
        k: v for k, v in checksums(out).items() if "my_truth" in k or "hand" in k or "notes" in k
    }
    assert cli("predict", run, images, "--out", out, "--overwrite", "--save-rois").code == 0
    after = checksums(out)
    assert {k: after[k] for k in before} == before
    # ... and predict's own files are there, listed once each in the manifest.
    listed = (out / MANIFEST).read_text().split()
    assert len(listed) == len(set(listed)) and "submission.csv" in listed
    assert all((out / p).is_file() for p in listed)


def test_overwrite_removes_exactly_the_listed_files(cli, run, images, tmp_path):
    out = tmp_path / "p"
    assert cli("predict", run, images, "--out", out).code == 0
    first = sorted(p.name for p in images.glob("*.png"))[0]
    (images / first).unlink()
    assert cli("predict", run, images, "--out", out, "--overwrite").code == 0
    assert not (out / "labels" / f"{first[:-4]}.tif").exists()
    assert not (out / "objects" / f"{first[:-4]}.csv").exists()


def test_overwrite_of_a_folder_without_a_manifest_is_refused(cli, run, images, tmp_path):
    out = tmp_path / "p"
    (out / "labels").mkdir(parents=True)
    tifffile.imwrite(out / "labels" / "truth.tif", np.zeros((4, 4), np.int32))
    before = checksums(out)
    cli.fails("predict", run, images, "--out", out, "--overwrite", match=f"no {MANIFEST}")
    assert checksums(out) == before


def test_demo_refuses_a_folder_it_did_not_make(cli, tmp_path):
    out = tmp_path / "mine"
    (out / "run").mkdir(parents=True)
    (out / "run" / "model.pt").write_bytes(b"my trained model")
    (out / "data").mkdir()
    (out / "data" / "train.csv").write_text("id,annotation\n")
    before = checksums(out)
    cli.fails("demo", "--out", out, match="was not made by cellstack demo")
    assert checksums(out) == before


def test_demo_output_file_is_refused(cli, tmp_path):
    (tmp_path / "f").write_text("x")
    cli.fails("demo", "--out", tmp_path / "f", match="not a folder")


def test_a_second_predict_into_the_same_folder_is_refused(cli, run, images, tmp_path):
    out = tmp_path / "p"
    with output_lock(out, "cellstack predict"):  # what a first, running predict holds
        cli.fails("predict", run, images, "--out", out, match="another cellstack predict")
    assert not any(out.iterdir())  # the refused run wrote nothing
    assert cli("predict", run, images, "--out", out).code == 0  # the lock went with it


def test_the_lock_excludes_a_second_holder_in_another_thread(tmp_path):
    results = []
    with output_lock(tmp_path / "o"):

        def second():
            try:
                with output_lock(tmp_path / "o"):
                    results.append("got it")
            except CellstackError as exc:
                results.append(str(exc))

        t = threading.Thread(target=second)
        t.start()
        t.join()
    assert results and "another cellstack is writing" in results[0]


# --- 2. the documented workflows run ---------------------------------------------------


def test_predict_time_auto_override_is_refused_before_predicting(cli, run, images, tmp_path):
    cli.fails(
        "predict",
        run,
        images,
        "--out",
        tmp_path / "p",
        "predict.min_size=auto",
        match="predict.min_size=auto",
    )


@pytest.mark.slow
def test_cv_with_auto_settings_resolves_them_once_and_its_folds_agree(cli, data, tmp_path):
    import yaml

    out = tmp_path / "cv"
    from tests.conftest import FAST

    fast = [o for o in FAST if not o.startswith(("data.crop_size", "predict.max_detections"))]
    args = ["cv", data, "--folds", "2", "--out", out, *fast, "train.iterations=2"]
    args += ["data.crop_size=auto", "predict.min_size=auto", "model.rpn.anchor_scale=auto"]
    assert cli(*args, "--quiet").code == 0
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["predict"]["min_size"] != "auto"
    folds = [yaml.safe_load((out / f"fold{k}" / "config.yaml").read_text()) for k in (0, 1)]
    assert folds[0]["model"] == folds[1]["model"] == resolved["model"]
    assert cli("tune", out, "--quiet").code == 0
    assert cli("predict", out, data, "--out", tmp_path / "p", "--quiet").code == 0


def test_cv_refuses_a_folds_csv_of_another_k_before_writing(cli, data, tmp_path):
    assert cli("folds", data, "--k", "2").code == 0
    out = tmp_path / "cv"
    cli.fails("cv", data, "--folds", "3", "--out", out, match="pass --folds 2")
    assert not out.exists() or not any(out.iterdir())


# --- 3. stacks and ROIs ---------------------------------------------------------------


def test_rois_of_a_z_stack_point_at_their_plane_one_based(cli, run, base_data, tmp_path):
    import roifile

    from cellstack.data.images import read_image

    plane = read_image(sorted((base_data / "train").glob("*.png"))[0])
    stack = np.stack([plane, plane[::-1], plane[:, ::-1]])
    folder = tmp_path / "stacks"
    folder.mkdir()
    tifffile.imwrite(folder / "s.tif", stack, imagej=True, metadata={"axes": "ZYX"})
    out = tmp_path / "p"
    post = ["predict.score_thresh=0", "predict.min_size=0"]
    assert cli("predict", run, folder, "--out", out, "--save-rois", *post).code == 0
    rois = roifile.roiread(out / "rois" / "s.zip")
    with open(out / "objects" / "s.csv", newline="") as f:
        z_of = {row["label"]: int(row["z"]) for row in csv.DictReader(f)}
    assert rois and {r.z_position for r in rois} <= {1, 2, 3}  # Fiji: 1-based, in the stack
    for r in rois:
        assert r.z_position == z_of[r.name] + 1


def test_one_axis_named_twice_is_refused(cli, run, images, tmp_path):
    cli.fails(
        "predict",
        run,
        images,
        "--out",
        tmp_path / "p",
        "--z-axis",
        "0",
        "--t-axis",
        "0",
        match="name the same axis",
    )


def test_stack_and_plane_with_colliding_output_names_are_refused(cli, run, base_data, tmp_path):
    from cellstack.data.images import read_image, write_png

    plane = read_image(sorted((base_data / "train").glob("*.png"))[0])
    folder = tmp_path / "in"
    folder.mkdir()
    tifffile.imwrite(
        folder / "a.tif", np.stack([plane, plane]), imagej=True, metadata={"axes": "ZYX"}
    )
    write_png(folder / "a_z0.png", plane)
    cli.fails("predict", run, folder, "--out", tmp_path / "p", match="rename one input")


# --- 4. numbers at the edges -------------------------------------------------------------


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


# --- 5. the Python API checks its arguments ----------------------------------------------


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
    ],
)
def test_load_checks_its_arguments(base_run, kwargs, error, match):
    path = kwargs.pop("path", base_run)
    with pytest.raises(error, match=match):
        cellstack.Segmenter.load(path, device="cpu", **kwargs)


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


# --- 6. clear messages for the remaining cases ---------------------------------------------


def test_a_corrupt_model_file_is_called_corrupt(cli, run, images, tmp_path):
    (run / "model.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    res = cli.fails("predict", run, images, "--out", tmp_path / "p", match="model.pt")
    assert "corrupt" in res.err and "run code" not in res.err


def test_resume_on_a_copy_of_model_pt(cli, run, data, tmp_path):
    (run / "checkpoint.pt").unlink(missing_ok=True)
    shutil.copy(run / "model.pt", run / "checkpoint.pt")
    (run / "model.pt").unlink()
    cli.fails("train", data, "--resume", run, match="not a training checkpoint")


def test_init_from_a_file_with_a_non_tensor_weight(cli, run, data, tmp_path):
    import torch

    state = torch.load(run / "model.pt", weights_only=True)
    state["model"]["backbone.body.conv1.weight"] = "not a tensor"
    torch.save(state, run / "model.pt")
    cli.fails("train", data, "--out", tmp_path / "r", f"init.from={run}", match="is not a tensor")


def test_an_empty_thresholds_file_is_an_error(cli, run, images, tmp_path):
    (run / "thresholds.yaml").write_text("")
    cli.fails("predict", run, images, "--out", tmp_path / "p", match="empty thresholds file")


def test_a_train_csv_with_a_header_and_no_rows(cli, data, tmp_path):
    header = (data / "train.csv").read_text().splitlines()[0]
    (data / "train.csv").write_text(header + "\n")
    cli.fails("evaluate", data, data / "train.csv", match="no rows")


def _label_folder(tmp_path, base_data):
    from cellstack.data.images import read_image

    root = tmp_path / "lab"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for k, p in enumerate(sorted((base_data / "train").glob("*.png"))[:2]):
        shutil.copy(p, root / "images" / f"im{k}.png")
        labels = np.zeros(read_image(p).shape, np.int32)
        labels[5:15, 5:15] = 1
        tifffile.imwrite(root / "labels" / f"im{k}.tif", labels)
    return root


def test_an_id_listed_twice_in_cell_types_csv(cli, base_data, tmp_path):
    root = _label_folder(tmp_path, base_data)
    (root / "cell_types.csv").write_text("id,cell_type\nim0,a\nim0,b\n")
    cli.fails("evaluate", root, root, match="listed twice")


def test_a_mask_file_among_the_images_is_an_error(cli, base_data, tmp_path):
    root = _label_folder(tmp_path, base_data)
    shutil.copy(root / "labels" / "im0.tif", root / "images" / "im0_masks.tif")
    cli.fails("evaluate", root, root, match="a mask file among the images")


def test_disk_full_names_the_file(tmp_path, monkeypatch):
    import errno
    import os

    from cellstack.fileio import atomic_write

    real_replace = os.replace

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(CellstackError, match=r"out\.txt: cannot write, no space left"):
        with atomic_write(tmp_path / "out.txt") as f:
            f.write("x")
    monkeypatch.setattr(os, "replace", real_replace)
    assert list(tmp_path.iterdir()) == []  # no partial left behind


@pytest.mark.parametrize("command", ["folds", "evaluate"])
def test_an_output_file_given_as_a_folder_names_that_folder(cli, data, tmp_path, command):
    folder = tmp_path / "taken"
    folder.mkdir()
    if command == "folds":
        res = cli.fails("folds", data, "--k", "2", "--out", folder, match=f"{folder}: is a folder")
    else:
        args = ("evaluate", data, data / "train.csv", "--json", folder, "--quiet")
        res = cli.fails(*args, match=f"{folder}: is a folder")
    assert ".partial" not in res.err and list(folder.iterdir()) == []


def test_channel_of_an_rgb_png_is_its_colour_sample(cli, run, base_data, tmp_path):
    from cellstack.data.images import read_image, write_png

    gray = read_image(sorted((base_data / "train").glob("*.png"))[0])
    rgb = np.stack([np.zeros_like(gray), gray, gray[::-1]], axis=-1)
    for name, image in (("rgb", rgb), ("green", gray)):
        (tmp_path / name).mkdir()
        write_png(tmp_path / name / "a.png", image)
    post = ["predict.score_thresh=0", "predict.min_size=0"]
    args = ("predict", run, tmp_path / "rgb", "--out", tmp_path / "p1", "--channel", "1")
    assert cli(*args, *post).code == 0
    assert cli("predict", run, tmp_path / "green", "--out", tmp_path / "p2", *post).code == 0
    one, two = (tifffile.imread(tmp_path / p / "labels" / "a.tif") for p in ("p1", "p2"))
    assert one.max() > 0 and np.array_equal(one, two)  # channel 1 is the green sample


def test_an_axis_option_on_a_2d_image_among_stacks_says_so(cli, run, base_data, tmp_path):
    from cellstack.data.images import read_image

    folder = tmp_path / "mixed"
    folder.mkdir()
    plane = sorted((base_data / "train").glob("*.png"))[0]
    shutil.copy(plane, folder / "flat.png")
    tifffile.imwrite(folder / "stack.tif", np.stack([read_image(plane)] * 2))
    cli.fails(
        "predict",
        run,
        folder,
        "--out",
        tmp_path / "p",
        "--z-axis",
        "0",
        match="flat.png: z_axis (--z-axis) 0 names this file's Y axis",
    )


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ("{boxes: {nms_iou: 2.5}}", "type_settings.astro.boxes: key nms_iou: must be in [0, 1]"),
        ("{proposals: {score_thresh: .nan}}", "key score_thresh: must be a finite number"),
        ("{proposals: {pre_nms_top_n: -5}}", "key pre_nms_top_n: must be >= 0"),
    ],
)
def test_ensemble_type_settings_are_range_checked(cli, run, images, tmp_path, settings, match):
    spec = tmp_path / "ens.yaml"
    spec.write_text(f"models: [{run}]\ntype_settings:\n  astro: {settings}\n")
    cli.fails("predict", spec, images, "--out", tmp_path / "p", match=match)


def test_float_label_ids_past_int32_stay_distinct(tmp_path):
    from cellstack.data.labels import read_label_image

    label = np.zeros((16, 16), np.float64)
    label[:4, :4], label[8:, 8:], label[0, 15] = 3e9, 3e9 + 1, 7
    tifffile.imwrite(tmp_path / "l.tif", label)
    got = read_label_image(tmp_path / "l.tif")
    assert got.dtype == np.int32 and got.min() == 0
    assert len(np.unique(got)) == 4 and got[0, 0] != got[8, 8] and got[0, 15] > 0
    assert (got == 0).sum() == (label == 0).sum()
