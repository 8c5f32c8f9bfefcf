"""Clear one-line messages for the remaining bad inputs: corrupt model files, empty
tables, ids listed twice, a full disk, outputs given as folders."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import tifffile

from cellstack.errors import CellstackError

# --- clear messages for the remaining cases ---------------------------------------------


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


# --- issue 44: messages that named the wrong thing ----------------------------------------


def test_a_tuned_folder_without_its_weights_names_the_missing_file(cli, run, base_data, tmp_path):
    root = _label_folder(tmp_path, base_data)
    tuned = tmp_path / "tuned"
    assert cli("tune", run, root, "--out", tuned, "--quiet").code == 0
    (tuned / "model.safetensors").unlink()
    res = cli.fails("predict", tuned, root / "images", "--out", tmp_path / "p", match="tuned")
    assert "without its model.safetensors" in res.err and "has training run" not in res.err


def test_a_stacked_label_file_is_refused_without_predicts_axis_advice(
    cli, run, base_data, tmp_path
):
    root = _label_folder(tmp_path, base_data)
    one = tifffile.imread(root / "labels" / "im0.tif")
    tifffile.imwrite(root / "labels" / "im0.tif", np.stack([one, one]), photometric="minisblack")
    res = cli.fails("tune", run, root, "--out", tmp_path / "t", match="im0.tif")
    assert "is not one 2-D image" in res.err and "--z-axis" not in res.err


def test_tune_out_must_be_a_new_folder_outside_the_labels(cli, run, base_data, tmp_path):
    root = _label_folder(tmp_path, base_data)
    (tmp_path / "afile").write_text("x")
    cli.fails("tune", run, root, "--out", tmp_path / "afile", match="exists and is not a folder")
    cli.fails("tune", run, root, "--out", root / "tuned", match="inside the annotated images")
    assert not (root / "tuned").exists()


def test_init_from_another_backbone_says_how_little_it_loaded(cli, run, data, tmp_path):
    from tests.conftest import FAST

    res = cli(
        "train",
        data,
        "--out",
        tmp_path / "r",
        *FAST,
        "model.backbone.name=efficientnet_b0",  # the run is a resnet18: its FPN and heads fit
        f"init.from={run}",
        "train.iterations=1",
        "train.eval_every=100",
        "train.auto_thresholds=false",
    )
    assert res.code == 0, res.err
    assert "warning: init.from=" in res.err and "fits only" in res.err


def test_an_architecture_override_on_a_trained_model_names_the_override(cli, run, images, tmp_path):
    res = cli.fails(
        "predict",
        run,
        images,
        "--out",
        tmp_path / "p",
        "model.backbone.name=resnet34",
        match="model.backbone.name=resnet34:",
    )
    assert "architecture is fixed by its weights" in res.err
    assert not (tmp_path / "p").exists()  # a refused predict leaves no empty --out


def test_a_resize_past_the_limit_names_the_file(cli, run, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    tifffile.imwrite(folder / "wide.tif", np.zeros((1100, 1100), np.uint8))
    cli.fails("predict", run, folder, "--out", tmp_path / "p", "--scale", "16", match="wide.tif")


def test_a_named_channel_axis_of_length_one_is_channel_0(base_run):
    import cellstack

    seg = cellstack.Segmenter.load(base_run, device="cpu")
    stack = np.random.default_rng(0).integers(0, 255, (1, 1, 1, 40, 48), dtype=np.uint8)
    for channel in (None, 0, [0]):
        assert seg(stack, axes="TZCYX", channel=channel).labels.shape == (40, 48)
    with pytest.raises(CellstackError, match="channel 1 does not exist; .* has 1 channel"):
        seg(stack, axes="TZCYX", channel=1)


def test_overwrite_refuses_a_symlinked_output_before_removing_anything(cli, run, images, tmp_path):
    out = tmp_path / "p"
    assert cli("predict", run, images, "--out", out, "--quiet").code == 0
    first, second = sorted((out / "labels").iterdir())
    first.unlink()
    first.symlink_to(sorted(images.iterdir())[0])
    before = sorted(p.name for p in out.rglob("*"))
    cli.fails("predict", run, images, "--out", out, "--overwrite", match="a symbolic link inside")
    assert sorted(p.name for p in out.rglob("*")) == before and second.is_file()
