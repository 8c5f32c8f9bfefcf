"""Per-cell tables for the single-cell analysis stack: AnnData (``.h5ad``: scanpy,
squidpy and muon read it) and SpatialData (the image, its labels and the table in one
zarr, linked by region and instance id).

Both are optional (``pip install 'cellstack[tables]'``, ``'cellstack[spatialdata]'``);
asking for one without its package is a one-line error naming the extra.

An AnnData of one image holds one row (``obs``) per cell: ``image_id``, the object
table's columns (``label``, ``cell_type``, ``score``, ``area``, centroid, bounding box,
``z``/``t`` in stacks), and ``region`` / ``label`` as SpatialData's region and instance
keys; ``X`` float32[cells, channels] is each channel's mean raw intensity over the
cell's pixels (``var`` names the channels); ``obsm["spatial"]`` float64[cells, 2] is
the centroid as (x, y) pixels, scanpy/squidpy's order.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from cellstack.errors import CellstackError
from cellstack.fileio import atomic_path

#: What ``predict --table`` may write: ``objects/{id}.h5ad``, ``spatialdata/{id}.zarr``.
TABLE_FORMATS = ("anndata", "spatialdata")
#: The extra that brings each format's packages.
EXTRAS = {"anndata": "tables", "spatialdata": "spatialdata"}


def require(module: str, fmt: str) -> ModuleType:
    """Import ``module`` for the table format ``fmt``, or say which extra brings it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise CellstackError(
            f"{fmt} tables need the {module} package: pip install 'cellstack[{EXTRAS[fmt]}]'"
        ) from None


def channel_means(labels: np.ndarray, label_ids: np.ndarray, channels: np.ndarray) -> np.ndarray:
    """float32[N, C]: each channel's mean over each cell's pixels.

    Args:
        labels: int[*lead, H, W] instance ids, 0 = background.
        label_ids: int[N] the cells' ids, the rows in this order.
        channels: float[C, *lead, H, W] intensities, same pixel grid as ``labels``.
    """
    if channels.shape[1:] != labels.shape:
        raise CellstackError(
            f"channels of shape {channels.shape} do not match labels {labels.shape}: "
            "give [C, *labels.shape]"
        )
    flat = labels.ravel().astype(np.int64)
    n = int(flat.max(initial=0)) + 1
    area = np.bincount(flat, minlength=n).astype(np.float64)
    sums = np.stack(
        [np.bincount(flat, weights=c.ravel().astype(np.float64), minlength=n) for c in channels],
        axis=1,
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        means = sums / area[:, None]
    return means[np.asarray(label_ids, dtype=np.int64)].astype(np.float32)


def anndata_of(
    table: dict[str, np.ndarray],
    intensities: np.ndarray,
    channel_names: Sequence[str],
    image_id: str,
) -> Any:
    """The AnnData of one image's cells (see the module docstring).

    Args:
        table: the object table's columns (``Result.table``).
        intensities: float32[N, C] per-cell channel means (:func:`channel_means`).
        channel_names: C names, ``var``'s index.
        image_id: the image's id, in ``obs`` and in the cells' names
            (``{image_id}_{label}``, unique across images for concatenation).
    """
    ad = require("anndata", "anndata")
    pd = require("pandas", "anndata")
    n = len(table["label"])
    obs = pd.DataFrame({"image_id": np.full(n, image_id, dtype=object), **table})
    obs["cell_type"] = pd.Categorical(obs["cell_type"].astype(str))
    obs["region"] = pd.Categorical(np.full(n, labels_name(image_id), dtype=object))
    obs.index = pd.Index([f"{image_id}_{label}" for label in table["label"]], dtype=object)
    var = pd.DataFrame(index=pd.Index([str(c) for c in channel_names], dtype=object))
    adata = ad.AnnData(X=np.asarray(intensities, dtype=np.float32), obs=obs, var=var)
    adata.obsm["spatial"] = np.column_stack(
        [np.asarray(table["centroid_x"], float), np.asarray(table["centroid_y"], float)]
    ).reshape(n, 2)
    adata.uns["cellstack"] = {
        "image_id": image_id,
        "X": "mean raw intensity of each channel over the cell's pixels",
        "spatial": "centroid (x, y) in pixels of the image",
    }
    return adata


def labels_name(image_id: str) -> str:
    """The SpatialData element name of an image's labels (the table's region)."""
    return f"{_element_name(image_id)}_labels"


def _element_name(image_id: str) -> str:
    """``image_id`` as a SpatialData element name (letters, digits, ``_``, ``-``, ``.``)."""
    name = "".join(c if c.isalnum() or c in "_-." else "_" for c in image_id)
    return name if name[:1].isalpha() else f"image_{name}"


def write_h5ad(path: Path, adata: Any) -> None:
    """Write ``adata`` to ``path`` whole or not at all."""
    with atomic_path(path) as tmp:
        adata.write_h5ad(tmp)


def write_spatialdata(path: Path, image: np.ndarray, labels: np.ndarray, adata: Any) -> None:
    """Write one 2-D image as a SpatialData zarr at ``path`` (a folder, written beside
    under a temporary name and renamed): the image ``{id}`` (``c, y, x``, channels
    named as ``adata.var``), its labels ``{id}_labels`` and ``adata`` as the table
    ``table``, annotating the labels by ``region`` and instance ``label``.

    Args:
        image: float[C, H, W] or uint8[C, H, W] intensities.
        labels: int[H, W] instance ids, 0 = background.
        adata: :func:`anndata_of`'s table of those labels.
    """
    import shutil

    sd = require("spatialdata", "spatialdata")
    models = require("spatialdata.models", "spatialdata")
    region = str(adata.obs["region"].iloc[0]) if adata.n_obs else labels_name(path.stem)
    name = region.removesuffix("_labels")
    channels = [str(c) for c in adata.var_names]
    sdata = sd.SpatialData(
        images={
            name: models.Image2DModel.parse(
                np.asarray(image), dims=("c", "y", "x"), c_coords=channels
            )
        },
        labels={region: models.Labels2DModel.parse(np.asarray(labels), dims=("y", "x"))},
        tables={
            "table": models.TableModel.parse(
                adata, region=region, region_key="region", instance_key="label"
            )
        },
    )
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    sdata.write(tmp)
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)
