"""Built-in models: found by name wherever a run is accepted, read without pickle, the
same outputs as the run they were exported from; a folder of the same name wins."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import cellstack
from cellstack.cli import main
from cellstack.data.images import read_image
from cellstack.errors import CellstackError
from cellstack.modeling import builtin, runfolder

POST = ["predict.score_thresh=0", "predict.min_size=0"]


@pytest.fixture
def models(tmp_path, monkeypatch, base_run):
    """A models folder holding ``tiny`` (float32) and ``tiny16`` (float16), exported
    from the tiny trained run."""
    import shutil

    root = tmp_path / "models"
    state = runfolder.load(base_run / runfolder.FINAL)
    for name, dtype in (("tiny", torch.float32), ("tiny16", torch.float16)):
        builtin.write_builtin(root / name, state, dtype=dtype)
        shutil.copy(base_run / "data_stats.json", root / name / "data_stats.json")
        (root / name / builtin.CARD).write_text(
            f"# Built-in model `{name}`\n\nA tiny test model.\n"
        )
    monkeypatch.setattr(builtin, "models_root", lambda: root)
    return root


@pytest.fixture
def plane(base_data):
    return read_image(sorted((base_data / "train").glob("*.png"))[0])


def test_a_builtin_loads_by_name_weights_only_with_the_runs_outputs(models, base_run, plane):
    assert builtin.builtin_names() == ["tiny", "tiny16"]
    assert not list((models / "tiny").glob("*.pt"))  # safetensors + json only: no pickle
    ref = cellstack.Segmenter.load(base_run, device="cpu", overrides=POST)(plane)
    got = cellstack.Segmenter.load("tiny", device="cpu", overrides=POST)(plane)
    assert len(ref) > 0
    np.testing.assert_array_equal(got.labels, ref.labels)
    np.testing.assert_allclose(got.table["score"], ref.table["score"], rtol=1e-6)
    half = cellstack.Segmenter.load("builtin:tiny16", device="cpu", overrides=POST)(plane)
    from cellstack.evaluation.metric import score_image

    assert score_image(ref.labels, half.labels).score >= 0.9


def test_a_folder_of_the_same_name_is_the_run_and_says_so(
    models, base_run, tmp_path, monkeypatch, capsys
):
    import shutil

    work = tmp_path / "work"
    work.mkdir()
    shutil.copytree(base_run, work / "tiny")
    monkeypatch.chdir(work)
    assert builtin.resolve_run("tiny") == builtin.Path("tiny")
    assert "not the built-in model tiny" in capsys.readouterr().err
    assert builtin.resolve_run("builtin:tiny") == models / "tiny"
    with pytest.raises(CellstackError, match="no built-in model 'nope'"):
        builtin.resolve_run("builtin:nope")


def test_predict_models_and_ensembles_take_builtin_names(models, base_data, tmp_path, capsys):
    images = base_data / "train"
    assert main(["models"]) == 0
    listed = capsys.readouterr().out
    assert "tiny " in listed and "A tiny test model." in listed
    assert main(["models", "tiny"]) == 0 and "# Built-in model `tiny`" in capsys.readouterr().out
    assert main(["models", "nope"]) == 2
    out = tmp_path / "p"
    assert main(["predict", "tiny", str(images), "--out", str(out), "--quiet", *POST]) == 0
    assert len(list((out / "labels").glob("*.tif"))) == len(list(images.glob("*.png")))
    yaml_path = tmp_path / "ens.yaml"
    yaml_path.write_text("models: [tiny, tiny]\nflips: [none, h]\n")
    assert (
        main(["predict", str(yaml_path), str(images), "--out", str(tmp_path / "e"), "--quiet"]) == 0
    )


@pytest.fixture
def label_folder(base_data, tmp_path):
    """base_data's 4 images as a label folder (images/ + labels/)."""
    from cellstack.data.dataset import load_sample
    from cellstack.data.images import write_png
    from cellstack.data.labels import write_label_tiff
    from cellstack.data.sartorius import read_train_csv

    folder = tmp_path / "labelled"
    for sub in ("images", "labels"):
        (folder / sub).mkdir(parents=True)
    for rec in read_train_csv(base_data / "train.csv"):
        image, labels = load_sample(rec)
        write_png(folder / "images" / f"{rec.image_id}.png", image)
        write_label_tiff(folder / "labels" / f"{rec.image_id}.tif", labels)
    return folder


