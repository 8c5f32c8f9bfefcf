"""LIVECell's instance files: one reader for data and for ``prepare``."""

import json

import numpy as np
import pytest

from cellstack.data import rle
from cellstack.data.livecell import read_coco_instances, segmentation_pixels
from cellstack.data.sartorius import read_train_csv
from cellstack.errors import DataError
from cellstack.evaluation.metric import score_image


def test_livecell_json_matches_the_sartorius_truth(synth_dir):
    truth = {r.image_id: r for r in read_train_csv(synth_dir / "train.csv")}
    records = []
    for split in ("train", "val", "test"):
        records += read_coco_instances(synth_dir / "livecell" / f"livecell_coco_{split}.json")
    assert len(records) == len(truth)
    for rec in records:
        cell_type, image_id = rec.image_id.split("_Phase_")
        t = truth[image_id]
        assert rec.cell_type == cell_type == t.cell_type
        assert rec.image_path.is_file()
        assert len(rec.rles) == len(t.rles)
        # Polygons are an approximation of the pixel masks; most cells match at IoU > 0.5.
        result = score_image(t.sparse_masks(), rec.sparse_masks(), shape=t.shape)
        assert result.tp[0] >= 0.9 * len(t.rles)


def test_polygon_and_rle_segmentations():
    square = [[1.0, 1.0, 4.0, 1.0, 4.0, 4.0, 1.0, 4.0]]
    pixels = segmentation_pixels(square, 6, 6, where="x")
    assert 2 * 6 + 2 in pixels and 5 * 6 + 5 not in pixels
    assert list(pixels) == sorted(pixels)
    with pytest.raises(DataError, match="x: bad segmentation"):
        segmentation_pixels({"counts": "??", "size": [6]}, 6, 6, where="x")
    with pytest.raises(DataError, match="x: bad segmentation"):
        segmentation_pixels(None, 6, 6, where="x")


def test_bad_json_is_named(tmp_path):
    (tmp_path / "a.json").write_text("{not json")
    with pytest.raises(DataError, match="a.json: not valid json"):
        read_coco_instances(tmp_path / "a.json")
    (tmp_path / "b.json").write_text(json.dumps({"images": []}))
    with pytest.raises(DataError, match="not a COCO instance file"):
        read_coco_instances(tmp_path / "b.json")


def test_pixel_runs_encode_as_the_mask_does():
    rng = np.random.default_rng(0)
    for _ in range(20):
        mask = rng.random((7, 9)) < rng.random()
        assert rle.encode_pixels(np.flatnonzero(mask)) == rle.encode(mask)


def test_each_image_gets_its_own_annotations_in_file_order(tmp_path):
    from cellstack.data.livecell import image_annotations, read_instances_header

    images = [{"id": i, "file_name": f"{i}.tif", "width": 8, "height": 8} for i in (3, 1, 2)]
    # Interleaved across images, one for an image the file does not list; image 2 none.
    anns = [{"id": 10 + k, "image_id": i} for k, i in enumerate([1, 3, 9, 1, 3, 3])]
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": []}))
    got = [
        (n, img["id"], [a["id"] for a in a_])
        for n, img, a_ in image_annotations(read_instances_header(path))
    ]
    assert got == [(0, 3, [11, 14, 15]), (1, 1, [10, 13]), (2, 2, [])]
