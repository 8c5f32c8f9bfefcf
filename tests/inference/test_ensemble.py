import copy

import pytest
import torch

from cellstack.config import load_config
from cellstack.errors import CellstackError
from cellstack.inference.ensemble import ORIGINAL_TYPE_SETTINGS, Ensemble, StageSettings
from cellstack.inference.thresholds import majority_type
from cellstack.inference.tta import FLIPS
from cellstack.modeling.anchors import ProposalParams
from cellstack.modeling.build import build_model
from cellstack.modeling.heads.select import BoxParams
from cellstack.structures import Instances
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
        assert torch.equal(x.classes, y.classes)
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
        # The type comes from the type_from models' identity view (default: model 0).
        cell_type = majority_type(models[0](_images())[0].classes, CLASSES)
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
    with pytest.raises(CellstackError, match="type_from: model indices"):
        Ensemble([_model()], type_from=[1])


def _canonical(inst):
    """Detections in an order that does not depend on how ties in score were broken
    (random-weight models give many equal scores): by rounded score, label and box."""
    import numpy as np

    keys = [inst.boxes[:, k].numpy().round(2) for k in (3, 2, 1, 0)]
    keys += [inst.classes.numpy(), -inst.scores.numpy().round(4)]
    return inst[torch.from_numpy(np.lexsort(keys))]


def _reference(models, flips, images, rpn_flips=False):
    """The three-stage merge by its definition: every view's outputs stacked, then
    averaged (what the ensemble computed before it streamed over views)."""
    from torchvision.models.detection.image_list import ImageList

    from cellstack.modeling.anchors import RPNOutputs, select_proposals
    from cellstack.modeling.detector import image_windows
    from cellstack.modeling.heads.results import BoxPredictions
    from cellstack.modeling.heads.select import select_detections

    out = []
    for image in images:
        il = models[0].preprocess([image])
        size = tuple(il.tensors.shape[-2:])
        (window,) = image_windows(il)
        views = []
        for model in models:
            for flip in flips:
                raw = model.features(ImageList(flip.maps(il.tensors), il.image_sizes))
                use = rpn_flips or flip.identity
                views.append((model, flip, raw, flip.rpn(model.rpn_outputs(raw)) if use else None))
        anchors = models[0].level_anchors(il, views[0][2])
        rpns = [v[3] for v in views if v[3] is not None]
        mean = RPNOutputs(
            [torch.stack([r.objectness[k] for r in rpns]).mean(0) for k in range(len(anchors))],
            [torch.stack([r.deltas[k] for r in rpns]).mean(0) for k in range(len(anchors))],
        )
        p = models[0].proposal_params
        (proposals,) = select_proposals(mean, anchors, models[0].rpn.box_coder, [window], p)
        probs, boxes = [], []
        for model, flip, raw, _ in views:
            feats = model.roi_heads.prepare(model.roi_levels(raw))
            (pred,) = model.roi_heads.predict_boxes(
                feats, [flip.boxes(proposals, size)], [flip.window(window, size)]
            )
            probs.append(pred.probs)
            boxes.append(flip.boxes(pred.boxes, size))
        merged = BoxPredictions(proposals, torch.stack(probs).mean(0), torch.stack(boxes).mean(0))
        b, s, lab = select_detections(merged, models[0].box_params)
        masks = []
        for model, flip, raw, _ in views:
            feats = model.roi_heads.prepare(model.roi_levels(raw))
            (m,) = model.roi_heads.predict_masks(feats, [flip.boxes(b, size)], [lab])
            masks.append(flip.maps(m))
        out.append(
            Instances(
                (int(window[3]), int(window[2])),
                boxes=b,
                scores=s,
                classes=lab,
                roi_masks=torch.stack(masks).mean(0),
            )
        )
    return out


@pytest.mark.parametrize("arch", ["maskrcnn", "cascade", "htc"])
@pytest.mark.parametrize("k", [1, 2, 4])
def test_streaming_merge_equals_the_definition(arch, k):
    """Same boxes, scores and masks (1e-5) with no features kept between stages, with
    every view kept, and near them with float16 storage, for k models x 4 flips."""
    models = [_model(arch, seed=s) for s in range(k)]
    with torch.no_grad():
        for model in models:
            # Random heads score many detections exactly alike; spread them, so that
            # float rounding cannot reorder ties and the comparison is exact.
            for name, param in model.named_parameters():
                if "cls_score" in name:
                    param.mul_(20)
    flips = tuple(FLIPS.values())
    with torch.no_grad():
        expected = _reference(models, flips, _images())
        for budget in (0.0, float("inf")):
            _same(
                Ensemble(models, flips=flips, feature_cache_mb=budget).eval()(_images()), expected
            )
        half = Ensemble(
            models, flips=flips, feature_cache_mb=float("inf"), feature_dtype=torch.float16
        ).eval()(_images())
    for h, e in zip(half, expected, strict=True):
        assert len(h) == len(e)
        assert torch.allclose(h.scores, e.scores, atol=2e-2)


