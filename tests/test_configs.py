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
