import copy

import pytest
import torch

from cellstack.config import load_config
from cellstack.errors import CellstackError
from cellstack.inference.ensemble import ORIGINAL_TYPE_SETTINGS, Ensemble, StageSettings
from cellstack.inference.postprocess import majority_type
from cellstack.inference.tta import FLIPS
from cellstack.modeling.anchors import ProposalParams
from cellstack.modeling.build import build_model
from cellstack.modeling.heads.base import BoxParams
from tests.modeling.conftest import TINY, two_cells

CLASSES = ["shsy5y", "astro", "cort"]


def _model(arch="maskrcnn", *extra, seed=0):
    torch.manual_seed(seed)
    cfg = load_config(
        None,
        [
            *TINY,
            f"model.arch={arch}",
            "predict.box_score_thresh=0",
            "predict.max_detections=60",
            "model.rpn.post_nms_top_n_test=200",
            *extra,
        ],
    )
    return build_model(cfg.model, CLASSES, cfg.predict).eval()


def _images():
    img, _ = two_cells()
    return [img, img[:, :50, :70].flip(-1).contiguous()]


def _same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.image_size == y.image_size
        assert len(x) > 0
        assert torch.equal(x.labels, y.labels)
        # Equal up to float rounding: the ensemble runs the heads image by image, so
        # convolutions see a different batch size.
        for name in ("boxes", "scores", "roi_masks"):
            assert torch.allclose(getattr(x, name), getattr(y, name), atol=1e-5), name


@pytest.mark.parametrize("arch", ["maskrcnn", "cascade", "htc"])
def test_one_model_without_flips_is_that_model(arch):
    model = _model(arch)
    with torch.no_grad():
        _same(Ensemble([model]).eval()(_images()), model(_images()))


def test_identical_models_give_the_single_model():
    model = _model("cascade")
    with torch.no_grad():
        single = model(_images())
        _same(
            Ensemble([model, copy.deepcopy(model), copy.deepcopy(model)]).eval()(_images()), single
        )


def test_mixed_archs_and_four_flips_merge():
    models = [_model("maskrcnn", seed=1), _model("cascade", seed=2), _model("htc", seed=3)]
    for rpn_flips in (False, True):
        ens = Ensemble(models, flips=tuple(FLIPS.values()), rpn_flips=rpn_flips).eval()
        out = ens(_images())
        assert [o.image_size for o in out] == [(64, 96), (50, 70)]
        for o in out:
            assert o.roi_masks.shape[1:] == (28, 28) and len(o) > 0
            assert (o.roi_masks >= 0).all() and (o.roi_masks <= 1).all()
            assert (o.boxes[:, 2] <= o.image_size[1]).all() and (
                o.boxes[:, 3] <= o.image_size[0]
            ).all()
    # A perfectly symmetric image: the 4-flip ensemble's proposals, boxes and masks are
    # averaged over mirrored views, so its output is itself mirror-symmetric.
    img = torch.full((1, 64, 64), 0.5)
    img[:, 16:48, 16:48] = 0.9
    ens = Ensemble([models[0]], flips=tuple(FLIPS.values()), rpn_flips=True).eval()
    (a,) = ens([img])
    (b,) = ens([img.flip(-1)])
    assert torch.allclose(a.scores.sort().values, b.scores.sort().values, atol=1e-4)


def test_per_type_settings_and_models():
    models = [_model("maskrcnn", seed=1), _model("cascade", seed=2)]
    with torch.no_grad():
        default_out = Ensemble(models).eval()(_images())
        cell_type = majority_type(default_out[0].labels, CLASSES)
        strict = StageSettings(ProposalParams(50, 0.5, 0.0, 20), BoxParams(0.0, 0.3, 5))
        out = Ensemble(models, type_settings={cell_type: strict}).eval()(_images())
        assert len(out[0]) <= 5 < len(default_out[0])
        only_second = Ensemble(models, type_models={cell_type: [1]}).eval()(_images())
        assert not torch.equal(only_second[0].roi_masks, default_out[0].roi_masks)
    assert set(ORIGINAL_TYPE_SETTINGS) == set(CLASSES)
    assert ORIGINAL_TYPE_SETTINGS["cort"].proposals.score_thresh == 0.95


def test_incompatible_models_and_settings_fail_clearly():
    with pytest.raises(CellstackError, match="same anchors and FPN strides"):
        Ensemble([_model(), _model("maskrcnn", "model.backbone.stem_stride=2")])
    with pytest.raises(CellstackError, match="same anchors"):
        Ensemble([_model(), _model("maskrcnn", "model.rpn.anchor_scale=4")])
    other = build_model(load_config(None, TINY).model, ["a", "b", "c"])
    with pytest.raises(CellstackError, match="has classes a, b, c"):
        Ensemble([_model(), other])
    with pytest.raises(CellstackError, match="cell type 'neuron'"):
        Ensemble([_model()], type_settings={"neuron": StageSettings()})
    with pytest.raises(CellstackError, match="out of range"):
        Ensemble([_model()], type_models={"astro": [3]})
