"""One walk checks every typed file: choices, ``auto`` keys, each section's rules, then
the generic number rules, in that order, with the key named."""

import dataclasses

import pytest

from cellstack.config import (
    ConfigError,
    EnsembleConfig,
    Rule,
    build_typed,
    config_from_dict,
    validate,
)
from cellstack.config.schema import AUTO, at_least


def test_every_section_states_its_choices_and_rules_beside_its_fields():
    cfg = config_from_dict({})
    sections = [cfg.model, cfg.model.backbone, cfg.model.rpn, cfg.model.roi]
    sections += [cfg.data, cfg.train, cfg.predict]
    for section in sections:
        names = {f.name for f in dataclasses.fields(section)}
        for f in dataclasses.fields(section):
            choices = f.metadata.get("choices")
            if choices is not None:
                assert f.default in choices, f.name  # the default is allowed
        # the defaults pass their section's rules
        assert all(rule.ok(section) for rule in getattr(section, "RULES", ())), names
    validate(cfg)  # and the whole default config its checks


def test_rules_name_the_dotted_key_at_any_depth():
    with pytest.raises(ConfigError, match=r"^model\.roi\.semantic_level must be 0-3, got 5$"):
        config_from_dict({"model": {"roi": {"semantic_level": 5}}})
    with pytest.raises(ConfigError, match=r"^train\.ema must be in \[0, 1\)"):
        config_from_dict({}, ["train.ema=1"])


def test_order_choices_then_rules_then_numbers():
    # an unknown choice is reported before a broken rule, a rule before a generic range
    with pytest.raises(ConfigError, match="not one of"):
        config_from_dict({}, ["model.arch=yolo", "train.lr=-1"])
    with pytest.raises(ConfigError, match="train.lr must be positive"):
        config_from_dict({}, ["train.lr=-1", "predict.score_thresh=2"])
    with pytest.raises(ConfigError, match=r"config key predict\.score_thresh: must be in \[0, 1\]"):
        config_from_dict({}, ["predict.score_thresh=2"])


def test_auto_passes_the_size_rules_and_only_auto_is_a_string():
    assert at_least(AUTO, 32) and not at_least(8, 32) and at_least(0, 0)
    assert not at_least(0, 0, open_=True)
    validate(config_from_dict({}, ["data.crop_size=auto", "predict.min_size=auto"]))
    with pytest.raises(ConfigError, match="expected a number or 'auto', got 'big'"):
        config_from_dict({}, ["data.crop_size=big"])


def test_a_typed_file_goes_through_the_same_walk_naming_its_source():
    with pytest.raises(ConfigError, match=r"^e\.yaml: feature_dtype must be float32, float16"):
        build_typed(EnsembleConfig, {"models": ["a"], "feature_dtype": "int8"}, "e.yaml")
    with pytest.raises(ConfigError, match=r"^e\.yaml: key feature_cache_mb: must be a finite"):
        build_typed(EnsembleConfig, {"models": ["a"], "feature_cache_mb": float("inf")}, "e.yaml")
    assert build_typed(EnsembleConfig, {"models": ["a"]}, "e.yaml").models == ("a",)


def test_a_rule_message_is_a_text_or_a_function_of_the_values():
    assert Rule(bool, "{p}x must be set").text(None, "train.") == "train.x must be set"
    rule = Rule(bool, lambda s, p: f"{p}fold is {s}")
    assert rule.text(3, "data.") == "data.fold is 3"