def _contents(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_tune_writes_a_new_model_folder_and_never_the_builtins(
    models, label_folder, tmp_path, capsys
):
    import json

    import yaml

    before = {name: _contents(models / name) for name in ("tiny", "tiny16")}
    assert main(["tune", "tiny", str(label_folder), "--quiet"]) == 2
    assert "give --out NEW" in capsys.readouterr().err
    new = tmp_path / "tuned"
    assert main(["tune", "tiny16", str(label_folder), "--out", str(new), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "leave-one-image-out score" in out and f"wrote {new}" in out
    assert {name: _contents(models / name) for name in ("tiny", "tiny16")} == before
    # A model folder of its own: float16 weights as the built-in's, the tuned thresholds
    # and scale, the card with a line on what it was tuned on.
    assert builtin.is_builtin_folder(new) and (new / "data_stats.json").is_file()
    meta = json.loads((new / builtin.META).read_text())
    assert meta["weights_dtype"] == "float16"
    card = (new / builtin.CARD).read_text()
    assert card.startswith("# Built-in model `tiny16`") and "## Tuned" in card
    assert f"4 images of {label_folder}" in card and "leave-one-image-out" in card
    tuned = yaml.safe_load((new / "thresholds.yaml").read_text())
    assert set(tuned["default"]) >= {"mask_thresh", "mask_offset", "score_thresh"}
    assert meta["config"]["data"]["scale"] > 0
    # Everything that takes a model takes it: predict, the API, an ensemble.
    pred = tmp_path / "pred"
    images = label_folder / "images"
    assert main(["predict", str(new), str(images), "--out", str(pred), "--quiet"]) == 0
    assert len(list((pred / "labels").glob("*.tif"))) == 4
    seg = cellstack.Segmenter.load(new, device="cpu")
    assert seg.scale == meta["config"]["data"]["scale"]
    assert seg.predictor.thresholds.default.mask_thresh == tuned["default"]["mask_thresh"]
    from cellstack import napari_plugin
    from cellstack.data.images import read_image

    plane = read_image(sorted(images.glob("*.png"))[0])
    labels, _, kind = napari_plugin.segment_layer(plane, str(new), device="cpu")
    assert kind == "labels" and labels.shape == plane.shape
    ens = tmp_path / "ens.yaml"
    ens.write_text(f"models: [{new}, tiny]\n")
    assert main(["predict", str(ens), str(images), "--out", str(tmp_path / "e"), "--quiet"]) == 0
    # Never into a folder that holds something, the package or the model itself.
    assert main(["tune", "tiny", str(label_folder), "--out", str(new), "--quiet"]) == 2
    assert "not an empty folder" in capsys.readouterr().err
    for bad in (models / "mine", models / "tiny" / "sub"):
        assert main(["tune", "tiny", str(label_folder), "--out", str(bad), "--quiet"]) == 2
    assert "built-in models" in capsys.readouterr().err
    assert {name: _contents(models / name) for name in ("tiny", "tiny16")} == before


def test_tune_out_from_a_run_leaves_the_run_as_it_was(base_run, label_folder, tmp_path):
    before = _contents(base_run)
    new = tmp_path / "from_run"
    assert main(["tune", str(base_run), str(label_folder), "--out", str(new), "--quiet"]) == 0
    assert _contents(base_run) == before
    assert builtin.is_builtin_folder(new) and (new / "thresholds.yaml").is_file()
    assert (new / builtin.CARD).read_text().startswith(f"# Model tuned from `{base_run.name}`")
    assert (
        main(
            [
                "predict",
                str(new),
                str(label_folder / "images"),
                "--out",
                str(tmp_path / "p"),
                "--quiet",
            ]
        )
        == 0
    )


def test_finetuning_keeps_the_pretrained_sizes_and_rescales_the_data(models, base_data, tmp_path):
    import json

    from cellstack.config import load_config
    from cellstack.engine.trainer import train
    from tests.conftest import FAST

    source = json.loads((models / "tiny" / builtin.META).read_text())["config"]
    fast = [o for o in FAST if not o.startswith("data.crop_size")]
    cfg = load_config(
        None,
        [
            *fast,
            "train.iterations=2",
            "init.from=tiny",
            "data.crop_size=auto",
            "data.scale=auto",
            "model.rpn.anchor_scale=auto",
            "model.roi.mask_pool=auto",
        ],
    )
    # The same kind of cells at half the size: the finetuned run must scale them by ~2.
    import tifffile

    from cellstack.data.dataset import load_sample, rescale_sample
    from cellstack.data.layouts import load_dataset

    small = tmp_path / "small"
    (small / "images").mkdir(parents=True)
    (small / "labels").mkdir()
    for rec in load_dataset(base_data):
        image, labels = rescale_sample(*load_sample(rec), 0.5)
        tifffile.imwrite(small / "images" / f"{rec.image_id}.tif", image)
        tifffile.imwrite(small / "labels" / f"{rec.image_id}.tif", labels)
    train(cfg, small, tmp_path / "ft", progress=False)
    run_cfg, _, _ = runfolder.load_run(tmp_path / "ft")
    assert run_cfg.model.rpn.anchor_scale == source["model"]["rpn"]["anchor_scale"]
    assert run_cfg.model.roi.mask_pool == source["model"]["roi"]["mask_pool"]
    assert run_cfg.data.crop_size == source["data"]["crop_size"]
    assert 1.6 <= run_cfg.data.scale <= 2.4
    # It predicts at that scale by default, and records sizes as the model sees them.
    stats = json.loads((tmp_path / "ft" / "data_stats.json").read_text())
    trained = json.loads((models / "tiny" / "data_stats.json").read_text())
    assert stats["diameter_median"] == pytest.approx(trained["diameter_median"], rel=0.2)
    seg = cellstack.Segmenter.load(tmp_path / "ft", device="cpu")
    assert seg.scale == run_cfg.data.scale
