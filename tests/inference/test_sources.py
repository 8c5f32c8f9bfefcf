"""Which thresholds apply: one rule (config -> ensemble YAML -> thresholds.yaml ->
overrides), whoever asks."""

from __future__ import annotations

import shutil

import cellstack
from cellstack.config import load_config
from cellstack.inference.postprocess import PostprocessParams, Thresholds
from cellstack.inference.sources import load_source, resolve_thresholds, write_thresholds


def test_the_order_config_ensemble_tuned_overrides(tmp_path):
    cfg = load_config(None, ["predict.score_thresh=0.2"])
    assert resolve_thresholds(cfg).default.score_thresh == 0.2
    post = {"default": {"mask_thresh": 0.6}, "per_type": {"astro": {"min_size": 50}}}
    merged = resolve_thresholds(cfg, post=post)
    assert merged.default.score_thresh == 0.2 and merged.default.mask_thresh == 0.6
    assert merged.per_type["astro"].min_size == 50
    tuned = Thresholds(PostprocessParams(score_thresh=0.7))
    assert resolve_thresholds(cfg, post=post, tuned=tuned) is tuned
    assert resolve_thresholds(cfg, tuned=tmp_path / "missing.yaml").default.score_thresh == 0.2
    # A post-processing override beats both; any other override does not.
    over = load_config(None, ["predict.score_thresh=0.4"])
    got = resolve_thresholds(over, ["predict.score_thresh=0.4"], post=post, tuned=tuned)
    assert got.default.score_thresh == 0.4 and not got.per_type
    other = ["model.rpn.nms_iou=0.5"]
    assert resolve_thresholds(cfg, other, tuned=tuned) is tuned


def test_runs_segmenters_and_overrides_follow_it(base_run, tmp_path):
    run = shutil.copytree(base_run, tmp_path / "run")
    tuned = Thresholds(PostprocessParams(score_thresh=0.65, mask_thresh=0.55))
    write_thresholds(run / "thresholds.yaml", tuned)
    assert load_source(run).thresholds == tuned
    seg = cellstack.Segmenter.load(run, device="cpu")
    assert seg.predictor.thresholds == tuned
    over = cellstack.Segmenter.load(run, device="cpu", overrides=["predict.score_thresh=0.1"])
    assert over.predictor.thresholds.default.score_thresh == 0.1
    assert over.predictor.thresholds.default.mask_thresh != 0.55  # the config's, not tuned
