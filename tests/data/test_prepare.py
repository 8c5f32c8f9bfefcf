import csv
import json
import shutil

import numpy as np
import pytest
import scipy.sparse as sp

from cellstack.cli import main
from cellstack.config import load_config
from cellstack.data import rle
from cellstack.data.images import write_png
from cellstack.data.layouts import load_dataset
from cellstack.data.livecell import (
    livecell_cell_type,
    livecell_sample_id,
    prepare_livecell,
    read_coco_instances,
)
from cellstack.data.maskcache import load_masks, save_masks
from cellstack.data.masks import sparse_to_labels
from cellstack.data.sartorius import prepare_sartorius, read_train_csv, write_train_csv
from cellstack.data.splits import split_records
from cellstack.errors import DataError


def _same(a: sp.csr_matrix, b: sp.csr_matrix) -> bool:
    return a.shape == b.shape and (a != b).nnz == 0


def test_mask_file_round_trip_and_errors(tmp_path, rng):
    shape = (13, 17)
    dense = rng.random((5, *shape)) < 0.3
    dense[2] = False  # an empty instance keeps its place
    masks = sp.csr_matrix(dense.reshape(5, -1))
    save_masks(tmp_path / "m.npz", masks, shape)
    back = load_masks(tmp_path / "m.npz", shape)
    assert _same(back, masks)
    # Overlaps: the later instance wins, as rle.rles_to_labels paints.
    rles = [rle.encode(m) for m in dense]
    np.testing.assert_array_equal(sparse_to_labels(back, shape), rle.rles_to_labels(rles, shape))
    with pytest.raises(DataError, match=r"m.npz: masks are for a 17x13 image"):
        load_masks(tmp_path / "m.npz", (17, 13))
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="bad.npz: not a cellstack mask file"):
        load_masks(tmp_path / "bad.npz", shape)
    with pytest.raises(DataError, match="run cellstack prepare again"):
        load_masks(tmp_path / "missing.npz", shape)


def test_livecell_names():
    assert livecell_cell_type("A172_Phase_A7_1_00d00h00m_1.tif", "cell") == "a172"
    assert livecell_cell_type("x_Phase_1.tif", "SHSY5Y") == "shsy5y"
    assert livecell_sample_id("BV2_Phase_B4_2_03d12h00m_3.tif") == "BV2_Phase_B4_2"
    assert livecell_sample_id("odd.tif") == "odd"


def test_livecell_prepared_like_its_json_and_cached(synth_dir, tmp_path):
    out = tmp_path / "lc"
    report = prepare_livecell(synth_dir / "livecell", out, progress=False)
    assert not report.cached and report.n_images == 9 and not report.problems
    assert sum(report.per_split.values()) == 9 and set(report.per_split) == {"train", "val", "test"}
    records = load_dataset(out)
    by_id = {r.image_id: r for r in records}
    for split in ("train", "val", "test"):
        for ref in read_coco_instances(synth_dir / "livecell" / f"livecell_coco_{split}.json"):
            rec = by_id[ref.image_id]
            assert rec.split == split and rec.cell_type == ref.cell_type
            assert rec.sample_id == ref.sample_id  # one rule: the same classes and groups
            assert rec.image_path == ref.image_path.resolve()
            assert _same(rec.sparse_masks(), ref.sparse_masks())
    # A second run on unchanged sources does nothing and says so.
    stamps = {p: p.stat().st_mtime_ns for p in (out / "masks").iterdir()}
    again = prepare_livecell(synth_dir / "livecell", out, progress=False)
    assert again.cached and again.n_images == 9
    assert {p: p.stat().st_mtime_ns for p in (out / "masks").iterdir()} == stamps


def _copy_livecell(synth_dir, tmp_path):
    src = tmp_path / "LIVECell_dataset_2021"
    shutil.copytree(synth_dir / "livecell", src)
    return src


