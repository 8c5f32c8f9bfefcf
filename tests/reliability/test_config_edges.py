"""Every file a user writes is type-checked before any model runs."""

from __future__ import annotations

import pytest

from tests.conftest import FAST


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('default: {convex_refill: "no"}\n', "default.convex_refill: expected bool"),
        ("default: {min_size: big}\n", "default.min_size: expected int"),
        (
            "per_type: {astro: {score_thresh: 2}}\n",
            "per_type.astro.score_thresh: must be in [0, 1]",
        ),
        ("per_type: {astro: {mask_thres: 0.5}}\n", "unknown config key per_type.astro.mask_thres"),
        ("defaults: {}\n", "unknown key defaults"),
        ("per_type: [astro]\n", "per_type must be a mapping"),
        ("- 1\n- 2\n", "expected a mapping"),
        ("default: {mask_thresh: 0.5\n", "not valid YAML"),
    ],
)
def test_bad_thresholds_yaml(cli, run, images, tmp_path, text, match):
    (run / "thresholds.yaml").write_text(text)
    res = cli.fails("predict", run, images, "--out", tmp_path / "p", match=match)
    assert "thresholds.yaml" in res.err
    assert not (tmp_path / "p" / "labels").exists()  # failed before any model ran


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("models: run\n", "models: expected a list"),
        ("models: []\n", "at least one run"),
        ("models: [run]\nflips: [sideways]\n", "sideways"),
        ("models: [run]\nrpn_flips: maybe\n", "rpn_flips: expected bool"),
        ("models: [run]\ntype_settings: fancy\n", "type_settings must be"),
        ("models: [run]\nweights: [1]\n", "unknown config key weights"),
        ("models: [run]\ntype_models: {astro: run}\n", "type_models.astro: expected a list"),
        ("models: [run]\npostprocess: {default: {min_size: big}}\n", "default.min_size"),
        ("models: [run]\npostprocess: {typo: {}}\n", "unknown config key postprocess.typo"),
        ("models: [nowhere]\n", "nowhere"),
    ],
)
def test_bad_ensemble_yaml(cli, run, images, tmp_path, text, match):
    path = tmp_path / "ens.yaml"
    path.write_text(text)
    res = cli.fails("predict", path, images, "--out", tmp_path / "p", match=match)
    assert "ens.yaml" in res.err or "nowhere" in res.err


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("train.log_every=0", "train.log_every must be at least 1"),
        ("train.checkpoint_every=0", "train.checkpoint_every must be at least 1"),
        ("train.num_workers=-1", "train.num_workers must be >= 0"),
        ("predict.batch_size=0", "predict.batch_size must be at least 1"),
        ("train.device=tpu9", "device 'tpu9'"),
        ("predict.min_size=big", "predict.min_size: expected a number or 'auto'"),
    ],
)
def test_bad_train_settings(cli, data, tmp_path, override, match):
    cli.fails("train", data, "--out", tmp_path / "r", *FAST, override, match=match)
    assert not (tmp_path / "r" / "checkpoint.pt").exists()


def test_eval_every_zero_means_never(cli, data, tmp_path):
    res = cli(
        "train",
        data,
        "--out",
        tmp_path / "r",
        *FAST,
        "train.iterations=2",
        "train.eval_every=0",
        "data.fold=0",
        "data.folds=2",
    )
    assert res.code == 0, res.err
    assert "validation score" not in res.out


def test_predict_batch_size_zero_and_bad_device(cli, run, images, tmp_path):
    cli.fails(
        "predict",
        run,
        images,
        "--out",
        tmp_path / "p",
        "predict.batch_size=0",
        match="predict.batch_size must be at least 1",
    )
    cli.fails(
        "predict", run, images, "--out", tmp_path / "p", "--device", "tpu9", match="device 'tpu9'"
    )


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("--n-images", "0"), "--n-images must be at least 1"),
        (("--width", "0"), "width and height must be at least 16"),
        (("--height", "-5"), "width and height must be at least 16"),
        (("--cell-types", "hela"), "unknown synthetic cell type(s) hela"),
        (("--cell-types", ""), "no cell types given"),
    ],
)
def test_bad_synth_arguments(cli, tmp_path, args, match):
    cli.fails("synth", tmp_path / "s", "--quiet", *args, match=match)
    assert not (tmp_path / "s").exists()


