"""Cellpose GUI files (``*_seg.npy``): read as labels, never run."""

import os

import numpy as np
import pytest

from cellstack.data.images import write_png
from cellstack.data.layouts import load_dataset
from cellstack.data.segnpy import read_seg_npy
from cellstack.errors import DataError


def _masks():
    masks = np.zeros((24, 32), np.uint16)
    masks[2:9, 3:11], masks[12:20, 15:27] = 1, 2
    return masks


def _gui_file(path, masks):
    """What Cellpose's GUI saves: np.save of a dict (a pickle in a .npy file)."""
    np.save(
        path,
        {
            "masks": masks,
            "outlines": np.zeros_like(masks),
            "filename": "cells.png",
            "ismanual": np.array([True, False]),
            "chan_choose": [0, 0],
            "est_diam": np.float64(30.0),
            "flows": [np.zeros((2, 3), np.float32)],
        },
    )


def test_a_folder_of_images_beside_gui_files_is_a_label_folder(tmp_path):
    write_png(tmp_path / "cells.png", np.full((24, 32), 80, np.uint8))
    _gui_file(tmp_path / "cells_seg.npy", _masks())
    (record,) = load_dataset(tmp_path)
    assert record.image_id == "cells" and record.label_path.name == "cells_seg.npy"
    assert np.array_equal(record.label_image(), _masks().astype(np.int32))
    assert record.sparse_masks().shape[0] == 2


def test_a_gui_file_that_asks_to_run_code_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil_seg.npy"
    np.save(path, np.array({"masks": Payload()}, dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match=r"evil_seg.npy: refused: the file asks to run .*system"):
        read_seg_npy(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"not a numpy file", "not a Cellpose _seg.npy file"),
        ({"outlines": np.zeros((4, 4))}, "no 2-D integer 'masks'"),
        ({"masks": np.zeros((4, 4), np.float32)}, "no 2-D integer 'masks'"),
        ({"masks": np.zeros((5, 5), np.int32)}, "masks are 5x5, the image is 32x24"),
    ],
)
def test_bad_gui_files_are_one_line_errors(tmp_path, content, match):
    path = tmp_path / "x_seg.npy"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        np.save(path, content)
    with pytest.raises(DataError, match=match):
        read_seg_npy(path, expected_shape=(24, 32))
