"""The napari plugin's work, without a viewer: segmenting a layer's data, reading a
prediction folder, and a manifest whose every command resolves."""

from __future__ import annotations

import importlib
import importlib.resources

import numpy as np
import pytest
import yaml

import cellstack
from cellstack import napari_plugin
from cellstack.cli import main
from cellstack.data.images import read_image


def test_segment_layer_adds_labels_with_features(base_run, base_data):
    plane = read_image(sorted((base_data / "train").glob("*.png"))[0])
    expected = cellstack.Segmenter.load(base_run, device="cpu")(plane)
    labels, kwargs, kind = napari_plugin.segment_layer(plane, base_run, device="cpu", name="im")
    assert kind == "labels" and kwargs["name"] == "im cells"
    np.testing.assert_array_equal(labels, expected.labels)
    features = kwargs["features"]
    np.testing.assert_array_equal(features["index"], np.unique(labels)[1:])
    assert set(features["cell_type"]) <= set(expected.class_names)
    # A 3-D layer is a Z-stack, segmented plane by plane.
    stack, _, _ = napari_plugin.segment_layer(np.stack([plane] * 2), base_run, device="cpu")
    assert stack.shape == (2, *plane.shape)


def test_reader_opens_prediction_folders_only(base_run, base_data, tmp_path):
    out = tmp_path / "pred"
    images = base_data / "train"
    assert main(["predict", str(base_run), str(images), "--out", str(out), "--quiet"]) == 0
    assert napari_plugin.get_reader(str(images)) is None
    marker = out / napari_plugin.MARKER
    reader = napari_plugin.get_reader([str(marker)])
    layers = reader(str(marker))
    # Each prediction beside its input image (inputs.json says where it was).
    expected = [
        name
        for p in sorted(images.glob("*.png"))
        for name in (f"{p.stem} (pred)", f"{p.stem} cells (pred)")
    ]
    assert [kw["name"] for _, kw, _ in layers] == expected
    assert [kind for _, _, kind in layers] == ["image", "labels"] * (len(expected) // 2)
    image, _, _ = layers[0]
    labels, kwargs, kind = layers[1]
    assert image.shape == labels.shape
    assert kind == "labels" and labels.dtype == np.int32
    np.testing.assert_array_equal(kwargs["features"]["index"], np.unique(labels)[1:])
    assert kwargs["features"]["score"].dtype.kind == "f"


def test_manifest_commands_resolve():
    manifest = yaml.safe_load(
        (importlib.resources.files("cellstack") / "napari.yaml").read_text(encoding="utf-8")
    )
    commands = {c["id"]: c["python_name"] for c in manifest["contributions"]["commands"]}
    for python_name in commands.values():
        module, attr = python_name.split(":")
        assert callable(getattr(importlib.import_module(module), attr))
    used = [w["command"] for w in manifest["contributions"]["widgets"]]
    used += [r["command"] for r in manifest["contributions"]["readers"]]
    assert set(used) <= set(commands)


def test_reader_claims_only_the_prediction_marker():
    """A plain PNG or TIFF never matches: napari does not even offer cellstack."""
    import fnmatch

    manifest = yaml.safe_load(
        (importlib.resources.files("cellstack") / "napari.yaml").read_text(encoding="utf-8")
    )
    (reader,) = manifest["contributions"]["readers"]
    patterns = reader["filename_patterns"]
    for path in ("some.png", "stack.tif", "results.json", "pred", "pred/labels/a.tif"):
        assert not any(fnmatch.fnmatch(path, p) for p in patterns), path
    assert any(fnmatch.fnmatch("pred/cellstack-outputs.txt", p) for p in patterns)
    assert reader["accepts_directories"] is False


def test_widget_inputs_are_checked_before_any_model_loads(base_run, tmp_path):
    from cellstack.errors import CellstackError

    image = np.zeros((16, 16), np.uint8)
    cases = [
        ((None, str(base_run), None, "im"), "no image layer selected"),
        ((image, "", None, "im"), "choose a model"),
        ((image, str(tmp_path / "missing"), None, "im"), "not a built-in model"),
        ((image, str(base_run), -1.0, "im"), "diameter must be a positive finite number"),
        ((np.zeros((2, 2, 2, 2, 2)), str(base_run), None, "im"), "has 5 dimensions"),
    ]
    for args, match in cases:
        with pytest.raises(CellstackError, match=match):
            napari_plugin.check_inputs(*args)


def test_layer_names_carry_model_and_settings_and_never_collide():
    taken = {"im cells [r18]"}
    assert napari_plugin.layer_name("im", "runs/r18", None, taken) == "im cells [r18] (2)"
    assert napari_plugin.layer_name("im", "nuclei", 12.0, taken) == "im cells [nuclei, d=12]"


def test_the_model_reloads_when_its_thresholds_change(base_run, tmp_path):
    import shutil

    run = shutil.copytree(base_run, tmp_path / "run")
    first = napari_plugin.load_segmenter(str(run), "cpu", None)
    assert napari_plugin.load_segmenter(str(run), "cpu", None) is first
    import os

    (run / "thresholds.yaml").write_text("default: {score_thresh: 0.9}\n")
    os.utime(run / "thresholds.yaml", (1e9, 2e9))
    second = napari_plugin.load_segmenter(str(run), "cpu", None)
    assert second is not first
    assert second.predictor.thresholds.default.score_thresh == 0.9


def test_the_compiler_stack_is_kept_out_of_a_fresh_process():
    """What protects napari from the triton/LLVM crash: after the plugin marks triton
    absent, loading and running a model never imports it."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from cellstack import napari_plugin\n"
        "napari_plugin.keep_compiler_out()\n"
        "import torchvision.ops, cellstack.inference.segmenter\n"
        "assert sys.modules.get('triton') is None, sys.modules.get('triton')\n"
        "import torch._dynamo\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
