import json

import numpy as np
import pytest

from cellstack.data.coco import read_coco_instances, result_entry, segmentation_to_mask
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
    mask = segmentation_to_mask(square, 6, 6, where="x")
    assert mask[2, 2] and not mask[5, 5]
    with pytest.raises(DataError, match="x: bad segmentation"):
        segmentation_to_mask({"counts": "??", "size": [6]}, 6, 6, where="x")


def test_bad_json_is_named(tmp_path):
    (tmp_path / "a.json").write_text("{not json")
    with pytest.raises(DataError, match="a.json: not valid json"):
        read_coco_instances(tmp_path / "a.json")
    (tmp_path / "b.json").write_text(json.dumps({"images": []}))
    with pytest.raises(DataError, match="not a COCO instance file"):
        read_coco_instances(tmp_path / "b.json")


def test_result_entries_are_loadable_by_pycocotools():
    from pycocotools import mask as mask_utils

    masks = np.zeros((2, 10, 12), bool)
    masks[0, 2:5, 3:9] = True
    masks[1, 6:9, 0:2] = True
    entries = [result_entry("img", masks[0], 0.9, 1), result_entry("img", masks[1], 0.4, 3)]
    assert [e["category_id"] for e in entries] == [1, 3]
    assert entries[0]["bbox"] == [3.0, 2.0, 6.0, 3.0]
    json.dumps(entries)  # json-ready
    seg = dict(entries[1]["segmentation"], counts=entries[1]["segmentation"]["counts"].encode())
    np.testing.assert_array_equal(mask_utils.decode(seg).astype(bool), masks[1])
