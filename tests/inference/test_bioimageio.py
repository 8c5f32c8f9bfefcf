"""bioimage.io packages: the label model is predict's pipeline, and an exported built-in
passes bioimage.io's own model test, offline (skipped, with the extra named, where
bioimageio.core is absent)."""

from __future__ import annotations

import sys
import zipfile

import numpy as np
import pytest
import tifffile
import torch

from cellstack.cli import main
from cellstack.data.samples import sample_path

IMAGE = sample_path("nuclei") / "images" / "hela_h2b.tif"


def test_the_label_model_gives_predicts_labels_and_rebuilds_from_its_kwargs():
    from cellstack.inference.bioimageio import LabelModel
    from cellstack.inference.modelexport import label_model
    from cellstack.inference.segmenter import Segmenter

    model, kwargs = label_model("nuclei")
    image = tifffile.imread(IMAGE).astype(np.float32)
    with torch.inference_mode():
        labels = model(torch.from_numpy(image)[None, None])
    assert labels.dtype == torch.int32 and labels.shape == (1, 1, *image.shape)
    expected = Segmenter.load("nuclei", device="cpu")(image).labels
    assert np.array_equal(labels[0, 0].numpy(), expected) and expected.max() >= 10
    # What a consumer does: build from the package's kwargs, load the weights strictly.
    again = LabelModel(**kwargs)
    again.load_state_dict(model.state_dict(), strict=True)
    with torch.inference_mode():
        assert torch.equal(again.eval()(torch.from_numpy(image)[None, None]), labels)


def test_an_exported_builtin_passes_bioimageio_model_test(tmp_path):
    core = pytest.importorskip(
        "bioimageio.core", reason="the bioimageio extra: pip install 'cellstack[bioimageio]'"
    )
    out = tmp_path / "nuclei.zip"
    assert main(["export", "nuclei", str(out), "--format", "bioimageio"]) == 0
    names = set(zipfile.ZipFile(out).namelist())
    assert {"rdf.yaml", "weights.pt", "test_input.npy", "test_output.npy", "cover.png"} <= names
    readme = zipfile.ZipFile(out).read("README.md").decode()
    assert "Licences of what this model was trained from" in readme  # card and licences
    summary = core.test_model(str(out))
    assert summary.status == "passed", summary.format()


def test_bioimageio_refusals_are_one_line(tmp_path, monkeypatch, capsys):
    assert main(["export", "nuclei", str(tmp_path / "n.onnx"), "--format", "bioimageio"]) == 2
    assert "ends in .zip" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "bioimageio.spec", None)
    assert main(["export", "nuclei", str(tmp_path / "n.zip"), "--format", "bioimageio"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'cellstack[bioimageio]'" in err
    assert not (tmp_path / "n.zip").exists()
