"""ONNX export and onnxruntime prediction: the same cells as PyTorch, one-line refusals
(skipped, with the extra named, where onnx or onnxruntime is absent)."""

from __future__ import annotations

import sys

import pytest
import tifffile
import torch

from cellstack.cli import main
from cellstack.config import load_config
from cellstack.data.samples import sample_path
from cellstack.evaluation.metric import score_image
from tests.conftest import FAST

REASON = "the onnx extra: pip install 'cellstack[onnx]'"
IMAGES = sample_path("nuclei") / "images"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The built-in nuclei, exported by the command line."""
    pytest.importorskip("onnx", reason=REASON)
    pytest.importorskip("onnxruntime", reason=REASON)
    out = tmp_path_factory.mktemp("onnx") / "nuclei.onnx"
    assert main(["export", "nuclei", str(out), "--format", "onnx"]) == 0
    return out


def test_an_exported_builtin_finds_the_cells_pytorch_finds(exported):
    from cellstack.inference.segmenter import Segmenter

    plain = Segmenter.load("nuclei", device="cpu")
    onnx = Segmenter.load(exported, device="cpu")
    assert onnx.class_names == plain.class_names
    assert onnx.scale == plain.scale  # the trained sizes travel in the metadata
    for path in sorted(IMAGES.glob("*.tif")):
        image = tifffile.imread(path)
        ref, got = plain(image), onnx(image)
        assert abs(len(got) - len(ref)) <= 0.01 * len(ref) and len(ref) >= 10
        assert score_image(ref.labels, got.labels).score >= 0.99


def test_predict_runs_an_onnx_file_like_its_model(exported, tmp_path):
    args = [str(IMAGES), "--quiet", "--no-overlays"]
    assert main(["predict", "nuclei", *args, "--out", str(tmp_path / "a")]) == 0
    assert main(["predict", str(exported), *args, "--out", str(tmp_path / "b")]) == 0
    for path in sorted((tmp_path / "a" / "labels").iterdir()):
        ref = tifffile.imread(path)
        got = tifffile.imread(tmp_path / "b" / "labels" / path.name)
        assert score_image(ref, got).score >= 0.99


def test_every_branch_of_a_cascade_matches_its_network(small_data, tmp_path):
    """Cascade's three stages, branch by branch: features, RPN, box and mask heads."""
    pytest.importorskip("onnx", reason=REASON)
    pytest.importorskip("onnxruntime", reason=REASON)
    from cellstack.engine.trainer import train
    from cellstack.inference.modelexport import export_onnx
    from cellstack.inference.sources import load_source

    run = tmp_path / "cascade"
    cfg = load_config(None, [*FAST, "model.arch=cascade", "train.iterations=1"])
    train(cfg, small_data, run, progress=False)
    ref = load_source(run).model
    got = load_source(export_onnx(run, tmp_path / "c.onnx")).model
    torch.manual_seed(0)
    image = torch.rand(1, 3, 128, 192)
    with torch.inference_mode():
        feats, feats_onnx = ref.backbone(image), got.backbone(image)
        for a, b in zip(feats.values(), feats_onnx.values(), strict=True):
            torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)
        for a, b in zip(
            ref.rpn.head(list(feats.values())), got.rpn.head(list(feats.values())), strict=True
        ):
            for x, y in zip(a, b, strict=True):
                torch.testing.assert_close(y, x, atol=1e-4, rtol=1e-4)
        channels = ref.backbone.out_channels
        box_x = torch.rand(5, channels, 7, 7)
        mask_x = torch.rand(5, channels, 14, 14)
        stages = list(zip(ref.roi_heads.stages, got.roi_heads.stages, strict=True))
        assert len(stages) == 3
        for a, b in stages:
            for x, y in zip(a.box_head(box_x), b.box_head(box_x), strict=True):
                torch.testing.assert_close(y, x, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(
                b.mask_head(mask_x)[0], a.mask_head(mask_x)[0], atol=1e-4, rtol=1e-4
            )


def test_what_cannot_be_exported_or_loaded_is_refused_in_one_line(
    exported, base_run, tmp_path, capsys
):
    import onnx

    def refused(args: list[str], message: str) -> None:
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err

    ensemble = tmp_path / "ens.yaml"
    ensemble.write_text(f"models: [{base_run}, {base_run}]\n")
    refused(["export", str(ensemble), str(tmp_path / "e.onnx"), "--format", "onnx"], "ensemble")
    refused(["export", "nuclei", str(tmp_path / "e.pt"), "--format", "onnx"], "ends in .onnx")
    images = ["predict", str(exported), str(IMAGES), "--out", str(tmp_path / "p"), "--quiet"]
    refused([*images, "model.roi.fc_dim=8"], "override predict.* settings only")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a graph")
    refused(["predict", str(garbage), str(IMAGES), "--out", str(tmp_path / "g")], "onnxruntime")
    foreign = onnx.load(str(exported))
    del foreign.metadata_props[:]
    onnx.save(foreign, str(tmp_path / "foreign.onnx"))
    refused(
        ["predict", str(tmp_path / "foreign.onnx"), str(IMAGES), "--out", str(tmp_path / "f")],
        "not a cellstack model",
    )
    assert not (tmp_path / "e.onnx").exists() and not (tmp_path / "p" / "labels").exists()


def test_without_the_extra_each_side_names_it(exported, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnx", None)
    assert main(["export", "nuclei", str(tmp_path / "n.onnx"), "--format", "onnx"]) == 2
    assert "pip install 'cellstack[onnx]'" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    args = ["predict", str(exported), str(IMAGES), "--out", str(tmp_path / "p"), "--quiet"]
    assert main(args) == 2
    assert "pip install 'cellstack[onnx]'" in capsys.readouterr().err
    assert not (tmp_path / "n.onnx").exists()
