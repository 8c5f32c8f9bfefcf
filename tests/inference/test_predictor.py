import itertools

import numpy as np
import pytest
import torch
import yaml

from cellstack.cli import main
from cellstack.data.sartorius import read_submission
from cellstack.inference.postprocess import PostprocessParams
from cellstack.inference.predictor import Predictor, plan_tiles, tile_starts
from cellstack.structures import Instances


def test_tile_starts_cover_the_image():
    assert tile_starts(500, 1024, 128) == [0]
    starts = tile_starts(2000, 1024, 128)
    assert starts[0] == 0 and starts[-1] == 2000 - 1024
    assert all(b - a <= 1024 - 128 for a, b in itertools.pairwise(starts))


@pytest.mark.parametrize(
    "shape", [(700, 1100), (512, 1024), (1040, 1392), (2048, 2048), (64, 5000), (3000, 97)]
)
def test_tiles_fit_the_budget_cover_the_image_overlap_and_sit_on_the_grid(shape):
    from cellstack.inference.predictor import band_cores

    budget, overlap, stride = 1024**2, 128, 32
    layout = plan_tiles(shape, budget, overlap, stride)
    th, tw = layout.tile
    assert th <= shape[0] and tw <= shape[1] and th * tw <= budget
    for bands, length in ((layout.rows, shape[0]), (layout.cols, shape[1])):
        assert bands[0][0] == 0 and bands[-1][1] == length  # covered, end to end
        assert all(start % stride == 0 for start, _ in bands)  # the one-pass feature grid
        assert all(b[0] + overlap <= a[1] for a, b in itertools.pairwise(bands))
        assert all(stop - start < (bands[0][1] - bands[0][0]) + stride for start, stop in bands)
        cores = band_cores(bands)  # a partition: every centre kept by exactly one band
        assert cores[0][0] == 0 and cores[-1][1] == length
        assert all(a[1] == b[0] for a, b in itertools.pairwise(cores))
        for (start, stop), (lo, hi) in zip(bands, cores, strict=True):
            assert lo == 0 or lo - start >= overlap / 2
            assert hi == length or stop - hi >= overlap / 2
    if shape[0] * shape[1] <= budget:  # one pass, the image itself: no padding, no tiles
        assert layout.offsets == ((0, 0),) and layout.tile == shape


def test_tiles_are_the_fewest_that_fit():
    # The old square 1024 px tiles cut 1040x1392 into 4 and 2048x2048 into 9.
    assert len(plan_tiles((1040, 1392), 1024**2, 128).offsets) == 2
    assert len(plan_tiles((2048, 2048), 1024**2, 128).offsets) == 6
    # An overlap as wide as the budget's side leaves no tile.
    with pytest.raises(ValueError, match="tile_overlap"):
        plan_tiles((500, 500), 100, 10)


class _GridModel(torch.nn.Module):
    """Detects every bright blob of an image (cut ones too): a stand-in with exact answers."""

    class_names = ("cell",)

    def forward(self, images):
        from scipy import ndimage

        out = []
        for img in images:
            labels, _ = ndimage.label(img[0].numpy() > 0.5)
            boxes = torch.tensor(
                [[sx.start, sy.start, sx.stop, sy.stop] for sy, sx in ndimage.find_objects(labels)],
                dtype=torch.float32,
            ).reshape(-1, 4)
            n = len(boxes)
            out.append(
                Instances(
                    tuple(img.shape[1:]),
                    boxes=boxes,
                    scores=torch.full((n,), 0.9),
                    classes=torch.zeros(n, dtype=torch.int64),
                    roi_masks=torch.ones(n, 28, 28),
                )
            )
        return out


def test_tiling_keeps_each_cell_once():
    image = np.zeros((300, 400), np.uint8)
    image[8:16, 8:16] = 255  # in the first tile only
    image[96:104, 96:104] = 255  # in the overlap of several tiles
    image[288:296, 384:392] = 255  # bottom right corner
    predictor = Predictor(_GridModel(), PostprocessParams(), tile_size=128, tile_overlap=32)
    (tiled,) = predictor([image])
    predictor.tile_size = 1024
    (whole,) = predictor([image])
    assert len(tiled) == len(whole) == 3
    assert sorted(len(p) for p in tiled.pixels) == [64, 64, 64]
    assert sorted(map(tuple, tiled.boxes.tolist())) == sorted(map(tuple, whole.boxes.tolist()))