def test_livecell_generic_category_bad_annotation_and_missing_image(synth_dir, tmp_path):
    src = _copy_livecell(synth_dir, tmp_path)
    path = src / "livecell_coco_train.json"
    coco = json.loads(path.read_text())
    # The real all-lines json has one category, "cell": the type comes from the name.
    coco["categories"] = [{"id": 1, "name": "cell"}]
    for ann in coco["annotations"]:
        ann["category_id"] = 1
    bad = coco["annotations"][0]
    bad["segmentation"] = {"size": [3], "counts": "??"}
    gone = coco["images"][1]
    path.write_text(json.dumps(coco))
    (src / "images" / gone["file_name"]).unlink()

    report = prepare_livecell(src, tmp_path / "out", progress=False)
    where = {p.where.rsplit(" ", 2)[-2:][0] for p in report.problems}
    assert {"annotation", "image"} <= where
    problem = next(p for p in report.problems if "annotation" in p.where)
    assert (
        problem.where.endswith(f"annotation {bad['id']}") and "bad segmentation" in problem.reason
    )
    missing = next(p for p in report.problems if "not found" in p.reason)
    assert missing.image_id == gone["file_name"][:-4]
    records = {r.image_id: r for r in load_dataset(tmp_path / "out")}
    assert report.n_images == 8 and gone["file_name"][:-4] not in records
    first = next(i for i in coco["images"] if i["id"] == bad["image_id"])
    rec = records[first["file_name"][:-4]]
    n_anns = sum(a["image_id"] == bad["image_id"] for a in coco["annotations"])
    assert rec.sparse_masks().shape[0] == n_anns - 1  # the bad annotation alone is left out
    assert rec.cell_type == first["file_name"].split("_")[0]  # from the file name
    with open(tmp_path / "out" / "problems.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == len(report.problems)
    # Changing a source re-prepares.
    (src / "images" / gone["file_name"]).write_bytes(
        (synth_dir / "livecell" / "images" / gone["file_name"]).read_bytes()
    )
    assert prepare_livecell(src, tmp_path / "out", progress=False).n_images == 9


def test_livecell_without_json_is_one_line_error(tmp_path, capsys):
    assert main(["prepare", "livecell", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "no livecell_coco_{train,val,test}.json found" in capsys.readouterr().err


def test_sartorius_prepared_equals_raw(synth_dir, tmp_path):
    report = prepare_sartorius(synth_dir, tmp_path / "p", progress=False)
    assert report.n_images == 9 and not report.problems
    raw = {r.image_id: r for r in read_train_csv(synth_dir / "train.csv")}
    for rec in load_dataset(tmp_path / "p"):
        ref = raw[rec.image_id]
        assert (rec.cell_type, rec.sample_id, rec.shape) == (
            ref.cell_type,
            ref.sample_id,
            ref.shape,
        )
        assert _same(rec.sparse_masks(), ref.sparse_masks())
        np.testing.assert_array_equal(rec.label_image(), ref.label_image())
        assert rec.train_mask_path is None and rec.for_training() == rec


def _sartorius_with_problems(synth_dir, tmp_path):
    data = tmp_path / "sartorius"
    shutil.copytree(synth_dir, data, ignore=shutil.ignore_patterns("livecell"))
    with open(data / "train.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    ids = list(dict.fromkeys(r["id"] for r in rows))
    rows[3]["annotation"] = "999999 5"  # past the image
    rows[5]["width"] = "wide"
    other = "astro" if rows[0]["cell_type"] != "astro" else "cort"
    rows.append({**rows[0], "cell_type": other})  # disagrees with the id's other rows
    (data / "train" / f"{ids[-1]}.png").unlink()
    write_train_csv(data / "train.csv", rows)
    return data, rows, ids


def test_sartorius_bad_rows_are_all_reported_and_left_out(synth_dir, tmp_path, capsys):
    data, rows, ids = _sartorius_with_problems(synth_dir, tmp_path)
    assert main(["prepare", "sartorius", str(data), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "4 problem(s) left out" in out
    assert f"row 4 (id {rows[3]['id']}): RLE run ends at pixel 1000003" in out
    assert f"row 6 (id {rows[5]['id']}): width must be an integer" in out
    assert f"row {len(rows)} (id {rows[0]['id']}): size/cell_type" in out
    assert f"{data / 'train' / ids[-1]}.png (id {ids[-1]}): image file not found" in out
    records = {r.image_id: r for r in load_dataset(data / "prepared")}
    assert len(records) == 8 and ids[-1] not in records
    n_rows = sum(r["id"] == rows[3]["id"] for r in rows[:-1])
    n_bad = sum(rows[k]["id"] == rows[3]["id"] for k in (3, 5))
    assert records[rows[3]["id"]].sparse_masks().shape[0] == n_rows - n_bad


def _ring_csv(tmp_path):
    """One 40x40 image: a ring (a cell with a hole) and a disk on the right half."""
    data = tmp_path / "rings"
    yy, xx = np.mgrid[:40, :40]
    ring = ((yy - 12) ** 2 + (xx - 12) ** 2 <= 64) & ((yy - 12) ** 2 + (xx - 12) ** 2 > 9)
    disk = (yy - 25) ** 2 + (xx - 30) ** 2 <= 16
    write_png(data / "train" / "img.png", np.full((40, 40), 128, np.uint8))
    meta = {"id": "img", "width": 40, "height": 40, "cell_type": "astro", "sample_id": "s"}
    write_train_csv(
        data / "train.csv", [{**meta, "annotation": rle.encode(m)} for m in (ring, disk)]
    )
    return data, ring, disk


def test_holes_and_corrected_masks_clean_training_only(tmp_path):
    data, ring, disk = _ring_csv(tmp_path)
    # The corrected mask's red channel keeps only the left half of the image.
    fix = np.zeros((40, 40, 3), np.uint8)
    fix[:, :20, 0] = 255
    fix[:, :, 2] = 255  # other channels do not count
    write_png(tmp_path / "fix" / "img.png", fix)
    report = prepare_sartorius(
        data, tmp_path / "p", holes=True, corrected=tmp_path / "fix", progress=False
    )
    assert not report.problems
    (rec,) = load_dataset(tmp_path / "p")
    raw = rec.sparse_masks().toarray().reshape(-1, 40, 40)
    np.testing.assert_array_equal(raw, np.stack([ring, disk]))  # scoring keeps the raw
    clean = rec.for_training().sparse_masks().toarray().reshape(-1, 40, 40)
    yy, xx = np.mgrid[:40, :40]
    filled = (yy - 12) ** 2 + (xx - 12) ** 2 <= 64
    # The hole is filled, the disk (outside the true foreground) is gone.
    np.testing.assert_array_equal(clean, (filled & (xx < 20))[None])
    # The trainer trains on the clean masks.
    train, val, _ = split_records([rec], load_config(None), tmp_path / "p")
    assert train[0].mask_path == rec.train_mask_path and val == []


def test_splits_choose_training_and_validation(synth_dir, tmp_path):
    prepare_livecell(synth_dir / "livecell", tmp_path / "lc", progress=False)
    records = load_dataset(tmp_path / "lc")
    cfg = load_config(None, ["data.splits=[train, test]", "data.val_split=val"])
    train, val, folds = split_records(records, cfg, tmp_path / "lc")
    assert {r.split for r in train} == {"train", "test"} and {r.split for r in val} == {"val"}
    assert len(train) + len(val) == 9 and folds is None
    with pytest.raises(Exception, match=r"no split 'tset' \(it has 'test', 'train', 'val'\)"):
        split_records(records, load_config(None, ["data.splits=[tset]"]), tmp_path / "lc")


def test_corrected_mask_of_wrong_size_is_reported(tmp_path):
    data, _, _ = _ring_csv(tmp_path)
    write_png(tmp_path / "fix" / "img.png", np.zeros((10, 10), np.uint8))
    # The only image is left out, so nothing is usable: the error names the first problem.
    with pytest.raises(
        DataError, match="no usable image.*corrected mask is 10x10, the image is 40x40"
    ):
        prepare_sartorius(data, tmp_path / "p", corrected=tmp_path / "fix", progress=False)


# Each was a signal (exit -11), a 65 s polygon, a garbage mask or a silent drop (issue 44).
BAD_SEGMENTATIONS = {
    "coordinate 3e9": [[1.0, 1.0, 3e9, 1.0, 4.0, 4.0]],
    "coordinate 1e12": [[1.0, 1.0, 1e12, 1.0, 4.0, 4.0]],
    "coordinate 1.7e308": [[1.0, 1.0, 4.0, 1.7e308, 4.0, 4.0]],
    "coordinate -1e8": [[-1e8, 1.0, 4.0, 1.0, 4.0, 4.0]],
    "not a number": [[1.0, 1.0, "4", 1.0, 4.0, 4.0]],
    "corrupt RLE": {"counts": "zzz", "size": None},
    "two points": [[1.0, 1.0, 4.0, 4.0]],
    "one repeated point": [[2.0, 2.0, 2.0, 2.0, 2.0, 2.0]],
    "empty list": [],
    "wholly outside": None,  # filled in with the image's size below
}


def test_every_bad_segmentation_is_a_reported_problem_in_bounded_time(synth_dir, tmp_path):
    import time

    src = _copy_livecell(synth_dir, tmp_path)
    path = src / "livecell_coco_train.json"
    coco = json.loads(path.read_text())
    img = coco["images"][0]
    h, w = img["height"], img["width"]
    bad = dict(BAD_SEGMENTATIONS)
    bad["wholly outside"] = [[w + 5.0, 5.0, w + 20.0, 5.0, w + 20.0, 20.0]]
    bad["corrupt RLE"] = {"counts": "zzz", "size": [h, w]}
    next_id = max(a["id"] for a in coco["annotations"]) + 1
    ids = {}
    for k, (name, seg) in enumerate(bad.items()):
        ids[next_id + k] = name
        coco["annotations"].append(
            {"id": next_id + k, "image_id": img["id"], "category_id": 1, "segmentation": seg}
        )
    path.write_text(json.dumps(coco))
    t0 = time.perf_counter()
    report = prepare_livecell(src, tmp_path / "out", progress=False)
    assert time.perf_counter() - t0 < 60
    reported = {int(p.where.rsplit(" ", 1)[-1]) for p in report.problems if "annotation" in p.where}
    assert reported == set(ids), {ids[i] for i in set(ids) - reported}
    assert all("bad segmentation" in p.reason for p in report.problems)
    rec = next(r for r in load_dataset(tmp_path / "out") if r.image_id == img["file_name"][:-4])
    own = sum(a["image_id"] == img["id"] for a in coco["annotations"]) - len(bad)
    assert rec.sparse_masks().shape[0] == own


def test_rle_strings_are_read_as_pycocotools_writes_them_and_bad_ones_refused():
    from pycocotools import mask as mask_utils

    from cellstack.data.coco import coded_segmentation, rle_string_counts
    from cellstack.errors import DataError

    rng = np.random.default_rng(1)
    for _ in range(20):
        mask = rng.random((9, 13)) < rng.random()
        coded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        runs = rle_string_counts(coded["counts"])
        assert sum(runs) == 9 * 13
        flat = np.repeat(np.arange(len(runs)) % 2, runs).astype(bool)
        assert np.array_equal(flat, mask.ravel(order="F"))
    for counts, match in (
        ("zzz", "covers|alphabet|negative|truncated"),
        ("0", "runs cover 0"),
        ("\x7f", "alphabet"),
        ("1", "runs cover 1 pixels"),
    ):
        with pytest.raises(DataError, match=match):
            coded_segmentation({"counts": counts, "size": [9, 13]}, 9, 13)
    with pytest.raises(DataError, match="size"):
        coded_segmentation({"counts": [117], "size": [13, 9]}, 9, 13)
    with pytest.raises(DataError, match="runs cover 116"):
        coded_segmentation({"counts": [100, 16], "size": [9, 13]}, 9, 13)
    with pytest.raises(DataError, match="non-negative"):
        coded_segmentation({"counts": [120, -3], "size": [9, 13]}, 9, 13)


def test_two_images_sharing_an_id_are_both_left_out_or_refused(synth_dir, tmp_path):
    from cellstack.data.livecell import read_coco_instances
    from cellstack.errors import DataError

    src = _copy_livecell(synth_dir, tmp_path)
    path = src / "livecell_coco_train.json"
    coco = json.loads(path.read_text())
    first, second = coco["images"][:2]
    second["id"] = first["id"]
    path.write_text(json.dumps(coco))
    report = prepare_livecell(src, tmp_path / "out", progress=False)
    shared = [p for p in report.problems if "shared by images[0, 1]" in p.reason]
    assert {p.image_id for p in shared} == {first["file_name"][:-4], second["file_name"][:-4]}
    kept = {r.image_id for r in load_dataset(tmp_path / "out")}
    assert not kept & {p.image_id for p in shared}
    with pytest.raises(DataError, match=r"images\[0\]: image id .* is shared by images\[0, 1\]"):
        read_coco_instances(path)


def test_categories_that_are_no_name_or_id_are_refused_or_ignored(tmp_path):
    # Two finds of the fuzzer: a category named True crashed on .lower(), an annotation
    # whose category_id is a list crashed counting the votes.
    write_png(tmp_path / "a.png", np.zeros((12, 16), np.uint8))
    square = [[1, 1, 8, 1, 8, 8, 1, 8]]
    doc = {
        "images": [{"id": 0, "file_name": "a.png", "height": 12, "width": 16}],
        "annotations": [{"id": 1, "image_id": 0, "category_id": 0, "segmentation": square}],
        "categories": [{"id": 0, "name": True}],
    }
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(DataError, match=r"bad.json: categories\[0\]: .* name True"):
        read_coco_instances(path)
    doc["categories"] = [{"id": 0, "name": "HeLa"}]
    doc["annotations"][0]["category_id"] = []
    path.write_text(json.dumps(doc))
    (record,) = read_coco_instances(path)
    assert record.cell_type == "a.png"  # no category: the file-name rule
