"""A folder of images over Dask workers: the outputs of one process, and resumable."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import tifffile

from cellstack.distributed.folders import predict_images
from cellstack.errors import CellstackError
from cellstack.inference.export import PARTS, PredictionWriter
from cellstack.inference.predict import PredictOptions, predict_folder

POST = PredictOptions(
    overrides=("predict.score_thresh=0", "predict.min_size=0", "predict.max_detections=30")
)


@pytest.fixture(scope="module")
def twenty(tmp_path_factory):
    """A folder of 20 small synthetic images."""
    from cellstack.data.synthetic import synthesize

    root = tmp_path_factory.mktemp("twenty")
    synthesize(root / "synth", 20, seed=9, shape=(96, 128), progress=False)
    images = root / "images"
    shutil.copytree(root / "synth" / "train", images)
    return images


def _labels(out):
    return {p.name: tifffile.imread(p) for p in sorted((out / "labels").glob("*.tif"))}


def test_twenty_images_on_two_workers_equal_one_process(
    client, one_thread, base_run, twenty, tmp_path
):
    one = predict_folder(base_run, twenty, tmp_path / "one", options=POST, progress=False)
    two = predict_images(
        base_run, twenty, tmp_path / "two", client=client, options=POST, progress=False
    )
    assert one.n_images == two.n_images == 20 and one.n_cells == two.n_cells > 0
    a, b = _labels(tmp_path / "one"), _labels(tmp_path / "two")
    assert list(a) == list(b) and all(np.array_equal(a[k], b[k]) for k in a)
    for name in ("submission.csv", "results.json", "inputs.json"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    assert not (tmp_path / "two" / PARTS).exists()


def test_a_stopped_run_finishes_only_the_missing_images(
    client, one_thread, base_run, twenty, tmp_path
):
    images = tmp_path / "images"
    shutil.copytree(twenty, images)
    last = sorted(images.glob("*.png"))[-1]
    good = last.read_bytes()
    last.write_bytes(good[: len(good) // 2])  # header intact, pixels cut off
    out = tmp_path / "out"
    with pytest.raises(CellstackError, match=f"{last.stem}.*run the same command again"):
        predict_images(base_run, images, out, client=client, options=POST, progress=False)
    done = PredictionWriter.done_parts(out) - {"job"}
    assert 0 < len(done) < 20 and last.stem not in done
    stamps = {i: (out / "labels" / f"{i}.tif").stat().st_mtime_ns for i in done}
    last.write_bytes(good)  # the user fixes the file and runs the same command again
    summary = predict_images(base_run, images, out, client=client, options=POST, progress=False)
    assert summary.n_images == 20
    assert all((out / "labels" / f"{i}.tif").stat().st_mtime_ns == stamps[i] for i in done)
    fresh = predict_folder(base_run, images, tmp_path / "fresh", options=POST, progress=False)
    assert fresh.n_cells == summary.n_cells
    assert (out / "submission.csv").read_bytes() == (
        tmp_path / "fresh" / "submission.csv"
    ).read_bytes()
    # Another source in the same unfinished folder is refused, not mixed in.
    (out / "results.json").unlink()
    (out / PARTS).mkdir()
    (out / PARTS / "job.json").write_text('{"source": "other", "images": []}')
    with pytest.raises(CellstackError, match="unfinished run of another source"):
        predict_images(base_run, images, out, client=client, options=POST, progress=False)