def test_memory_budget_decides_what_is_computed_again(monkeypatch):
    """With no budget each view's backbone runs once per stage (minus the view a stage
    hands to the next); with room for every view, once."""
    from cellstack.inference import views as views_module

    models = [_model("maskrcnn", seed=s) for s in range(2)]
    flips = tuple(FLIPS.values())
    passes = []
    real = views_module.ViewCache.raw

    def counted(self, key):
        passes.append(key)
        return real(self, key)

    monkeypatch.setattr(views_module.ViewCache, "raw", counted)
    img = _images()[:1]
    with torch.no_grad():
        Ensemble(models, flips=flips, feature_cache_mb=float("inf")).eval()(img)
        assert len(passes) == 8  # 2 models x 4 flips, once each
        passes.clear()
        Ensemble(models, flips=flips).eval()(img)
        # stage 1: 2 identity views; stage 2: 8 views, 1 handed over; stage 3: 8 - 1.
        assert len(passes) == 2 + 7 + 7


def test_dry_run_plans_stages_views_and_memory(base_run, tmp_path, capsys):
    from cellstack.cli import main

    (tmp_path / "run").symlink_to(base_run)
    (tmp_path / "ens.yaml").write_text(
        "models: [run, run]\nflips: [none, h, v, hv]\ntype_from: [run]\n"
        "type_models: {cort: [run]}\nfeature_cache_mb: 0.5\n"
    )
    assert main(["predict", str(tmp_path / "ens.yaml"), "--dry-run"]) == 0
    plan = capsys.readouterr().out
    assert "type pass (identity view): models [0], 1 views" in plan
    assert "merge, default images: models [0, 1], 8 views (proposals from 2)" in plan
    assert "merge, cort images: models [0], 4 views" in plan
    assert "estimated peak" in plan and "2 models loaded" in plan
    assert main(["predict", str(base_run), "--dry-run", "--dry-run-size", "96", "80"]) == 0
    assert "one 96x80 image: weights" in capsys.readouterr().out
    assert main(["predict", str(base_run)]) == 2
    assert "needs IMAGES and --out" in capsys.readouterr().err


def test_type_from_runs_only_decide_the_type(base_run, tmp_path):
    """A type_from run outside `models` is loaded for the type pass only."""
    import shutil

    from cellstack.inference.sources import load_source

    shutil.copytree(base_run, tmp_path / "a")
    shutil.copytree(base_run, tmp_path / "typer")
    (tmp_path / "ens.yaml").write_text(
        "models: [a]\ntype_from: [typer]\ntype_models: {cort: [a]}\nfeature_dtype: float16\n"
    )
    ens = load_source(tmp_path / "ens.yaml").model
    assert len(ens.models) == 2 and ens.default_models == (0,) and ens.type_from == (1,)
    assert ens.feature_dtype == torch.float16
    (tmp_path / "bad.yaml").write_text("models: [a]\nfeature_dtype: float8\n")
    with pytest.raises(CellstackError, match="feature_dtype must be"):
        load_source(tmp_path / "bad.yaml")


def _skeleton(model):
    """A copy of ``model`` without weights (meta), and a loader that fills it."""
    state = copy.deepcopy(model.state_dict())
    empty = copy.deepcopy(model).to("meta")

    def load(m):
        m.load_state_dict(copy.deepcopy(state), assign=True)

    return empty, load


