"""``cellstack cv``: every fold trained, resumable after a kill, OOF predictions scored."""

import csv
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from cellstack.cli import main
from cellstack.data.layouts import load_dataset, load_predictions
from cellstack.engine.runlog import read_log
from cellstack.evaluation.report import evaluate
from cellstack.inference.cvfolder import CVFolder
from cellstack.inference.sources import load_source
from tests.conftest import FAST

CV_ARGS = [
    *FAST,
    "train.iterations=16",
    "train.checkpoint_every=1",
    "train.eval_every=100",
    "predict.score_thresh=0.05",
]


def _log_iterations(run):
    return [int(r["iteration"]) for r in read_log(run / "log.csv")]


@pytest.mark.slow
def test_cv_resumes_after_a_kill_and_scores_oof(small_data, tmp_path, capsys):
    cv = tmp_path / "cv"
    cmd = [sys.executable, "-m", "cellstack", "cv", str(small_data), "--out", str(cv)]
    cmd += ["--folds", "2", "--quiet", *CV_ARGS]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    # Kill it in the middle of fold 1: fold 0 is finished, fold 1 has a checkpoint.
    deadline = time.monotonic() + 240
    while not (cv / "fold1" / "checkpoint.pt").is_file():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "cv did not reach fold 1"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (cv / "fold0" / "model.pt").is_file() and not (cv / "fold1" / "model.pt").is_file()

    # The interrupted CV is one thing to predict, tune and ensembles alike: refused
    # with what is missing, or (predict --allow-unfinished) the trained fold alone.
    capsys.readouterr()
    assert main(["predict", str(cv), str(small_data), "--out", str(tmp_path / "p0")]) == 2
    assert "fold(s) 1 of 2 not trained" in capsys.readouterr().err
    assert main(["tune", str(cv), "--quiet"]) == 2
    assert "no OOF predictions of fold(s) 1 of 2" in capsys.readouterr().err
    (tmp_path / "partial.yaml").write_text("models: [cv]\n")
    assert (
        main(
            [
                "predict",
                str(tmp_path / "partial.yaml"),
                str(small_data),
                "--out",
                str(tmp_path / "p1"),
            ]
        )
        == 2
    )
    assert "CV has not finished" in capsys.readouterr().err
    assert (
        main(
            [
                "predict",
                str(cv),
                str(small_data),
                "--out",
                str(tmp_path / "p2"),
                "--allow-unfinished",
                "--quiet",
            ]
        )
        == 0
    )
    assert "using folds 0 of 2" in capsys.readouterr().err

    assert main(["cv", str(small_data), "--out", str(cv), "--folds", "2", "--quiet", *CV_ARGS]) == 0
    out = capsys.readouterr().out
    assert "fold 0: trained, skipped" in out and "fold 1: resuming" in out
    assert _log_iterations(cv / "fold1") == list(range(1, 17))  # no step lost or repeated

    # Every image is predicted exactly once, by the fold that did not train on it.
    records = load_dataset(small_data)
    with open(cv / "folds.csv", newline="") as f:
        fold_of = {r["id"]: int(r["fold"]) for r in csv.DictReader(f)}
    assert set(CVFolder(cv).load_oof()) == {r.image_id for r in records}
    for k in (0, 1):
        with open(cv / f"fold{k}" / "folds.csv", newline="") as f:
            assert {r["id"]: int(r["fold"]) for r in csv.DictReader(f)} == fold_of
    # The CV table: per fold, per cell type, and all OOF images, which `evaluate`
    # reproduces from the OOF submission.
    table = (cv / "cv.md").read_text()
    assert "| fold 0 |" in table and "| fold 1 |" in table and "| all (OOF) | 6 |" in table
    rows = yaml.safe_load((cv / "cv.json").read_text())["rows"]
    report = evaluate(records, load_predictions(cv / "oof" / "submission.csv", records))
    assert rows["all (OOF)"]["score"] == pytest.approx(report.score, abs=1e-12)
    assert rows["all (OOF)"]["per_cell_type"] == pytest.approx(report.per_cell_type)
    for k in (0, 1):
        members = [r.image_id for r in records if fold_of[r.image_id] == k]
        fold_mean = sum(report.per_image[i] for i in members) / len(members)
        assert rows[f"fold {k}"]["score"] == pytest.approx(fold_mean)

    # Tune consumes the OOF predictions (no DATA needed), and a finished CV re-scores
    # with the tuned thresholds at once; predict uses the folds as one ensemble.
    assert main(["tune", str(cv), "--quiet"]) == 0
    assert (cv / "thresholds.yaml").is_file()
    assert main(["cv", str(small_data), "--out", str(cv), "--folds", "2", "--quiet", *CV_ARGS]) == 0
    tuned = yaml.safe_load((cv / "cv.json").read_text())
    assert tuned["rows"]["all (OOF)"]["score"] >= rows["all (OOF)"]["score"] - 1e-12
    assert tuned["thresholds"] == yaml.safe_load((cv / "thresholds.yaml").read_text())
    assert main(["predict", str(cv), str(small_data), "--out", str(tmp_path / "pred")]) == 0
    assert "predicted" in capsys.readouterr().out
    # In an ensemble YAML a CV folder stands for its fold runs.
    (tmp_path / "ens.yaml").write_text("models: [cv]\ntype_models: {astro: [cv]}\n")
    assert len(load_source(tmp_path / "ens.yaml").model.models) == 2
    # Another config in the same folder is refused rather than mixed in.
    assert main(["cv", str(small_data), "--out", str(cv), "--folds", "2", *FAST]) == 2
    assert "holds a CV run with another config" in capsys.readouterr().err