@pytest.mark.slow
def test_train_predict_evaluate_cli(tmp_path, capsys):
    from tests.conftest import FAST

    data = tmp_path / "data"
    main(["synth", str(data), "--n-images", "3", "--width", "96", "--height", "80", "--quiet"])
    # An empty image and a 16-bit TIFF among the images to predict.
    from cellstack.data.images import write_png, write_tiff

    images = tmp_path / "images"
    write_png(images / "empty.png", np.full((50, 60), 128, np.uint8))
    write_tiff(
        images / "deep.tif", (np.random.default_rng(0).random((70, 90)) * 4000).astype(np.uint16)
    )
    assert (
        main(
            [
                "train",
                str(data),
                "--out",
                str(tmp_path / "run"),
                *FAST,
                "train.iterations=3",
                "train.eval_every=100",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "predict",
                str(tmp_path / "run"),
                str(images),
                "--out",
                str(tmp_path / "p"),
                "predict.score_thresh=0.0",
            ]
        )
        == 0
    )
    sub = read_submission(tmp_path / "p" / "submission.csv")
    assert set(sub) == {"empty", "deep"}
    for name in ("results.json", "labels/empty.tif", "overlays/deep.png"):
        assert (tmp_path / "p" / name).is_file()
    assert main(["predict", str(tmp_path / "run"), str(data), "--out", str(tmp_path / "p2")]) == 0
    assert main(["evaluate", str(data), str(tmp_path / "p2" / "submission.csv"), "--quiet"]) == 0
    assert main(["predict", str(tmp_path / "nope"), str(images), "--out", str(tmp_path / "x")]) == 2
    assert "run folder not found" in capsys.readouterr().err


