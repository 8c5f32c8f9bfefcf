"""Outputs other tools read: QuPath GeoJSON and OME-Zarr labels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

import cellstack
from cellstack.cli import main
from cellstack.inference.export import outlines

SAMPLES = Path(cellstack.__file__).parent / "samples" / "nuclei"


def rasterise(ring: list[list[float]], shape: tuple[int, int]) -> np.ndarray:
    """bool[H, W]: the pixels whose centre lies inside the polygon (QuPath's rule)."""
    from matplotlib.path import Path as Polygon

    yy, xx = np.mgrid[: shape[0], : shape[1]]
    centres = np.column_stack([xx.ravel() + 0.5, yy.ravel() + 0.5])
    return Polygon(np.asarray(ring)).contains_points(centres).reshape(shape)


def rasterise_geometry(geometry: dict, shape: tuple[int, int]) -> np.ndarray:
    polygons = (
        [geometry["coordinates"]] if geometry["type"] == "Polygon" else geometry["coordinates"]
    )
    out = np.zeros(shape, bool)
    for polygon in polygons:
        out |= rasterise(polygon[0], shape)
    return out


def test_outline_rasterises_back_to_the_mask():
    mask = np.zeros((20, 24), bool)
    mask[3:9, 4:15] = True
    mask[9:15, 6:10] = True  # an L: concave corners too
    (ring,) = outlines(mask)
    assert ring[0] == ring[-1]
    assert np.array_equal(rasterise(ring, mask.shape), mask)
    mask[17:19, 20:23] = True  # a second part: a second polygon, smaller, after
    rings = outlines(mask)
    assert len(rings) == 2 and np.array_equal(
        rasterise(rings[0], mask.shape) | rasterise(rings[1], mask.shape), mask
    )


def test_geojson_of_nuclei_rasterises_to_the_label_image(tmp_path):
    out = tmp_path / "p"
    args = ["predict", "nuclei", str(SAMPLES / "images" / "hela_h2b.tif"), "--out", str(out)]
    assert main([*args, "--save-geojson", "--save-ome-zarr", "--quiet"]) == 0
    labels = tifffile.imread(out / "labels" / "hela_h2b.tif")
    collection = json.loads((out / "geojson" / "hela_h2b.geojson").read_text())
    assert collection["type"] == "FeatureCollection"
    features = collection["features"]
    assert len(features) == labels.max() >= 10
    ious = []
    for feature in features:
        props = feature["properties"]
        assert props["objectType"] == "detection" and props["classification"]["name"]
        assert set(props["measurements"]) == {"score", "area"}
        cell = labels == props["label"]
        drawn = rasterise_geometry(feature["geometry"], labels.shape)
        ious.append((cell & drawn).sum() / (cell | drawn).sum())
    assert min(ious) >= 0.95, sorted(ious)[:5]
    # The same labels as OME-Zarr, and --overwrite removes that folder with the rest.
    from cellstack.data.omezarr import open_labels

    zarr_out = out / "ome-zarr" / "hela_h2b.zarr"
    assert np.array_equal(open_labels(zarr_out, "r")[:], labels)
    mine = out / "ome-zarr" / "notes.txt"
    mine.write_text("mine")
    assert main([*args, "--overwrite", "--quiet"]) == 0
    assert not zarr_out.exists() and mine.read_text() == "mine"


@pytest.mark.parametrize("n", [0, 1])
def test_outline_of_tiny_masks(n):
    mask = np.zeros((5, 5), bool)
    mask[2, 2] = bool(n)
    rings = outlines(mask)
    assert (rings == []) if not n else np.array_equal(rasterise(rings[0], mask.shape), mask)


def test_outputs_are_written_behind_in_order_and_a_failed_write_stops_the_run():
    from cellstack.inference.predict import write_behind

    class Writer:
        def __init__(self, fail_on=None):
            self.added, self.fail_on = [], fail_on

        def add(self, image_id, result, source):
            if image_id == self.fail_on:
                raise OSError(f"{image_id}: disk full")
            self.added.append((image_id, result))

    segmented = []

    def results():
        for k in range(5):
            segmented.append(k)
            yield k

    items = [(image_id, f"{image_id}.tif") for image_id in "abcde"]
    writer = Writer()
    write_behind(writer, items, results())
    assert writer.added == list(zip("abcde", range(5), strict=True))
    segmented.clear()
    writer = Writer(fail_on="b")
    with pytest.raises(OSError, match="b: disk full"):
        write_behind(writer, items, results())
    # at most one image is segmented ahead of the failed write; nothing after it is written
    assert writer.added == [("a", 0)] and len(segmented) <= 3


def test_seg_npy_output_is_a_label_folder_for_training(tmp_path):
    """predict --save-seg-npy writes what Cellpose's GUI opens (the image beside its
    _seg.npy); the folder, corrected or not, reads back as labels: the GUI cycle."""
    from cellstack.data.layouts import load_dataset
    from cellstack.data.segnpy import read_seg_npy

    out = tmp_path / "p"
    args = ["predict", "nuclei", str(SAMPLES / "images" / "hela_h2b.tif"), "--out", str(out)]
    assert main([*args, "--save-seg-npy", "--quiet"]) == 0
    labels = tifffile.imread(out / "labels" / "hela_h2b.tif")
    (record,) = load_dataset(out / "seg-npy")
    assert record.image_id == "hela_h2b" and record.shape == labels.shape
    assert np.array_equal(record.label_image(), labels) and labels.max() >= 10
    # The keys Cellpose's GUI reads: outlines carry each cell's id on its boundary.
    data = np.load(out / "seg-npy" / "hela_h2b_seg.npy", allow_pickle=True).item()
    assert data["filename"] == "hela_h2b.png" and len(data["ismanual"]) == labels.max()
    assert set(np.unique(data["outlines"])) == set(np.unique(labels))
    assert np.array_equal(read_seg_npy(out / "seg-npy" / "hela_h2b_seg.npy"), labels)
    manifest = (out / "cellstack-outputs.txt").read_text().split()
    assert {"seg-npy/hela_h2b.png", "seg-npy/hela_h2b_seg.npy"} <= set(manifest)


@pytest.mark.slow
def test_a_seg_npy_folder_calibrates_a_model(tmp_path):
    """The GUI cycle's other half: a folder of images beside _seg.npy files is what
    `tune` calibrates on (and `train` trains on: tests/test_readme.py, docs/tools.md)."""
    out = tmp_path / "p"
    args = ["predict", "nuclei", str(SAMPLES / "images"), "--out", str(out), "--quiet"]
    assert main([*args, "--save-seg-npy", "--no-overlays"]) == 0
    tuned = tmp_path / "tuned"
    assert main(["tune", "nuclei", str(out / "seg-npy"), "--out", str(tuned), "--quiet"]) == 0
    assert (tuned / "thresholds.yaml").is_file()
