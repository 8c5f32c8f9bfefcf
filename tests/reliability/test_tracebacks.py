"""Inputs that used to end in a traceback are one-line errors (or simply work)."""

from __future__ import annotations

import csv
import json
import os

import pytest

from tests.reliability.conftest import checksums


def _rewrite(path, change) -> None:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    change(rows)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_rle_token_too_large_for_int64(cli, data, tmp_path):
    def huge(rows):
        rows[0]["annotation"] = "99999999999999999999999 5"

    _rewrite(data / "train.csv", huge)
    cli.fails("evaluate", data, data / "train.csv", "--quiet", match="row 1")
    res = cli.fails("evaluate", data, data / "train.csv", "--quiet", match="too large")
    assert "99999999999999999999999" in res.err
    assert cli("prepare", "sartorius", data, "--out", tmp_path / "p", "--quiet").code == 0
    assert "too large" in (tmp_path / "p" / "problems.csv").read_text()


def test_image_size_beyond_the_limit_is_refused_before_allocating(cli, data):
    def giant(rows):
        for r in rows:
            r["width"] = r["height"] = "100000"

    _rewrite(data / "train.csv", giant)
    cli.fails("evaluate", data, data / "train.csv", "--quiet", match="over the limit")


def test_non_utf8_csv(cli, data):
    raw = (data / "train.csv").read_bytes()
    (data / "train.csv").write_bytes(raw.replace(b"shsy5y", b"shsy5\xff", 1))
    cli.fails("evaluate", data, data / "train.csv", "--quiet", match="not UTF-8")


def test_bom_in_csv_header_is_accepted(cli, data, tmp_path):
    raw = (data / "train.csv").read_bytes()
    (data / "train.csv").write_bytes(b"\xef\xbb\xbf" + raw)
    res = cli("evaluate", data, data / "train.csv", "--quiet")
    assert res.code == 0, res.err
    sub = tmp_path / "sub.csv"
    with open(data / "train.csv", encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f))
    with open(sub, "w", encoding="utf-8-sig", newline="") as f:
        f.write("id,predicted\n")
        f.writelines(f"{r['id']},{r['annotation']}\n" for r in rows)
    res = cli("evaluate", data, sub, "--quiet")
    assert res.code == 0 and "1.0000" in res.out


def test_prepared_records_missing_a_column(cli, data, tmp_path):
    out = tmp_path / "p"
    assert cli("prepare", "sartorius", data, "--out", out, "--quiet").code == 0

    def drop(rows):
        for r in rows:
            r.pop("split")

    _rewrite(out / "records.csv", drop)
    cli.fails("evaluate", out, data / "train.csv", "--quiet", match="missing column(s) split")


def test_prepared_records_with_a_mask_path_outside(cli, data, tmp_path):
    out = tmp_path / "p"
    assert cli("prepare", "sartorius", data, "--out", out, "--quiet").code == 0

    def escape(rows):
        rows[0]["masks"] = "../../../etc/passwd"

    _rewrite(out / "records.csv", escape)
    cli.fails("evaluate", out, data / "train.csv", "--quiet", match="outside")


def test_corrupt_prepared_manifest(cli, data, tmp_path):
    out = tmp_path / "p"
    assert cli("prepare", "sartorius", data, "--out", out, "--quiet").code == 0
    (out / "prepared.json").write_bytes(b"\xff\xfe garbage")
    cli.fails("evaluate", out, data / "train.csv", "--quiet", match="prepared.json")
    # prepare itself repairs it (the folder is its own).
    assert cli("prepare", "sartorius", data, "--out", out, "--quiet").code == 0
    assert json.loads((out / "prepared.json").read_text())["images"] == 4


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_out(cli, run, images, tmp_path):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o500)
    try:
        cli.fails("predict", run, images, "--out", out / "p", match="Permission denied")
    finally:
        out.chmod(0o700)


def test_coco_json_with_missing_keys(cli, tmp_path):
    bad = {"images": [{"id": 1, "width": 8}], "annotations": [], "categories": []}
    (tmp_path / "a.json").write_text(json.dumps(bad))
    cli.fails("evaluate", tmp_path / "a.json", tmp_path / "a.json", match="images[0]")
    (tmp_path / "b.json").write_bytes(b'{"images": [\xff]}')
    cli.fails("evaluate", tmp_path / "b.json", tmp_path / "b.json", match="not UTF-8")


def test_labels_folder_with_a_stack(cli, tmp_path):
    import numpy as np
    import tifffile

    (tmp_path / "d" / "images").mkdir(parents=True)
    (tmp_path / "d" / "labels").mkdir()
    tifffile.imwrite(tmp_path / "d" / "images" / "a.tif", np.zeros((32, 32), np.uint16))
    tifffile.imwrite(
        tmp_path / "d" / "labels" / "a.tif",
        np.zeros((3, 32, 32), np.uint16),
        photometric="minisblack",
    )
    before = checksums(tmp_path / "d")
    cli.fails("evaluate", tmp_path / "d", tmp_path / "d", "--quiet", match="axes 'QYX'")
    assert checksums(tmp_path / "d") == before
