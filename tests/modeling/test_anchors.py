"""Test-time proposal budgets: a dense tile is not capped by a fixed count."""

from __future__ import annotations

import torch

from cellstack.config import load_config
from cellstack.data.stats import ObjectStats
from cellstack.modeling.anchors import ProposalParams, select_proposals
from cellstack.modeling.build import build_model, proposal_density
from tests.modeling.conftest import TINY, random_rpn_outputs

STATS = ObjectStats(
    images=4,
    objects=400,
    diameter_p5=8.0,
    diameter_median=12.0,
    diameter_p95=18.0,
    box_p5=9.0,
    box_median=13.0,
    box_p95=20.0,
    area_p1=30.0,
    max_objects_per_image=100,  # in a 256 x 256 image: 1526 per megapixel
    max_objects_per_megapixel=1525.88,
    max_image_side=256,
)


def test_the_budget_grows_with_the_area_and_never_below_the_fixed_counts():
    fixed = ProposalParams(pre_nms_top_n=200, post_nms_top_n=100)
    assert fixed.budget(10**8) == (200, 100)  # no density: the counts
    dense = ProposalParams(pre_nms_top_n=200, post_nms_top_n=100, per_megapixel=1000.0)
    assert dense.budget(50_000) == (200, 100)  # asks for 50: the counts
    assert dense.budget(10**6) == (2000, 1000)  # pre in proportion
    assert ProposalParams(post_nms_top_n=None, per_megapixel=1e6).budget(10**6)[1] is None


def test_a_tile_gets_the_budget_of_the_smaller_tiles_it_covers():
    proposals = proposal_density(1000, STATS)
    # The densest training image's 100 objects had 1000 proposals: ten per object.
    assert abs(proposals * 256 * 256 / 1e6 - 1000) < 1
    params = ProposalParams(pre_nms_top_n=2000, post_nms_top_n=1000, per_megapixel=proposals)
    small, large = params.budget(512 * 512)[1], params.budget(1024 * 1024)[1]
    assert abs(large - 4 * small) <= 4
    assert proposal_density(1000, None) == 0.0
    cfg = load_config(None, [*TINY, "model.rpn.post_nms_top_n_test=1000"])
    model = build_model(cfg.model, ["cell"], cfg.predict, trained_on=STATS)
    assert model.proposal_params.budget(1024 * 1024)[1] > 4 * 1000 - 10  # ~16x the image
    assert build_model(cfg.model, ["cell"], cfg.predict).proposal_params.per_megapixel == 0


def test_a_dense_tile_keeps_more_proposals_than_the_fixed_count():
    model = build_model(load_config(None, TINY).model, ["cell"]).eval()
    _, anchors, outputs = random_rpn_outputs(model, torch.zeros(1, 256, 256), seed=0)
    window = [(0.0, 0.0, 256.0, 256.0)]
    coder = model.rpn.box_coder
    fixed = ProposalParams(pre_nms_top_n=100, nms_iou=0.7, post_nms_top_n=50)
    (capped,) = select_proposals(outputs, anchors, coder, window, fixed)
    assert len(capped) == 50
    # 400 per 256 x 256 tile: the cap moves with the area.
    dense = ProposalParams(100, 0.7, 0.0, 50, per_megapixel=400 / (256 * 256) * 1e6)
    (kept,) = select_proposals(outputs, anchors, coder, window, dense)
    assert len(kept) == 400
