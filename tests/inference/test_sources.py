"""Which thresholds apply: one rule (config -> ensemble YAML -> thresholds.yaml ->
overrides), whoever asks."""

from __future__ import annotations

import shutil

import cellstack
from cellstack.config import ThresholdsSpec, load_config
from cellstack.inference.postprocess import PostprocessParams
from cellstack.inference.sources import load_source
from cellstack.inference.thresholds import Thresholds, resolve_thresholds, write_thresholds


def test_the_order_config_ensemble_tuned_overrides(tmp_path):
    cfg = load_config(None, ["predict.score_thresh=0.2"])
    assert resolve_thresholds(cfg).default.score_thresh == 0.2
    post = ThresholdsSpec({"mask_thresh": 0.6}, {"astro": {"min_size": 50}})
    merged = resolve_thresholds(cfg, post=post)
    assert merged.default.score_thresh == 0.2 and merged.default.mask_thresh == 0.6
    assert merged.per_type["astro"].min_size == 50
    tuned = Thresholds(PostprocessParams(score_thresh=0.7))
    assert resolve_thresholds(cfg, post=post, tuned=tuned) is tuned
    assert resolve_thresholds(cfg, tuned=tmp_path / "missing.yaml").default.score_thresh == 0.2
    # A post-processing override changes that key alone; any other override nothing.
    over = load_config(None, ["predict.score_thresh=0.4"])
    got = resolve_thresholds(over, ["predict.score_thresh=0.4"], post=post, tuned=tuned)
    assert got == Thresholds(PostprocessParams(score_thresh=0.4))
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
    assert over.predictor.thresholds.default.mask_thresh == 0.55  # the tuned value stays


def test_an_override_of_one_key_keeps_every_other_tuned_value():
    tuned = Thresholds(
        PostprocessParams(mask_thresh=0.7, score_thresh=0.6, mask_nms_iou=0.2, min_size=33),
        {
            "astro": PostprocessParams(
                mask_thresh=0.3, score_thresh=0.2, min_size=80, convex_refill=True
            )
        },
    )
    cfg = load_config(None, ["predict.score_thresh=0.5"])
    got = resolve_thresholds(cfg, ["predict.score_thresh=0.5"], tuned=tuned)
    want_default = PostprocessParams(
        mask_thresh=0.7, score_thresh=0.5, mask_nms_iou=0.2, min_size=33
    )
    want_astro = PostprocessParams(
        mask_thresh=0.3, score_thresh=0.5, min_size=80, convex_refill=True
    )
    assert got == Thresholds(want_default, {"astro": want_astro})
    # Two keys, given twice: the last value of each, the rest still tuned.
    cfg = load_config(None, ["predict.min_size=5", "predict.mask_thresh=0.4", "predict.min_size=9"])
    got = resolve_thresholds(
        cfg,
        ["predict.min_size=5", "predict.mask_thresh=0.4", "predict.min_size=9"],
        tuned=tuned,
    )
    assert got.default == PostprocessParams(
        mask_thresh=0.4, score_thresh=0.6, mask_nms_iou=0.2, min_size=9
    )
    assert got.per_type["astro"].score_thresh == 0.2 and got.per_type["astro"].min_size == 9


def test_loading_a_source_resolves_its_run_once_and_reads_its_stats_once(base_run, monkeypatch):
    """One load: the folder is resolved by ``load_source`` alone, ``data_stats.json``
    read once, and the sizes the model predicts with come from that one reading."""
    from cellstack.modeling import builtin, runfolder

    calls = {"resolve": 0, "stats": 0}
    resolve, read = builtin.resolve_run, runfolder.read_data_stats

    def counting_resolve(*args, **kwargs):
        calls["resolve"] += 1
        return resolve(*args, **kwargs)

    def counting_read(*args, **kwargs):
        calls["stats"] += 1
        return read(*args, **kwargs)

    monkeypatch.setattr(builtin, "resolve_run", counting_resolve)
    monkeypatch.setattr(runfolder, "read_data_stats", counting_read)
    src = load_source(base_run)
    assert calls == {"resolve": 1, "stats": 1}
    assert src.diameter is not None and src.diameter > 0
