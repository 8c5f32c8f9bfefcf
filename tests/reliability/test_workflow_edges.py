"""The documented workflows at their edges: ``auto`` settings, CV folds, stacks and their
ROIs, and inputs whose outputs would collide. Each probe asserts its exact outcome."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import tifffile

# --- the documented workflows run ---------------------------------------------------


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


# --- stacks and ROIs ---------------------------------------------------------------


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
