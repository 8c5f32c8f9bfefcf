"""Per-cell tables for the analysis stack: AnnData (.h5ad) and SpatialData, read back by
the libraries themselves (skipped, with the extra named, where they are absent)."""

from __future__ import annotations

import csv
import sys

import numpy as np
import pytest
import tifffile

from cellstack.cli import main
from cellstack.data.samples import sample_path
from cellstack.errors import CellstackError
from cellstack.inference.tables import channel_means

IMAGE = sample_path("nuclei") / "images" / "hela_h2b.tif"


def _two_channel_tiff(path):
    """The sample nuclei image as channel 0 and a flat 7 as channel 1, a CYX TIFF."""
    nuclei = tifffile.imread(IMAGE)
    stack = np.stack([nuclei, np.full_like(nuclei, 7)])
    tifffile.imwrite(path, stack, metadata={"axes": "CYX"})
    return nuclei


def test_channel_means_are_each_cells_mean_per_channel():
    labels = np.array([[1, 1, 0], [2, 2, 2]])
    channels = np.stack([np.arange(6).reshape(2, 3), np.full((2, 3), 10)]).astype(np.float32)
    means = channel_means(labels, np.array([2, 1]), channels)
    assert means.dtype == np.float32
    assert means.tolist() == [[4.0, 10.0], [0.5, 10.0]]
    with pytest.raises(CellstackError, match="do not match labels"):
        channel_means(labels, np.array([1]), channels[:, :1])


def test_a_table_without_its_package_is_refused_before_any_image(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "anndata", None)  # import anndata fails
    out = tmp_path / "p"
    args = ["predict", "nuclei", str(IMAGE), "--out", str(out), "--table", "anndata"]
    assert main([*args, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'cellstack[tables]'" in err
    assert not (out / "labels").exists()


def test_predict_writes_an_h5ad_per_image_with_every_channel(tmp_path):
    ad = pytest.importorskip("anndata", reason="the tables extra: pip install 'cellstack[tables]'")
    nuclei = _two_channel_tiff(tmp_path / "cells.tif")
    out = tmp_path / "p"
    args = ["predict", "nuclei", str(tmp_path / "cells.tif"), "--out", str(out), "--channel", "0"]
    assert main([*args, "--table", "anndata", "--quiet"]) == 0
    adata = ad.read_h5ad(out / "objects" / "cells.h5ad")
    labels = tifffile.imread(out / "labels" / "cells.tif")
    with open(out / "objects" / "cells.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert adata.n_obs == len(rows) == labels.max() >= 10
    assert adata.obs["label"].tolist() == [int(r["label"]) for r in rows]
    assert set(adata.obs["image_id"]) == {"cells"} and adata.obs_names[0] == "cells_1"
    assert adata.var_names.tolist() == ["channel_0", "channel_1"]
    expected = [nuclei[labels == k].mean() for k in adata.obs["label"]]
    np.testing.assert_allclose(adata.X[:, 0], expected, rtol=1e-5)
    assert np.all(adata.X[:, 1] == 7)
    centroids = [[float(r["centroid_x"]), float(r["centroid_y"])] for r in rows]
    np.testing.assert_allclose(adata.obsm["spatial"], centroids, rtol=1e-5)
    assert "objects/cells.h5ad" in (out / "cellstack-outputs.txt").read_text().split()


def test_result_to_anndata_measures_the_model_input_by_default():
    pytest.importorskip("anndata", reason="the tables extra: pip install 'cellstack[tables]'")
    from cellstack.inference.segmenter import Segmenter

    result = Segmenter.load("nuclei", device="cpu")(tifffile.imread(IMAGE))
    adata = result.to_anndata(image_id="hela")
    assert adata.var_names.tolist() == ["model_input"] and adata.n_obs == len(result)
    first = result.table["label"][0]
    assert adata.X[0, 0] == pytest.approx(result.image[result.labels == first].mean(), rel=1e-5)
    with pytest.raises(CellstackError, match="1 channel names for 2 channels"):
        result.to_anndata(np.stack([result.image] * 2), channel_names=["a"])


def test_predict_writes_a_spatialdata_zarr_linking_labels_and_table(tmp_path):
    sd = pytest.importorskip(
        "spatialdata", reason="the spatialdata extra: pip install 'cellstack[spatialdata]'"
    )
    _two_channel_tiff(tmp_path / "cells.tif")
    out = tmp_path / "p"
    args = ["predict", "nuclei", str(tmp_path / "cells.tif"), "--out", str(out), "--channel", "0"]
    assert main([*args, "--table", "spatialdata", "--quiet"]) == 0
    sdata = sd.read_zarr(out / "spatialdata" / "cells.zarr")
    table = sdata.tables["table"]
    attrs = table.uns["spatialdata_attrs"]
    assert attrs["region"] == "cells_labels" and attrs["instance_key"] == "label"
    labels = np.asarray(sdata.labels["cells_labels"])
    assert np.array_equal(labels, tifffile.imread(out / "labels" / "cells.tif"))
    assert set(table.obs["label"]) == set(np.unique(labels)) - {0}
    assert list(sdata.images["cells"].coords["c"].values) == ["channel_0", "channel_1"]
