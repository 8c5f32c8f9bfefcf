"""Nothing is written outside the output folder, and inputs are never overwritten."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

from cellstack.data.images import write_png
from tests.reliability.conftest import checksums


def _set_first_id(data, new_id: str) -> None:
    path = data / "train.csv"
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    old = rows[0]["id"]
    for row in rows:
        if row["id"] == old:
            row["id"] = new_id
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


@pytest.mark.parametrize(
    ("bad_id", "reason"),
    [
        ("../../escape", "path separator"),
        ("/abs/escape", "path separator"),
        ("..", "relative folder"),
        ("tab\there", "control character"),
        ("a\\b", "path separator"),
    ],
)
def test_bad_ids_in_train_csv(cli, data, tmp_path, bad_id, reason):
    _set_first_id(data, bad_id)
    before = checksums(tmp_path)
    cli.fails("evaluate", data, data / "train.csv", "--quiet", match=f"row 1 (id {bad_id}")
    res = cli.fails("evaluate", data, data / "train.csv", "--quiet", match=reason)
    assert "train.csv row" in res.err
    # prepare lists the rows and prepares the rest, writing only inside its folder.
    out = tmp_path / "prep"
    assert cli("prepare", "sartorius", data, "--out", out, "--quiet").code == 0
    problems = (out / "problems.csv").read_text()
    assert reason in problems
    after = checksums(tmp_path)
    new = {k for k in after if k not in before}
    assert all(k.startswith("prep/") for k in new), new
    assert {k: after[k] for k in before} == before


def test_coco_file_name_dotdot(cli, tmp_path):
    coco = {
        "images": [{"id": 1, "file_name": "..", "height": 8, "width": 8}],
        "annotations": [],
        "categories": [{"id": 1, "name": "cell"}],
    }
    (tmp_path / "a.json").write_text(json.dumps(coco))
    cli.fails("evaluate", tmp_path / "a.json", tmp_path / "a.json", match="cannot be used")


def test_predict_never_writes_over_its_inputs(cli, run, images, tmp_path):
    before = checksums(images)
    cli.fails("predict", run, images, "--out", images, match="holds the input image")
    cli.fails("predict", run, images, "--out", tmp_path, match="holds the input image")
    assert checksums(images) == before
    # An input folder named like an output folder is safe too.
    overlays = tmp_path / "out" / "overlays"
    shutil.copytree(images, overlays)
    before = checksums(overlays)
    cli.fails(
        "predict", run, overlays, "--out", tmp_path / "out", "--overwrite", match="input image"
    )
    assert checksums(overlays) == before


def test_duplicate_stems_are_an_error(cli, run, images, tmp_path):
    first = sorted(images.glob("*.png"))[0]
    shutil.copy(first, images / f"{first.stem}.tif")
    cli.fails("predict", run, images, "--out", tmp_path / "p", match="share the id")
    assert not (tmp_path / "p").exists()


def test_non_utf8_file_name(cli, run, images, tmp_path):
    import os

    src = sorted(images.glob("*.png"))[0]
    os.rename(src, os.path.join(os.fsencode(images), b"bad\xff.png"))
    cli.fails("predict", run, images, "--out", tmp_path / "p", match="not valid UTF-8")


def test_predict_into_a_non_empty_folder(cli, run, images, tmp_path):
    out = tmp_path / "p"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    cli.fails("predict", run, images, "--out", out, match="not empty")
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_overwrite_leaves_no_old_results_beside_new(cli, run, images, tmp_path):
    out = tmp_path / "p"
    assert cli("predict", run, images, "--out", out).code == 0
    write_png(out / "labels" / "stale.png", np.zeros((4, 4), np.uint8))
    (out / "notes.txt").write_text("mine")
    (out / ".submission.csv.abc.partial.csv").write_text("orphan")
    kept = sorted(images.glob("*.png"))[0]
    sorted(images.glob("*.png"))[1].unlink()
    assert cli("predict", run, images, "--out", out, "--overwrite").code == 0
    # The old run's files are gone; the user's file in labels/ is not predict's to delete.
    assert sorted(p.name for p in (out / "labels").iterdir()) == [kept.stem + ".tif", "stale.png"]
    assert sorted(p.name for p in (out / "overlays").iterdir()) == [kept.stem + ".png"]
    assert (out / "notes.txt").read_text() == "mine"
    assert not (out / ".submission.csv.abc.partial.csv").exists()
    with open(out / "submission.csv") as f:
        assert {r["id"] for r in csv.DictReader(f)} == {kept.stem}


def test_out_that_is_a_file(cli, run, images, tmp_path):
    (tmp_path / "f").write_text("x")
    cli.fails("predict", run, images, "--out", tmp_path / "f", match="not a folder")
    cli.fails("predict", run, images, "--out", tmp_path / "f" / "sub", match="Not a directory")
    assert (tmp_path / "f").read_text() == "x"


def test_prepare_refuses_a_users_folder(cli, data, tmp_path):
    out = tmp_path / "mine"
    (out / "masks").mkdir(parents=True)
    (out / "masks" / "cells.npz").write_bytes(b"my own file")
    cli.fails("prepare", "sartorius", data, "--out", out, "--quiet", match="did not write")
    assert (out / "masks" / "cells.npz").read_bytes() == b"my own file"


def test_prepare_again_deletes_only_its_own_files(cli, data, tmp_path):
    out = tmp_path / "prep"
    assert cli("prepare", "sartorius", data, "--out", out, "--quiet").code == 0
    (out / "masks" / "keep.npz").write_bytes(b"a user's file")
    ours = sorted(p.name for p in (out / "masks").glob("*.npz") if p.name != "keep.npz")
    # A changed source re-prepares; drop one image's rows so its mask must go.
    with open(data / "train.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    gone = rows[0]["id"]
    with open(data / "train.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(r for r in rows if r["id"] != gone)
    assert cli("prepare", "sartorius", data, "--out", out, "--quiet").code == 0
    now = sorted(p.name for p in (out / "masks").glob("*.npz"))
    assert "keep.npz" in now and f"{gone}.npz" not in now
    assert set(now) == {"keep.npz", *(n for n in ours if n != f"{gone}.npz")}


def test_inputs_unchanged_by_a_full_workflow(cli, run, data, images, tmp_path):
    before_data, before_images = checksums(data), checksums(images)
    assert cli("evaluate", data, data / "train.csv", "--quiet").code == 0
    assert cli("predict", run, images, "--out", tmp_path / "p").code == 0
    assert cli("prepare", "sartorius", data, "--out", tmp_path / "prep", "--quiet").code == 0
    assert checksums(data) == before_data and checksums(images) == before_images


def test_prepare_is_not_up_to_date_after_its_outputs_were_edited(cli, data, tmp_path):
    out = tmp_path / "prep"
    assert cli("prepare", "sartorius", data, "--out", out).code == 0
    records = (out / "records.csv").read_text()
    assert "up to date" in cli("prepare", "sartorius", data, "--out", out).out
    # A hand edit of what prepare wrote: one row dropped, then a mask file damaged.
    lines = records.splitlines(keepends=True)
    (out / "records.csv").write_text("".join(lines[:-1]))
    again = cli("prepare", "sartorius", data, "--out", out)
    assert again.code == 0 and "up to date" not in again.out
    assert (out / "records.csv").read_text() == records  # written again, whole
    mask = sorted((out / "masks").glob("*.npz"))[0]
    mask.write_bytes(b"edited")
    again = cli("prepare", "sartorius", data, "--out", out)
    assert again.code == 0 and "up to date" not in again.out
    assert mask.read_bytes() != b"edited"
