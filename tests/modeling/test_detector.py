import pytest
import torch

from cellstack.config import load_config
from cellstack.errors import CellstackError
from cellstack.modeling.build import build_model
from tests.modeling.conftest import TINY, two_cells

ARCHS = ("maskrcnn", "cascade", "htc")
STAGE_LOSSES = [f"s{i}.{k}" for i in range(3) for k in ("cls", "box", "mask")]
LOSS_NAMES = {
    "maskrcnn": {"rpn_cls", "rpn_box", "cls", "box", "mask"},
    "cascade": {"rpn_cls", "rpn_box", *STAGE_LOSSES},
    "htc": {"rpn_cls", "rpn_box", *STAGE_LOSSES, "semantic"},
}


def arch_cfg(arch):
    return load_config(None, [*TINY, f"model.arch={arch}"])


@pytest.mark.parametrize("arch", ARCHS)
def test_overfits_two_cells_and_predicts_them(arch):
    torch.manual_seed(0)
    model = build_model(arch_cfg(arch).model, ["dark", "bright"])
    img, target = two_cells()
    opt = torch.optim.AdamW(model.parameters(), 2e-3)
    model.train()
    first = None
    for _ in range(60):
        losses = model([img, img.flip(-1)], [target, _flip_target(target, img.shape[-1])])
        loss = sum(losses.values())
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert set(losses) == LOSS_NAMES[arch]
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    assert loss.item() < 0.5 * first
    model.eval()
    with torch.no_grad():
        (pred,) = model([img])
    assert pred.roi_masks.shape[1:] == (28, 28)
    from torchvision.ops import box_iou

    confident = pred[pred.scores > 0.5]
    # Every cell is found by a confident box.
    assert box_iou(confident.boxes, target["boxes"]).max(dim=0).values.min() > 0.5


def _flip_target(t, w):
    boxes = t["boxes"].clone()
    boxes[:, [0, 2]] = w - t["boxes"][:, [2, 0]]
    return {"boxes": boxes, "labels": t["labels"], "masks": t["masks"].flip(-1)}


@pytest.mark.parametrize("arch", ARCHS)
def test_empty_targets_train_and_empty_images_predict(arch):
    model = build_model(arch_cfg(arch).model, ["cell"])
    img = torch.full((1, 40, 50), 0.5)
    empty = {
        "boxes": torch.zeros(0, 4),
        "labels": torch.zeros(0, dtype=torch.int64),
        "masks": torch.zeros(0, 40, 50, dtype=torch.uint8),
    }
    model.train()
    losses = model([img], [empty])
    assert set(losses) == LOSS_NAMES[arch]
    assert all(torch.isfinite(v) for v in losses.values())
    for name, value in losses.items():
        if name.endswith(("box", "mask")):
            assert value.item() == 0
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        (pred,) = model([img])
    assert pred.image_size == (40, 50)


def test_bad_inputs(tiny_cfg):
    with pytest.raises(CellstackError, match="at least one class"):
        build_model(tiny_cfg.model, [])
    model = build_model(tiny_cfg.model, ["cell"]).eval()
    with pytest.raises(CellstackError, match="C = 1 or 3"):
        model([torch.rand(2, 30, 30)])
