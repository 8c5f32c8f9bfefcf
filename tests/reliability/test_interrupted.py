"""Nothing half-done looks complete; a kill at any write point leaves a resumable run."""

from __future__ import annotations

import pytest
import torch

from cellstack.config import load_config
from cellstack.engine.runlog import read_log
from cellstack.engine.trainer import train
from tests.conftest import FAST
from tests.reliability.conftest import checksums


def test_kill_while_model_pt_is_written(cli, run, data):
    # The kill came after the final checkpoint, mid-way through writing model.pt: the
    # partial file is an orphan and model.pt does not exist.
    (run / "model.pt").unlink()
    (run / ".model.pt.x1y2.partial.pt").write_bytes(b"half a model")
    res = cli("train", data, "--resume", run)
    assert res.code == 0, res.err
    assert (run / "model.pt").is_file()
    assert not list(run.glob(".*.partial*"))
    final = torch.load(run / "model.pt", weights_only=True)
    last = torch.load(run / "checkpoint.pt", weights_only=True)
    for k, v in last["model"].items():
        assert torch.equal(final["model"][k], v)
    # A second resume says it is done, and changes nothing.
    before = checksums(run)
    cli.fails("train", data, "--resume", run, match="already trained")
    assert checksums(run) == before


@pytest.mark.parametrize(
    ("point", "nth"),
    [
        ("config.yaml", 1),
        ("log.csv", 1),
        ("checkpoint.pt", 1),
        ("checkpoint.pt", 2),
        ("checkpoint.pt", 3),
        ("training.png", 1),
        ("model.pt", 1),
    ],
)
def test_kill_at_each_write_point_resumes(data, tmp_path, monkeypatch, point, nth):
    """A kill while ``point`` is written for the ``nth`` time (a SIGKILL: the partial
    file stays behind) leaves a run that the same command (fresh or ``--resume``, as a
    user would pick) finishes with the log of an uninterrupted run."""
    import os
    import shutil

    overrides = [*FAST, "train.iterations=3", "train.checkpoint_every=1", "train.log_every=1"]
    cfg = load_config(None, [*overrides, "train.eval_every=0"])
    run = tmp_path / "r"
    real_replace = os.replace
    seen = {"n": 0}

    class Killed(BaseException):
        pass

    def replace(src, dst):
        if os.path.basename(dst) == point:
            seen["n"] += 1
            if seen["n"] == nth:
                shutil.copy(src, os.path.join(os.path.dirname(dst), f".{point}.k.partial"))
                raise Killed
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(Killed):
        train(cfg, data, run, progress=False)
    monkeypatch.setattr(os, "replace", real_replace)
    assert not (run / "model.pt").exists()
    if (run / "checkpoint.pt").exists():
        train(cfg, data, run, resume=True, progress=False)
    else:  # nothing to resume from: the same command starts again in the same folder
        train(cfg, data, run, progress=False)
    assert torch.load(run / "model.pt", weights_only=True)["class_names"]
    assert not list(run.glob(".*.partial*"))
    assert [int(r["iteration"]) for r in read_log(run / "log.csv")] == [1, 2, 3]


def test_train_out_never_overwrites_a_finished_run(cli, run, data):
    before = checksums(run)
    cli.fails("train", data, "--out", run, *FAST, match="already holds a training run")
    (run / "checkpoint.pt").unlink()  # even with only model.pt left
    cli.fails("train", data, "--out", run, *FAST, match="already holds a training run")
    assert {k: v for k, v in checksums(run).items() if k != "checkpoint.pt"} == {
        k: v for k, v in before.items() if k != "checkpoint.pt"
    }


def test_train_out_that_is_a_file(cli, data, tmp_path):
    (tmp_path / "f").write_text("x")
    cli.fails("train", data, "--out", tmp_path / "f", *FAST, match="not a folder")


def test_predict_killed_midway_leaves_no_finished_marker(run, images, tmp_path, monkeypatch):
    from cellstack.inference import export
    from cellstack.inference.predict import PredictOptions, predict_folder

    real = export.PredictionWriter.add
    calls = {"n": 0}

    def dying(self, *args):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self, *args)

    monkeypatch.setattr(export.PredictionWriter, "add", dying)
    monkeypatch.setattr(export.PredictionWriter, "add", dying)
    out = tmp_path / "p"
    with pytest.raises(KeyboardInterrupt):
        predict_folder(
            run, images, out, PredictOptions(overrides=("predict.batch_size=1",)), progress=False
        )
    assert (out / "labels").is_dir()  # the first image was written ...
    assert not (out / "submission.csv").exists() and not (out / "results.json").exists()
