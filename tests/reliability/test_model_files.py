"""No code runs when a model file is loaded; odd model files are one-line errors."""

from __future__ import annotations

import pytest
import torch

from tests.reliability.conftest import Payload


def _poison(path, marker) -> None:
    state = torch.load(path, weights_only=True)
    state["extra"] = Payload(marker)
    torch.save(state, path)


@pytest.mark.parametrize("file", ["model.pt", "checkpoint.pt"])
def test_predict_refuses_a_payload(cli, run, images, tmp_path, file):
    marker = tmp_path / "pwned"
    if file == "checkpoint.pt":
        (run / "model.pt").unlink()
    _poison(run / file, marker)
    args = ("--allow-unfinished",) if file == "checkpoint.pt" else ()
    cli.fails("predict", run, images, "--out", tmp_path / "p", *args, match="refused")
    assert not marker.exists()


def test_resume_refuses_a_payload(cli, run, data, tmp_path):
    marker = tmp_path / "pwned"
    _poison(run / "checkpoint.pt", marker)
    cli.fails("train", data, "--resume", run, match="could run code")
    assert not marker.exists()


def test_init_from_refuses_a_payload(cli, run, data, tmp_path):
    from tests.conftest import FAST

    marker = tmp_path / "pwned"
    _poison(run / "model.pt", marker)
    cli.fails("train", data, "--out", tmp_path / "new", f"init.from={run}", *FAST, match="refused")
    assert not marker.exists()


def test_ensemble_and_cv_folder_refuse_a_payload(cli, run, images, tmp_path):
    marker = tmp_path / "pwned"
    _poison(run / "model.pt", marker)
    (tmp_path / "ens.yaml").write_text("models: [run]\n")
    cli.fails("predict", tmp_path / "ens.yaml", images, "--out", tmp_path / "p", match="refused")
    cv = tmp_path / "cv"
    cv.mkdir()
    run.rename(cv / "fold0")
    (cv / "folds.csv").write_text("id,fold\n")
    (cv / "oof").mkdir()  # what marks a CV folder
    (cv / "ensemble.yaml").write_text("models: [fold0]\n")
    cli.fails("predict", cv, images, "--out", tmp_path / "p2", match="refused")
    assert not marker.exists()


def test_tune_refuses_a_payload(cli, run, data, tmp_path):
    marker = tmp_path / "pwned"
    _poison(run / "model.pt", marker)
    cli.fails("tune", run, data, "--quiet", match="refused")
    assert not marker.exists()


def test_saved_runs_hold_only_plain_values(run):
    # What cellstack writes must load under weights_only=True (else it refuses itself).
    for name in ("model.pt", "checkpoint.pt"):
        state = torch.load(run / name, weights_only=True)
        assert isinstance(state["config"], dict) and isinstance(state["class_names"], list)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (lambda: torch.zeros(3), "not a cellstack checkpoint (holds Tensor)"),
        (lambda: {"model": {}, "config": {}}, "not a cellstack checkpoint (no 'class_names')"),
        (lambda: {"model": {}, "config": {}, "class_names": []}, "class_names must be"),
        (
            lambda: {"model": {}, "config": {"train": {"lr": "fast"}}, "class_names": ["a"]},
            "stored config",
        ),
    ],
)
def test_malformed_model_files(cli, run, images, tmp_path, content, match):
    torch.save(content(), run / "model.pt")
    cli.fails("predict", run, images, "--out", tmp_path / "p", match=match)


def test_truncated_model_file(cli, run, images, tmp_path):
    data = (run / "model.pt").read_bytes()
    (run / "model.pt").write_bytes(data[: len(data) // 2])
    cli.fails("predict", run, images, "--out", tmp_path / "p", match="cannot read checkpoint")


def test_class_names_that_do_not_fit_the_weights(cli, run, images, tmp_path):
    state = torch.load(run / "model.pt", weights_only=True)
    state["class_names"] = [*state["class_names"], "extra"]
    torch.save(state, run / "model.pt")
    cli.fails("predict", run, images, "--out", tmp_path / "p", match="weights do not fit")


def test_unfinished_run_only_when_asked(cli, run, images, tmp_path):
    (run / "model.pt").unlink()
    cli.fails("predict", run, images, "--out", tmp_path / "p", match="has not finished")
    assert not (tmp_path / "p" / "submission.csv").exists()
    res = cli("predict", run, images, "--out", tmp_path / "p", "--allow-unfinished")
    assert res.code == 0 and "warning:" in res.err and "unfinished" in res.err
    assert (tmp_path / "p" / "submission.csv").is_file()


@pytest.fixture
def tiny_disk(tmp_path):
    """A 256 KiB file system (tmpfs): a disk that fills. Needs root to mount."""
    import os
    import subprocess

    mount = tmp_path / "tiny_disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a 256 KiB tmpfs (a full disk)")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_a_model_file_that_does_not_fit_on_the_disk_names_it(tiny_disk):
    from cellstack.errors import CellstackError
    from cellstack.modeling.runfolder import save

    target = tiny_disk / "run" / "model.pt"
    with pytest.raises(CellstackError, match=r"model\.pt: cannot write, no space left") as e:
        save({"model": {"w": torch.zeros(200_000)}}, target)  # 800 KB on 256 KiB
    assert "unexpected pos" not in str(e.value)
    assert not target.exists() and list(target.parent.iterdir()) == []  # no partial file


def test_training_onto_a_full_disk_is_one_line_naming_the_file(cli, data, tiny_disk):
    from tests.conftest import FAST

    args = [*FAST, "train.iterations=2", "train.eval_every=0"]
    res = cli.fails(
        "train", data, "--out", tiny_disk / "r", *args, match="cannot write, no space left"
    )
    assert "model.pt" in res.err or "checkpoint.pt" in res.err
    assert not [p for p in (tiny_disk / "r").iterdir() if ".partial" in p.name]