@pytest.mark.parametrize("arch", ["maskrcnn", "cascade", "htc"])
def test_weight_budget_loads_models_when_needed_with_the_same_result(arch):
    """Skeletons loaded on demand, at most the budget at once, merge exactly as loaded
    models do; a budget of one model reads weights again on every stage change."""
    from cellstack.inference.weights import weight_bytes

    models = [_model(arch, seed=s) for s in range(3)]
    flips = tuple(FLIPS.values())
    img = _images()[:1]
    one = weight_bytes(models[0]) / 2**20
    with torch.no_grad():
        expected = Ensemble(models, flips=flips).eval()(img)
        for budget, most_loaded in ((one * 1.5, 1), (float("inf"), 3)):
            skeletons, loaders = zip(*(_skeleton(m) for m in models), strict=True)
            ens = Ensemble(skeletons, flips=flips, loaders=loaders, weights_budget_mb=budget)
            ens = ens.eval().to("cpu")
            assert ens.loads == 0 and all(p.is_meta for p in ens.models[0].parameters())
            _same(ens(img), expected)
            assert len(ens.weights.loaded) == most_loaded
            if most_loaded == 3:
                assert ens.loads == 3  # each read once, then kept
            else:
                # Stage 1 reads 3 models; stages 2 and 3 each visit all 3 again.
                assert ens.loads > 3
            held = sum(weight_bytes(ens.models[i]) for i in ens.weights.loaded) / 2**20
            assert held <= max(budget, one)
    with pytest.raises(CellstackError, match="need loaders"):
        Ensemble([_skeleton(models[0])[0]])
    with pytest.raises(CellstackError, match="weights_budget_mb must be > 0"):
        Ensemble(models, weights_budget_mb=0)


def test_weight_budget_in_an_ensemble_yaml(base_run, tmp_path, capsys):
    """`weights_budget_mb` makes runs skeletons until needed: predictions match the
    eager ensemble, and the dry run reads no weights and states the budget."""
    import shutil

    from cellstack.cli import main
    from cellstack.inference.sources import load_source
    from cellstack.inference.weights import weight_bytes

    for name in ("a", "b"):
        shutil.copytree(base_run, tmp_path / name)
    common = "models: [a, b]\nflips: [none, h]\ntype_settings: none\n"
    (tmp_path / "eager.yaml").write_text(common)
    every = ("predict.box_score_thresh=0",)  # a tiny model's detections, however weak
    eager = load_source(tmp_path / "eager.yaml", every).model
    one = weight_bytes(eager.models[0]) / 2**20
    (tmp_path / "lazy.yaml").write_text(f"{common}weights_budget_mb: {one * 1.2}\n")
    lazy = load_source(tmp_path / "lazy.yaml", every).model
    assert lazy.loads == 0 and all(p.is_meta for m in lazy.models for p in m.parameters())
    with torch.no_grad():
        _same(lazy(_images()), eager(_images()))
    assert lazy.loads > 2 and len(lazy.weights.loaded) == 1
    assert main(["predict", str(tmp_path / "lazy.yaml"), "--dry-run"]) == 0
    assert "at most" in capsys.readouterr().out
    (tmp_path / "bad.yaml").write_text("models: [a]\nweights_budget_mb: -1\n")
    with pytest.raises(CellstackError, match="weights_budget_mb must be > 0"):
        load_source(tmp_path / "bad.yaml")


def test_the_view_bar_ends_at_its_total_through_the_type_pass(base_run, tmp_path, capsys):
    """One image of a typed 3-model x 4-flip ensemble: the type pass (2 identity views
    through proposals and boxes), then its type's models through all three stages."""
    from tqdm import tqdm

    models = [_model("maskrcnn", seed=s) for s in range(3)]
    ens = Ensemble(
        models, flips=tuple(FLIPS.values()), type_from=[0, 1], type_models={CLASSES[0]: [2]}
    ).eval()
    bars = []

    class Recorded(tqdm):
        def close(self):
            # tqdm closes again when collected, so only the first close counts; an
            # attribute rather than id(self), since a collected bar's id is reused
            if not getattr(self, "_recorded", False):
                self._recorded = True
                bars.append((self.n, self.total, self.disable))
            super().close()

    import tqdm as tqdm_module

    real = tqdm_module.tqdm
    tqdm_module.tqdm = Recorded
    try:
        with torch.no_grad():
            ens(_images()[:1])  # no bar unless asked
            ens.show_views = True
            ens(_images()[:1])
    finally:
        tqdm_module.tqdm = real
    (_, _, first_disabled), (done, total, second_disabled) = bars
    assert first_disabled and not second_disabled
    # type pass: 2 proposal + 2 box passes; merge: 1 + 4 + 4 (type 0) or 2 + 8 + 8 (else)
    assert done == total in (4 + 9, 4 + 18)
