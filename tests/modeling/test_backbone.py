import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from cellstack.data.synthetic import synthesize
from cellstack.errors import CellstackError
from cellstack.modeling.backbone import KNOWN_BACKBONES, TimmFPN


@pytest.mark.slow
@pytest.mark.parametrize("name", KNOWN_BACKBONES)
def test_every_backbone_builds_and_runs_on_64px(name):
    torch.manual_seed(0)
    model = TimmFPN(name, stem_stride=1, out_channels=16).eval()
    with torch.no_grad():
        feats = model(torch.rand(1, 3, 64, 64))
    assert list(feats) == ["0", "1", "2", "3", "pool"]
    assert model.strides == (2, 4, 8, 16, 32)
    for f, s in zip(feats.values(), model.strides, strict=True):
        assert f.shape == (1, 16, 64 // s, 64 // s)
        assert torch.isfinite(f).all()


def test_stem_stride_two_keeps_timm_strides():
    model = TimmFPN("resnet18", stem_stride=2, out_channels=8)
    assert model.strides == (4, 8, 16, 32, 64)


def test_pretrained_from_local_file_and_offline_errors(tmp_path):
    import timm

    source = timm.create_model("resnet18", pretrained=False)
    torch.save(source.state_dict(), tmp_path / "r18.pth")
    model = TimmFPN("resnet18", pretrained_path=str(tmp_path / "r18.pth"), out_channels=8)
    assert torch.equal(model.body.conv1.weight, source.conv1.weight)
    with pytest.raises(CellstackError, match="weights file not found"):
        TimmFPN("resnet18", pretrained_path=str(tmp_path / "none.pth"))
    # Asking for ImageNet weights with no network and no file: one clear line, exit 2.
    # HF_HUB_OFFLINE makes the hub client refuse before any network access; it is read
    # at import, hence a fresh process running the CLI as a user would.
    data = tmp_path / "data"
    synthesize(data, 1, shape=(64, 64), progress=False)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [
        sys.executable,
        "-m",
        "cellstack",
        "train",
        str(data),
        "--out",
        str(tmp_path / "run"),
        "model.backbone.name=resnet18",
        "model.backbone.pretrained=true",
    ]
    out = subprocess.run(command, env=env, capture_output=True, text=True)
    assert out.returncode == 2
    assert "cannot download ImageNet weights for resnet18" in out.stderr
    assert "pretrained_path" in out.stderr and "Traceback" not in out.stderr
    with pytest.raises(CellstackError, match="unknown backbone"):
        TimmFPN("not_a_net")


def test_frozen_bn_stays_in_eval_mode():
    model = TimmFPN("resnet18", out_channels=8, freeze_bn=True).train()
    bns = [m for m in model.body.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(not m.training for m in bns)
    assert all(not p.requires_grad for m in bns for p in m.parameters())
