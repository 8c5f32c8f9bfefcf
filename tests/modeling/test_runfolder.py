"""Model files: what a finished run's ``model.pt`` records."""

from __future__ import annotations

from importlib.metadata import version

from cellstack.modeling.runfolder import FINAL, load, load_run


def test_model_file_records_config_classes_stats_and_versions(base_run):
    state = load(base_run / FINAL)
    assert set(state["versions"]) == {"cellstack", "torch", "torchvision", "timm"}
    assert state["versions"]["torch"] == version("torch")
    assert "diameter_median" in state["data_stats"]
    cfg, names, weights = load_run(base_run)
    assert names == state["class_names"] and weights.keys() == state["model"].keys()
    assert cfg.model.arch == state["config"]["model"]["arch"]
