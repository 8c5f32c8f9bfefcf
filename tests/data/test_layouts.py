"""One label image written in every layout `load_dataset` knows reads back the same
cells; an unknown layout or a missing path is one line naming it."""

import numpy as np
import pytest

from cellstack.data import rle
from cellstack.data.coco import label_annotations, write_coco_instances
from cellstack.data.images import write_png
from cellstack.data.labels import write_label_tiff
from cellstack.data.layouts import LAYOUT_HELP, load_dataset, load_predictions
from cellstack.data.sartorius import prepare_sartorius, write_submission, write_train_csv
from cellstack.errors import DataError
from cellstack.evaluation.matching import as_sparse
from cellstack.evaluation.metric import score_image

SHAPE = (24, 32)


def _labels() -> np.ndarray:
    """Four disjoint rectangles, ids 1..4."""
    labels = np.zeros(SHAPE, np.int32)
    for i, (y, x) in enumerate([(2, 2), (2, 18), (13, 4), (14, 20)], start=1):
        labels[y : y + 8, x : x + 10] = i
    return labels


def _image() -> np.ndarray:
    return (_labels() > 0).astype(np.uint8) * 200


def _write(layout: str, root, labels: np.ndarray):
    """Write image ``a`` with ``labels`` as ``layout``; the path to load."""
    if layout in ("images+labels", "images+masks"):
        write_png(root / "images" / "a.png", _image())
        write_label_tiff(root / layout.split("+")[1] / "a.tif", labels)
        return root
    if layout == "cellpose":
        write_png(root / "a.png", _image())
        write_label_tiff(root / "a_masks.tif", labels)
        return root
    if layout in ("sartorius", "prepared"):
        write_png(root / "train" / "a.png", _image())
        _, rles = rle.encode_labels(labels)
        rows = [
            {"id": "a", "annotation": r, "width": SHAPE[1], "height": SHAPE[0], "cell_type": "cort"}
            for r in rles
        ]
        write_train_csv(root / "train.csv", rows)
        if layout == "prepared":
            prepare_sartorius(root, root / "prepared", progress=False)
            return root / "prepared"
        return root
    if layout == "coco":
        write_png(root / "images" / "a.png", _image())
        image = {"id": 1, "file_name": "a.png", "width": SHAPE[1], "height": SHAPE[0]}
        annotations = label_annotations(labels, 1)
        write_coco_instances(root / "a.json", [image], [annotations], ["cort"])
        return root / "a.json"
    raise AssertionError(layout)


@pytest.mark.parametrize(
    "layout", ["images+labels", "images+masks", "cellpose", "sartorius", "prepared", "coco"]
)
def test_every_layout_reads_back_the_same_cells(tmp_path, layout):
    labels = _labels()
    (rec,) = load_dataset(_write(layout, tmp_path, labels))
    assert rec.shape == SHAPE and rec.image_id == "a"
    masks = rec.sparse_masks()
    assert masks.shape == (4, SHAPE[0] * SHAPE[1])
    # COCO stores polygons, rasterised again on reading: the very same pixels too.
    assert score_image(labels, masks, shape=SHAPE).score == 1.0


def test_unknown_and_missing_paths_name_themselves(tmp_path):
    with pytest.raises(DataError, match=r"nowhere: not found"):
        load_dataset(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty: unknown layout; ") as info:
        load_dataset(tmp_path / "empty")
    assert LAYOUT_HELP in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("form", ["submission", "labels folder", "cellpose folder"])
def test_predictions_in_each_form_are_matched_to_the_truth_ids(tmp_path, form):
    labels = _labels()
    (truth,) = load_dataset(_write("images+labels", tmp_path / "data", labels))
    pred = np.where(labels == 4, 0, labels)  # one cell missed
    if form == "submission":
        path = tmp_path / "submission.csv"
        write_submission(path, {"a": rle.encode_labels(pred)[1], "other": []})
    else:
        path = tmp_path / "pred"
        if form == "labels folder":
            write_label_tiff(path / "labels" / "a.tif", pred)
        else:
            write_png(path / "a.png", _image())
            write_label_tiff(path / "a_masks.tif", pred)
    found = load_predictions(path, [truth])
    assert (found["a"] != as_sparse(pred)).nnz == 0
    assert score_image(truth.sparse_masks(), found["a"], shape=SHAPE).tp[0] == 3


def test_predictions_without_any_truth_id_are_refused(tmp_path):
    labels = _labels()
    (truth,) = load_dataset(_write("images+labels", tmp_path / "data", labels))
    write_label_tiff(tmp_path / "pred" / "labels" / "b.tif", labels)
    with pytest.raises(DataError, match="no label image named after any truth id"):
        load_predictions(tmp_path / "pred", [truth])
    with pytest.raises(DataError, match="must be a submission .csv or a folder"):
        (tmp_path / "p.txt").write_text("x")
        load_predictions(tmp_path / "p.txt", [truth])