@pytest.mark.slow
def test_ensemble_yaml_predict_and_tune_cli(tmp_path, capsys):
    from tests.conftest import FAST

    data = tmp_path / "data"
    main(["synth", str(data), "--n-images", "4", "--width", "96", "--height", "80", "--quiet"])
    main(["folds", str(data), "--k", "2"])
    for name, arch in (("a", "maskrcnn"), ("b", "cascade")):
        args = ["train", str(data), "--out", str(tmp_path / name), *FAST, f"model.arch={arch}"]
        assert main([*args, "train.iterations=2", "train.eval_every=100"]) == 0
    ens = tmp_path / "ens" / "ensemble.yaml"
    ens.parent.mkdir()
    ens.write_text(
        "models: [../a, ../b]\nflips: [none, h, v, hv]\ntype_models: {astro: [../b]}\n"
        "postprocess: {default: {score_thresh: 0.0}}\n"
    )
    assert main(["predict", str(ens), str(data), "--out", str(tmp_path / "p")]) == 0
    assert len(read_submission(tmp_path / "p" / "submission.csv")) == 4
    capsys.readouterr()
    assert main(["tune", str(ens), str(data), "--fold", "0", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "overall" in out and (ens.parent / "thresholds.yaml").is_file()
    before, after = (float(x) for x in out.split("overall")[1].split()[:2])
    assert after >= before
    thresholds = yaml.safe_load((ens.parent / "thresholds.yaml").read_text())
    assert set(thresholds) == {"default", "per_type"}
    assert main(["predict", str(ens), str(data), "--out", str(tmp_path / "p2")]) == 0
    ens.write_text("models: [../a]\nflips: [diagonal]\n")
    assert main(["predict", str(ens), str(data), "--out", str(tmp_path / "x")]) == 2
    assert "unknown flip diagonal" in capsys.readouterr().err
    ens.write_text("models: [../a]\nmodel: [../b]\n")
    assert main(["predict", str(ens), str(data), "--out", str(tmp_path / "x")]) == 2
    assert "unknown config key model" in capsys.readouterr().err


def test_amp_is_set_on_cuda_only_and_reaches_every_ensemble_member():
    import torch

    from cellstack.config import load_config
    from cellstack.inference.ensemble import Ensemble
    from cellstack.inference.postprocess import PostprocessParams
    from cellstack.inference.predictor import Predictor
    from cellstack.modeling.build import build_model
    from tests.modeling.conftest import TINY

    cfg = load_config(None, TINY)
    models = [build_model(cfg.model, ["a"], cfg.predict) for _ in range(2)]
    Predictor(Ensemble(models), PostprocessParams(), device="cpu", amp=True)
    assert all(m.feature_autocast is None for m in models)  # ignored off CUDA
    if torch.cuda.is_available():
        Predictor(Ensemble(models), PostprocessParams(), device="cuda", amp=True)
        assert all(m.feature_autocast == torch.float16 for m in models)


def test_dropping_low_scores_before_the_mask_head_changes_no_cell():
    from cellstack.config import load_config
    from cellstack.data.masks import pixels_to_labels
    from cellstack.inference.postprocess import postprocess
    from cellstack.inference.thresholds import Thresholds
    from cellstack.modeling.build import build_model
    from tests.modeling.conftest import TINY

    cfg = load_config(None, [*TINY, "predict.box_score_thresh=0.0"])
    torch.manual_seed(0)
    model = build_model(cfg.model, ["cell"], cfg.predict)
    image = (np.random.default_rng(0).random((96, 128)) * 255).astype(np.uint8)
    everything = Predictor(model, PostprocessParams()).raw([image])[0]
    median = float(everything.scores.median())
    params = PostprocessParams(score_thresh=median, min_size=0)
    for thresholds in (Thresholds(params), Thresholds(params, {"cell": params})):
        predictor = Predictor(model, thresholds)
        early = predictor.final_box_params()
        assert early is not None and early.score_thresh < median
        assert 0 < len(predictor.raw([image], early)[0]) < len(everything)
        expected = postprocess(everything, params, image.shape)
        got = predictor([image])[0]
        assert np.array_equal(got.scores, expected.scores) and len(got) > 0
        assert np.array_equal(
            pixels_to_labels(got.pixels, image.shape),
            pixels_to_labels(expected.pixels, image.shape),
        )
    two_types = build_model(cfg.model, ["a", "b"], cfg.predict)
    assert Predictor(two_types, Thresholds(params, {"a": params})).final_box_params() is None


def test_a_confluent_image_goes_through_again_and_a_sparse_one_does_not():
    """With a dense confidence the first pass keeps score_thresh's boxes only; an image
    its cells cover enough is run again down to dense_score_thresh. Either way the cells
    are those of post-processing every detection at once."""
    from dataclasses import replace

    from cellstack.config import load_config
    from cellstack.data.masks import pixels_to_labels
    from cellstack.inference.postprocess import is_confluent, postprocess
    from cellstack.modeling.build import build_model
    from tests.modeling.conftest import TINY

    cfg = load_config(None, [*TINY, "predict.box_score_thresh=0.0"])
    torch.manual_seed(0)
    model = build_model(cfg.model, ["cell"], cfg.predict)
    image = (np.random.default_rng(0).random((96, 128)) * 255).astype(np.uint8)
    everything = Predictor(model, PostprocessParams()).raw([image])[0]
    high, low = (float(everything.scores.quantile(q)) for q in (0.75, 0.25))
    base = PostprocessParams(score_thresh=high, dense_score_thresh=low, min_size=0)
    for fraction, confluent in ((1e-4, True), (1.0, False)):
        params = replace(base, dense_fraction=fraction)
        predictor = Predictor(model, params)
        first = predictor.raw([image], predictor.final_box_params())[0]
        assert is_confluent(first, params) == confluent
        got = predictor([image])[0]
        expected = postprocess(everything, params, image.shape)
        assert len(got) > 0 and np.array_equal(got.scores, expected.scores)
        assert np.array_equal(
            pixels_to_labels(got.pixels, image.shape),
            pixels_to_labels(expected.pixels, image.shape),
        )
        assert bool((got.scores < high).any()) == confluent  # the lower confidence, or not
