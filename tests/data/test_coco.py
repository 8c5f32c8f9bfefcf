import json

import numpy as np

from cellstack.data.coco import result_entry


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
