import pytest
import torch
import torch.nn.functional as F

from cellstack.config import ConfigError, load_config
from cellstack.modeling.build import build_model
from cellstack.modeling.heads.htc import semantic_targets
from tests.modeling.conftest import TINY, two_cells


def _model(arch, *extra, classes=("dark", "bright")):
    torch.manual_seed(0)
    return build_model(load_config(None, [*TINY, f"model.arch={arch}", *extra]).model, classes)


def _batch():
    img, target = two_cells()
    return [img, img], [target, target]


def _features(model, images):
    image_list = model.preprocess(images)
    feats = model.features(image_list)
    return image_list, feats, model.roi_heads.prepare(model.roi_levels(feats))


def test_cascade_stages_follow_the_original():
    heads = _model("cascade").roi_heads
    assert [s.fg_iou for s in heads.stages] == [0.5, 0.6, 0.7]
    assert [s.loss_weight for s in heads.stages] == [1.0, 0.5, 0.25]
    assert [s.box_coder.weights[0] for s in heads.stages] == pytest.approx([10, 20, 30.3], 0.01)
    assert all(s.box_head.class_agnostic and s.mask_head is not None for s in heads.stages)
    last_only = _model("cascade", "model.roi.stage_masks=false").roi_heads
    assert [s.mask_head is None for s in last_only.stages] == [True, True, False]
    model = _model("cascade", "model.roi.stage_masks=false").train()
    assert {k for k in model(*_batch()) if k.endswith("mask")} == {"s2.mask"}


def test_stage_loss_weights_scale_each_stage():
    images, targets = _batch()
    losses = {}
    for weights in ("[1,1,1]", "[1,0.5,0.25]"):
        model = _model("cascade", f"model.roi.stage_loss_weights={weights}").train()
        torch.manual_seed(1)  # same RoI sampling in both runs
        losses[weights] = model(images, targets)
    a, b = losses["[1,1,1]"], losses["[1,0.5,0.25]"]
    for name, factor in (("s0.cls", 1), ("s1.box", 0.5), ("s2.mask", 0.25), ("s2.cls", 0.25)):
        assert b[name].item() == pytest.approx(factor * a[name].item(), rel=1e-4)


def test_refined_proposals_are_detached_clipped_and_drop_the_gt_boxes():
    model = _model("cascade").train()
    images, targets = _batch()
    image_list, _, feats = _features(model, images)
    stage = model.roi_heads.stages[0]
    proposals = [torch.tensor([[5.0, 5, 35, 25], [48, 38, 72, 60], [0, 0, 90, 60]])] * 2
    rois = stage.sample(proposals, targets)
    assert all(r.is_gt.sum() == 2 for r in rois)  # both cells added as proposals
    logits, deltas = stage.box_head(model.roi_heads.box_features(feats, [r.boxes for r in rois]))
    refined = stage.refine(rois, logits, deltas, image_list.image_sizes)
    assert [len(r) for r in refined] == [3, 3]
    for r in refined:
        assert not r.requires_grad
        assert (r[:, :2] >= 0).all() and (r[:, 2] <= 96).all() and (r[:, 3] <= 64).all()


def test_cascade_test_scores_average_the_stage_logits_and_boxes_come_from_the_last():
    model = _model("cascade").eval()
    images, _ = _batch()
    _, _, feats = _features(model, images[:1])
    proposals = [torch.tensor([[5.0, 5, 35, 25], [48, 38, 72, 60], [20, 10, 60, 50]])]
    with torch.no_grad():
        (pred,) = model.roi_heads.predict_boxes(feats, proposals, [(0, 0, 96, 64)])
        boxes, logit_sum = proposals, 0
        for stage in model.roi_heads.stages:
            logits, deltas = stage.box_head(model.roi_heads.box_features(feats, boxes))
            logit_sum = logit_sum + logits
            decoded = stage.box_coder.decode(deltas, boxes)[:, 0]
            boxes = [decoded.clamp(min=0).minimum(torch.tensor([96.0, 64, 96, 64]))]
    assert torch.allclose(pred.probs, F.softmax(logit_sum / 3, dim=1), atol=1e-6)
    for c in range(3):  # class-agnostic: one box for every class
        assert torch.allclose(pred.boxes[:, c], boxes[0], atol=1e-4)


def test_htc_mask_information_flow_reaches_the_last_stage():
    boxes = [torch.tensor([[5.0, 5, 35, 25]])]
    for arch, flows in (("htc", True), ("cascade", False)):
        model = _model(arch).eval()
        images, _ = _batch()
        _, _, feats = _features(model, images[:1])
        with torch.no_grad():
            x = model.roi_heads.mask_features(feats, boxes)
            before = model.roi_heads.mask_logits(x, 2)[-1]
            first = model.roi_heads.stages[0].mask_head
            first.convs[0].weight.add_(torch.randn_like(first.convs[0].weight))
            after = model.roi_heads.mask_logits(x, 2)[-1]
        assert (not torch.allclose(before, after)) == flows, arch


def test_htc_semantic_branch_changes_roi_features_and_learns_foreground():
    model = _model("htc").train()
    images, targets = _batch()
    opt = torch.optim.AdamW(model.parameters(), 2e-3)
    first = None
    for _ in range(30):
        losses = model(images, targets)
        first = first if first is not None else losses["semantic"].item()
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
    assert losses["semantic"].item() < 0.5 * first
    model.eval()
    _, _, feats = _features(model, images[:1])
    assert feats.semantic.shape[-2:] == feats.levels[1].shape[-2:]  # stride 4 level
    prob = torch.sigmoid(feats.semantic_logits[0, 0])
    fg, _ = semantic_targets(targets[:1], tuple(prob.shape), 4)
    assert prob[fg[0] > 0].mean() > prob[fg[0] == 0].mean() + 0.3


def test_semantic_targets_are_the_mask_union_with_padding_ignored():
    a = torch.zeros(2, 8, 12, dtype=torch.uint8)
    a[0, :4, :4] = 1
    a[1, 4:, 8:] = 1
    b = torch.zeros(0, 4, 8, dtype=torch.uint8)  # a smaller image with no cells
    target, valid = semantic_targets([{"masks": a}, {"masks": b}], (4, 6), 2)
    assert target.shape == valid.shape == (2, 4, 6)
    expect = torch.zeros(4, 6)
    expect[:2, :2] = 1
    expect[2:, 4:] = 1
    assert torch.equal(target[0], expect) and valid[0].all()
    assert valid[1, :2, :4].all() and valid[1].sum() == 8 and target[1].sum() == 0


def test_stage_config_is_checked():
    with pytest.raises(ConfigError, match="same length"):
        load_config(None, ["model.roi.stage_ious=[0.5,0.6]"])
    with pytest.raises(ConfigError, match="maskrcnn, cascade, htc"):
        load_config(None, ["model.arch=yolo"])
