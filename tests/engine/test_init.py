"""``init.from=RUN``: finetuning from a trained run (e.g. LIVECell-pretrained)."""

import pytest
import torch

from cellstack.config import load_config
from cellstack.data.synthetic import synthesize
from cellstack.engine.init_from import init_from_run
from cellstack.engine.trainer import train
from cellstack.errors import CellstackError
from cellstack.modeling.build import build_model
from cellstack.modeling.runfolder import load_run
from tests.conftest import FAST

SHORT = [*FAST, "train.iterations=2", "train.eval_every=100"]


@pytest.fixture(scope="module")
def pretrained(small_data, tmp_path_factory):
    """A 2-iteration run on 3 classes (astro, cort, shsy5y)."""
    run = tmp_path_factory.mktemp("pretrained") / "run"
    train(load_config(None, SHORT), small_data, run, progress=False)
    return run


def test_finetune_from_a_run_with_another_class_count(pretrained, tmp_path, capsys):
    cfg = load_config(None, [*SHORT, f"init.from={pretrained}"])
    model = build_model(cfg.model, ["astro", "cort"], cfg.predict)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    report = init_from_run(model, pretrained)
    _, classes, source = load_run(pretrained)
    assert len(classes) == 3
    class_keys = model.class_specific_keys()
    assert {k.rsplit(".", 1)[0] for k in report.reinitialised} == {
        "roi_heads.stages.0.box_head.cls_score",
        "roi_heads.stages.0.box_head.bbox_pred",
        "roi_heads.stages.0.mask_head.logits",
    }
    assert not report.mismatched and not report.new
    for key, value in model.state_dict().items():
        if key in class_keys:  # fresh, and sized for 2 classes, not 3
            assert torch.equal(value, fresh[key]) and value.shape != source[key].shape
        else:  # backbone, FPN, RPN, box FCs, mask convs: the run's weights
            assert torch.equal(value, source[key]), key
    summary = report.summary()
    assert f"init from {pretrained}: loaded {len(report.loaded)} tensors (backbone" in summary
    assert (
        "re-initialised 3 class layer(s) (the run's classes astro, cort, shsy5y differ)" in summary
    )

    # Through the trainer: finetune on two-class data; the message is printed and the
    # run's config records where it started.
    data = tmp_path / "two_types"
    synthesize(data, 4, seed=5, shape=(96, 112), cell_types=("astro", "cort"), progress=False)
    result = train(cfg, data, tmp_path / "ft", progress=False)
    assert result.iterations == 2
    assert "re-initialised 3 class layer(s)" in capsys.readouterr().out
    ft_cfg, ft_classes, _ = load_run(tmp_path / "ft")
    assert ft_cfg.init.from_run == str(pretrained) and ft_classes == ["astro", "cort"]


def test_same_classes_load_everything_and_another_arch_reports_new_stages(pretrained):
    cfg = load_config(None, SHORT)
    same = build_model(cfg.model, ["astro", "cort", "shsy5y"], cfg.predict)
    report = init_from_run(same, pretrained)
    assert not report.reinitialised and not report.new and not report.mismatched
    cascade = load_config(None, [*SHORT, "model.arch=cascade"])
    model = build_model(cascade.model, ["astro", "cort", "shsy5y"], cascade.predict)
    report = init_from_run(model, pretrained)
    # Mask R-CNN regresses per class, cascade stages class-agnostically: shape differs.
    assert report.mismatched == (
        "roi_heads.stages.0.box_head.bbox_pred.weight",
        "roi_heads.stages.0.box_head.bbox_pred.bias",
    )
    assert report.new and all(
        k.startswith(("roi_heads.stages.1", "roi_heads.stages.2")) for k in report.new
    )
    assert "not in the run, left at their initialisation" in report.summary()


def test_nothing_fits_or_no_run_is_a_clear_error(pretrained, tmp_path):
    other = load_config(
        None,
        [
            *SHORT,
            "model.backbone.name=efficientnet_b0",
            "model.backbone.fpn_channels=8",
            "model.roi.fc_dim=16",
            "model.roi.mask_dim=8",
        ],
    )
    model = build_model(other.model, ["a"], other.predict)
    with pytest.raises(CellstackError, match="no weight of that run fits this model") as exc:
        init_from_run(model, pretrained)
    assert "--config configs/finetune.yaml" in str(exc.value)  # says how to fit it
    with pytest.raises(CellstackError, match="run folder not found"):
        init_from_run(model, tmp_path / "nowhere")
