"""The shipped configs: each loads, and the original's models are what the recipe says."""

from pathlib import Path

import pytest
import yaml

from cellstack.config import load_config
from cellstack.modeling.backbone import KNOWN_BACKBONES

CONFIGS = Path(__file__).parents[1] / "configs"
ORIGINAL = sorted((CONFIGS / "original").glob("*_*.yaml"))


def test_every_original_model_has_a_pretraining_and_a_finetuning_config():
    assert len(ORIGINAL) == 12
    for path in ORIGINAL:
        ft = load_config(path)
        pre = load_config(CONFIGS / "original" / "livecell" / path.name)
        arch, _, _ = path.stem.partition("_")
        assert ft.model.arch == pre.model.arch == arch
        assert ft.model.backbone.name in KNOWN_BACKBONES
        # Same network; only where its weights start differs.
        assert ft.model.rpn == pre.model.rpn and ft.model.roi == pre.model.roi
        assert pre.model.backbone.pretrained and not ft.model.backbone.pretrained
        assert ft.init.from_run == f"runs/livecell/{path.stem}"
        assert pre.data.splits == ("train", "test") and pre.data.val_split == "val"
        assert ft.train.loss_decay and not pre.train.loss_decay
        assert ft.data.augment.flip_paste == (0.0 if arch == "htc" else 0.3)


def test_original_ensemble_lists_shipped_models_six_per_type():
    spec = yaml.safe_load((CONFIGS / "original" / "ensemble.yaml").read_text())
    names = {Path(m).name for m in spec["models"]}
    assert names <= {p.stem for p in ORIGINAL}
    assert {k: len(v) for k, v in spec["type_models"].items()} == {
        "shsy5y": 6,
        "astro": 6,
        "cort": 6,
    }
    assert all(m in spec["models"] for v in spec["type_models"].values() for m in v)


@pytest.mark.parametrize("path", [CONFIGS / "demo.yaml"])
def test_demo_config_loads(path):
    assert load_config(path).train.iterations > 0


def test_each_post_processing_key_is_defined_once():
    """The predict section owns the post-processing keys: thresholds files, the tune
    grid and override parsing take its fields, defaults and range rules."""
    import dataclasses

    from cellstack.config import PostprocessParams, PredictConfig
    from cellstack.config.schema import POSTPROCESS_RULES
    from cellstack.inference.thresholds import override_keys
    from cellstack.inference.tune import KEYS

    predict = {f.name: f.default for f in dataclasses.fields(PredictConfig)}
    for f in dataclasses.fields(PostprocessParams):
        assert predict[f.name] == f.default, f.name
    assert set(KEYS) <= set(predict)
    assert all(rule in PredictConfig.RULES for rule in POSTPROCESS_RULES)
    assert PostprocessParams.RULES is POSTPROCESS_RULES
    # An override is read by the typed parser, spaces and all.
    assert override_keys(["predict.score_thresh = 0.5", "train.lr=1"]) == ["score_thresh"]
