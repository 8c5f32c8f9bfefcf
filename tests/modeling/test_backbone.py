import os
import subprocess
import sys

import pytest
import torch
from torch import nn

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
    # Offline (the hub library reads HF_HUB_OFFLINE at import, hence a fresh process).
    code = (
        "from cellstack.modeling.backbone import TimmFPN\n"
        "from cellstack.errors import CellstackError\n"
        "try:\n    TimmFPN('resnet18', pretrained=True)\n"
        "except CellstackError as e:\n    print(e)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert "cannot download ImageNet weights for resnet18" in out.stdout
    assert "pretrained_path" in out.stdout
    with pytest.raises(CellstackError, match="unknown backbone"):
        TimmFPN("not_a_net")


def test_frozen_bn_stays_in_eval_mode():
    model = TimmFPN("resnet18", out_channels=8, freeze_bn=True).train()
    bns = [m for m in model.body.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(not m.training for m in bns)
    assert all(not p.requires_grad for m in bns for p in m.parameters())
