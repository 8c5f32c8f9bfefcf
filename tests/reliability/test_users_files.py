"""Nothing of the user's is deleted or replaced: ``--overwrite`` removes exactly what
predict listed, a folder it did not make is refused, and the output lock keeps a second
run out. Each probe checks the user's files unchanged (checksums)."""

from __future__ import annotations

import threading

import numpy as np
import tifffile

from cellstack.errors import CellstackError
from cellstack.fileio import output_lock
from cellstack.inference.export import MANIFEST
from tests.reliability.conftest import checksums

# --- nothing of the user's is deleted ---------------------------------------------


def test_overwrite_keeps_the_users_files_in_predicts_folders(cli, run, images, tmp_path):
    out = tmp_path / "p"
    assert cli("predict", run, images, "--out", out, "--save-rois").code == 0
    mine = {
        out / "labels" / "my_truth.tif": np.arange(12, dtype=np.int32).reshape(3, 4),
        out / "rois" / "hand_drawn.zip": None,
    }
    tifffile.imwrite(out / "labels" / "my_truth.tif", mine[out / "labels" / "my_truth.tif"])
    (out / "rois" / "hand_drawn.zip").write_bytes(b"PK\x05\x06" + bytes(18))
    (out / "notes.txt").write_text("mine")
    before = {
        k: v for k, v in checksums(out).items() if "my_truth" in k or "hand" in k or "notes" in k
    }
    assert cli("predict", run, images, "--out", out, "--overwrite", "--save-rois").code == 0
    after = checksums(out)
    assert {k: after[k] for k in before} == before
    # ... and predict's own files are there, listed once each in the manifest.
    listed = (out / MANIFEST).read_text().split()
    assert len(listed) == len(set(listed)) and "submission.csv" in listed
    assert all((out / p).is_file() for p in listed)


def test_overwrite_removes_exactly_the_listed_files(cli, run, images, tmp_path):
    out = tmp_path / "p"
    assert cli("predict", run, images, "--out", out).code == 0
    first = sorted(p.name for p in images.glob("*.png"))[0]
    (images / first).unlink()
    assert cli("predict", run, images, "--out", out, "--overwrite").code == 0
    assert not (out / "labels" / f"{first[:-4]}.tif").exists()
    assert not (out / "objects" / f"{first[:-4]}.csv").exists()


def test_overwrite_of_a_folder_without_a_manifest_is_refused(cli, run, images, tmp_path):
    out = tmp_path / "p"
    (out / "labels").mkdir(parents=True)
    tifffile.imwrite(out / "labels" / "truth.tif", np.zeros((4, 4), np.int32))
    before = checksums(out)
    cli.fails("predict", run, images, "--out", out, "--overwrite", match=f"no {MANIFEST}")
    assert checksums(out) == before


def test_demo_refuses_a_folder_it_did_not_make(cli, tmp_path):
    out = tmp_path / "mine"
    (out / "run").mkdir(parents=True)
    (out / "run" / "model.pt").write_bytes(b"my trained model")
    (out / "data").mkdir()
    (out / "data" / "train.csv").write_text("id,annotation\n")
    before = checksums(out)
    cli.fails("demo", "--out", out, match="was not made by cellstack demo")
    assert checksums(out) == before


def test_demo_output_file_is_refused(cli, tmp_path):
    (tmp_path / "f").write_text("x")
    cli.fails("demo", "--out", tmp_path / "f", match="not a folder")


def test_a_second_predict_into_the_same_folder_is_refused(cli, run, images, tmp_path):
    out = tmp_path / "p"
    with output_lock(out, "cellstack predict"):  # what a first, running predict holds
        cli.fails("predict", run, images, "--out", out, match="another cellstack predict")
    assert not any(out.iterdir())  # the refused run wrote nothing
    assert cli("predict", run, images, "--out", out).code == 0  # the lock went with it


def test_the_lock_excludes_a_second_holder_in_another_thread(tmp_path):
    results = []
    with output_lock(tmp_path / "o"):

        def second():
            try:
                with output_lock(tmp_path / "o"):
                    results.append("got it")
            except CellstackError as exc:
                results.append(str(exc))

        t = threading.Thread(target=second)
        t.start()
        t.join()
    assert results and "another cellstack is writing" in results[0]
