"""init.from a one-class (generalist) run: every new class starts as its class."""

from __future__ import annotations

import math

import torch

from cellstack.config import load_config
from cellstack.engine.init_from import init_from_run
from cellstack.modeling import runfolder
from cellstack.modeling.build import build_model
from tests.modeling.conftest import TINY


def test_a_one_class_run_seeds_every_class(tmp_path):
    cfg = load_config(None, [*TINY, "model.rpn.anchor_scale=4", "predict.max_detections=50"])
    torch.manual_seed(1)
    source = build_model(cfg.model, ["cell"], cfg.predict)
    run = tmp_path / "generalist"
    run.mkdir()
    runfolder.save(runfolder.final_state(source.state_dict(), cfg, ["cell"]), run / runfolder.FINAL)
    torch.manual_seed(2)
    model = build_model(cfg.model, ["a", "b", "c"], cfg.predict)
    report = init_from_run(model, run)
    assert report.seeded and not report.reinitialised
    assert "start from the run's one class 'cell'" in report.summary()
    src, dst = source.state_dict(), model.state_dict()
    for key in report.seeded:
        layer = key.rsplit(".", 2)[-2]
        if layer == "cls_score":
            assert torch.equal(dst[key][0], src[key][0])  # background as it was
            for k in (1, 2, 3):
                expect = src[key][1] - (math.log(3) if key.endswith("bias") else 0)
                assert torch.allclose(dst[key][k], expect)
        elif layer == "bbox_pred":
            for k in (1, 2, 3):
                assert torch.equal(dst[key][4 * k : 4 * k + 4], src[key][4:8])
        else:  # mask logits
            for k in range(3):
                assert torch.equal(dst[key][k], src[key][0])
    # P(background) is the run's: the classes share its foreground probability.
    feats = torch.randn(5, src[next(k for k in report.seeded if "cls_score.weight" in k)].shape[1])
    wkey = next(k for k in report.seeded if k.endswith("cls_score.weight"))
    bkey = wkey.replace("weight", "bias")
    p_src = torch.softmax(feats @ src[wkey].T + src[bkey], -1)[:, 0]
    p_dst = torch.softmax(feats @ dst[wkey].T + dst[bkey], -1)[:, 0]
    assert torch.allclose(p_src, p_dst, atol=1e-6)
