"""The napari plugin's work, without a viewer: segmenting a layer's data, reading a
prediction folder, and a manifest whose every command resolves."""

from __future__ import annotations

import importlib
import importlib.resources

import numpy as np
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
    reader = napari_plugin.get_reader([str(out)])
    layers = reader(str(out))
    assert [kw["name"] for _, kw, _ in layers] == sorted(p.stem for p in images.glob("*.png"))
    labels, kwargs, kind = layers[0]
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
