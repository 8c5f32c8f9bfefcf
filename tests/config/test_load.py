import dataclasses

import pytest

from cellstack.config import (
    Config,
    ConfigError,
    load_config,
    parse_override,
    save_config,
)


def test_defaults_follow_the_original_recipe():
    cfg = load_config(None)
    assert cfg.model.backbone.stem_stride == 1
    assert cfg.model.rpn.aspect_ratios == (0.5, 1.0, 2.0)
    assert cfg.model.roi.mask_pool * 2 == 28
    assert (cfg.train.optimizer, cfg.train.lr, cfg.train.grad_clip) == ("adamw", 2e-4, 10.0)
    assert cfg.predict.mask_thresh == 0.45


def test_yaml_overrides_and_round_trip(tmp_path):
    (tmp_path / "c.yaml").write_text(
        "model:\n  backbone: {name: resnet18}\ntrain:\n  iterations: 10\n  lr: 1\n"
    )
    cfg = load_config(
        tmp_path / "c.yaml", ["train.lr=1e-3", "data.fold=2", "model.rpn.aspect_ratios=[1]"]
    )
    assert cfg.model.backbone.name == "resnet18"
    assert cfg.train.iterations == 10 and cfg.train.lr == 1e-3 and isinstance(cfg.train.lr, float)
    assert cfg.data.fold == 2 and cfg.model.rpn.aspect_ratios == (1.0,)
    save_config(cfg, tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml") == cfg
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train = None


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lrr=1", "unknown config key train.lrr"),
        ("train.iterations=ten", "train.iterations: expected int"),
        ("model.arch=yolo", "not one of maskrcnn, cascade, htc"),
        ("data.fold=7", "data.fold must be in 0..4"),
        ("nonsense", "must look like section.key=value"),
        ("train.lr=-1", "train.lr must be positive"),
    ],
)
def test_bad_values_are_named(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "none.yaml")
    (tmp_path / "bad.yaml").write_text("train: [unclosed")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    assert parse_override("predict.min_size=0") == ("predict.min_size", 0)
    assert isinstance(Config(), Config)
