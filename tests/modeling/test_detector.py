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


def arch_cfg(arch, *more):
    return load_config(None, [*TINY, f"model.arch={arch}", *more])


@pytest.mark.parametrize(
    "arch, more", [*((a, ()) for a in ARCHS), ("maskrcnn", ("model.roi.mask_norm=group",))]
)
def test_overfits_two_cells_and_predicts_them(arch, more):
    torch.manual_seed(0)
    model = build_model(arch_cfg(arch, *more).model, ["dark", "bright"])
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


@pytest.mark.parametrize("arch", ARCHS)
def test_mask_norm_puts_group_norm_in_the_mask_heads_only(arch):
    def group_norms(module):
        return sum(isinstance(m, torch.nn.GroupNorm) for m in module.modules())

    plain = build_model(arch_cfg(arch).model, ["cell"])
    normed = build_model(arch_cfg(arch, "model.roi.mask_norm=group").model, ["cell"])
    assert group_norms(plain) == 0
    heads = [s.mask_head for s in normed.roi_heads.stages if s.mask_head is not None]
    # One GroupNorm after each of the head's convolutions (TINY: one), nowhere else.
    assert [group_norms(h) for h in heads] == [1] * len(heads)
    assert group_norms(normed) == len(heads)


def _flip_target(t, w):
    boxes = t["boxes"].clone()
    boxes[:, [0, 2]] = w - t["boxes"][:, [2, 0]]
    return {"boxes": boxes, "classes": t["classes"], "masks": t["masks"].flip(-1)}


@pytest.mark.parametrize("arch", ARCHS)
def test_empty_targets_train_and_empty_images_predict(arch):
    model = build_model(arch_cfg(arch).model, ["cell"])
    img = torch.full((1, 40, 50), 0.5)
    empty = {
        "boxes": torch.zeros(0, 4),
        "classes": torch.zeros(0, dtype=torch.int64),
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


def test_feature_autocast_runs_the_backbone_in_low_precision_and_returns_float32():
    """The dtype handling of inference AMP (float16 on CUDA), checked on CPU with
    bfloat16: features come back float32, the heads and outputs stay float32, and the
    detections are near the float32 ones."""
    cfg = load_config(None, [*TINY, "predict.box_score_thresh=0", "predict.max_detections=50"])
    torch.manual_seed(0)
    model = build_model(cfg.model, ["a", "b"], cfg.predict).eval()
    img, _ = two_cells()
    seen = []
    hook = model.backbone.fpn.register_forward_hook(
        lambda m, i, o: seen.append(next(iter(o.values())).dtype)
    )
    with torch.no_grad():
        (full,) = model([img])
        feats = model.features(model.preprocess([img]))
        model.feature_autocast = torch.bfloat16
        low_feats = model.features(model.preprocess([img]))
        (low,) = model([img])
    hook.remove()
    assert seen[:2] == [torch.float32, torch.float32] and seen[2] == torch.bfloat16
    assert all(v.dtype == torch.float32 for v in low_feats.values())
    for k in feats:
        assert torch.allclose(feats[k], low_feats[k], atol=0.1, rtol=0.05)
    assert low.boxes.dtype == low.scores.dtype == low.roi_masks.dtype == torch.float32
    assert len(low) > 0 and abs(len(low) - len(full)) <= 0.2 * len(full)
    # Training ignores it (the trainer has its own autocast).
    model.train()
    assert next(iter(model.features(model.preprocess([img])).values())).dtype == torch.float32


def test_inference_runs_channels_last_on_cpu_with_the_same_detections():
    """Inference on CPU computes in channels-last memory (faster oneDNN convolutions):
    the same features and detections as the default layout, and training untouched."""
    from cellstack.modeling.heads import base, layers

    cfg = load_config(None, [*TINY, "predict.box_score_thresh=0", "predict.max_detections=50"])
    torch.manual_seed(0)
    model = build_model(cfg.model, ["a", "b"], cfg.predict).eval()
    img, _ = two_cells()
    batch = model.preprocess([img])
    with torch.no_grad():
        feats = model.features(batch)
        plain = model.backbone(batch.tensors)
        (fast,) = model([img])
        layout = layers.inference_layout
        base.inference_layout = lambda x: x  # the mask head's input as pooled
        try:
            (slow,) = model([img])
        finally:
            base.inference_layout = layout
    assert all(v.is_contiguous(memory_format=torch.channels_last) for v in feats.values())
    for k in feats:
        assert torch.allclose(feats[k], plain[k], atol=1e-5)
    assert len(fast) == len(slow) > 0
    assert torch.allclose(fast.roi_masks, slow.roi_masks, atol=1e-5)
    model.train()
    train_feats = model.features(model.preprocess([img]))
    assert all(v.is_contiguous() for v in train_feats.values())