def test_non_utf8_config_and_thresholds(cli, run, data, images, tmp_path):
    (tmp_path / "c.yaml").write_bytes(b"train:\n  lr: 0.001 # caf\xe9\n")
    cli.fails(
        "train", data, "--config", tmp_path / "c.yaml", "--out", tmp_path / "r", match="not UTF-8"
    )
    (run / "thresholds.yaml").write_bytes(b"default: {}\n# \xff\n")
    cli.fails("predict", run, images, "--out", tmp_path / "p", match="not UTF-8")


def test_per_type_thresholds_for_a_type_the_model_lacks_are_refused(cli, run, images, tmp_path):
    import cellstack

    classes = ", ".join(cellstack.Segmenter.load(run, device="cpu").class_names)
    (run / "thresholds.yaml").write_text("per_type: {neuron: {score_thresh: 0.5}}\n")
    res = cli.fails("predict", run, images, "--out", tmp_path / "p", match="per_type.neuron")
    assert "thresholds.yaml" in res.err and f"(its classes: {classes})" in res.err
    assert not (tmp_path / "p" / "labels").exists()
    (run / "thresholds.yaml").unlink()
    ens = tmp_path / "ens.yaml"
    ens.write_text("models: [run]\npostprocess: {per_type: {neuron: {min_size: 5}}}\n")
    res = cli.fails("predict", ens, images, "--out", tmp_path / "p", match="per_type.neuron")
    assert "ens.yaml: postprocess" in res.err


@pytest.mark.parametrize(
    ("option", "value", "match"),
    [
        ("--scale", "1e6", "scale 1e+06 is outside 0.0625..16 (scale resizes the image"),
        ("--diameter", "1e9", "diameter 1e+09 px against the"),
    ],
)
def test_a_resize_out_of_range_names_the_option_given(
    cli, run, images, tmp_path, option, value, match
):
    res = cli.fails("predict", run, images, "--out", tmp_path / "p", option, value, match=match)
    if option == "--scale":
        assert "diameter" not in res.err


@pytest.mark.parametrize("value", ["0", "NaN", '"big"'])
def test_a_bad_recorded_diameter_is_named_not_reported_missing(cli, run, images, tmp_path, value):
    import json

    stats = json.loads((run / "data_stats.json").read_text())
    text = json.dumps(stats).replace(
        f'"diameter_median": {json.dumps(stats["diameter_median"])}', f'"diameter_median": {value}'
    )
    (run / "data_stats.json").write_text(text)
    res = cli.fails(
        "predict",
        run,
        images,
        "--out",
        tmp_path / "p",
        "--diameter",
        "20",
        match="data_stats.json: diameter_median is",
    )
    assert "did not record" not in res.err


def test_an_ensemble_reads_and_checks_its_members_tuned_thresholds(cli, run, images, tmp_path):
    """A member's thresholds.yaml was never read: 7 was accepted and a tuned folder ran
    with its config's values."""
    from cellstack.inference.sources import load_source

    path = tmp_path / "ens.yaml"
    path.write_text("models: [run]\n")
    # the run folder is tmp_path/run: the YAML beside it names it
    assert run == tmp_path / "run"
    (run / "thresholds.yaml").write_text("default: {score_thresh: 7}\n")
    res = cli.fails("predict", path, images, "--out", tmp_path / "p", match="score_thresh")
    assert "run/thresholds.yaml" in res.err
    (run / "thresholds.yaml").write_text("default: {score_thresh: 0.77, mask_thresh: 0.33}\n")
    default = load_source(path).thresholds.default
    assert (default.score_thresh, default.mask_thresh) == (0.77, 0.33)
    # the YAML's own postprocess beats the member's, key by key
    path.write_text("models: [run]\npostprocess: {default: {score_thresh: 0.5}}\n")
    default = load_source(path).thresholds.default
    assert (default.score_thresh, default.mask_thresh) == (0.5, 0.33)
