"""napari plugin: segment an image layer with a cellstack run, and open prediction
folders (``pip install 'cellstack[napari]'``; the manifest is ``napari.yaml``).

- The widget (*Plugins > cellstack: Segment*) segments the selected image layer with a
  run folder, CV folder or ensemble YAML and adds a Labels layer whose ``features``
  hold each cell's label id, cell type, score, area, centroid and box.
- The reader opens a folder written by ``cellstack predict`` (``results.json`` beside
  ``labels/``): one Labels layer per image, with the features of ``objects/{id}.csv``.

The functions below do the work and need no napari, so they are tested without a
viewer; napari and magicgui are imported only when napari builds the widget.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

#: napari's layer data tuple: ``(data, layer keyword arguments, layer type)``.
LayerData = tuple[np.ndarray, dict[str, Any], str]

#: How the widget reads a layer's axes: napari keeps channels as separate layers
#: (``channel_axis`` on opening), so 3-D is a Z-stack and 4-D a time series of them.
AXES_BY_NDIM = {2: "YX", 3: "ZYX", 4: "TZYX"}


@lru_cache(maxsize=2)
def _segmenter(model: str, device: str, diameter: float | None):
    from cellstack.inference.segmenter import Segmenter

    return Segmenter.load(model, device=device, diameter=diameter)


def segment_layer(
    data: np.ndarray,
    model: str | Path,
    *,
    rgb: bool = False,
    diameter: float | None = None,
    device: str = "auto",
    name: str = "image",
) -> LayerData:
    """Segment an image layer's data; the Labels layer to add, with its features.

    Args:
        data: the layer's array: [H, W], [H, W, 3|4] with ``rgb``, [Z, H, W] or
            [T, Z, H, W].
        model: a run folder, CV folder or ensemble YAML.
        diameter: typical cell diameter (px) in this image; None: as trained.
    """
    from cellstack.errors import CellstackError

    array = np.asarray(data)
    axes = "YXS" if rgb else AXES_BY_NDIM.get(array.ndim)
    if axes is None:
        raise CellstackError(f"layer {name!r} has {array.ndim} dimensions; expected 2 to 4")
    seg = _segmenter(str(model), device, diameter)
    result = seg(array, axes=axes)
    # napari maps a label value to its features row through the "index" column.
    features = {"index": result.table["label"], **result.table}
    meta = {"cellstack_model": str(model), "class_names": list(result.class_names)}
    return (
        result.labels,
        {"name": f"{name} cells", "features": features, "metadata": meta},
        "labels",
    )


def make_widget():
    """The dock widget napari shows (built with magicgui when napari asks for it)."""
    import napari
    from magicgui import magic_factory

    def segment(image, model=Path("."), diameter=0.0, device="auto"):
        data, kwargs, kind = segment_layer(
            image.data,
            model,
            rgb=bool(image.rgb),
            diameter=diameter or None,
            device=device,
            name=image.name,
        )
        return data, {**kwargs, "scale": image.scale}, kind

    # Real classes, not the strings this module's annotations would be: magicgui
    # builds its controls from them.
    segment.__annotations__ = {
        "image": napari.layers.Image,
        "model": Path,
        "diameter": float,
        "device": str,
        "return": napari.types.LayerDataTuple,
    }
    factory = magic_factory(
        segment,
        call_button="Segment",
        model={"label": "run / ensemble", "mode": "r"},
        diameter={"label": "cell diameter (0 = as trained)", "min": 0.0, "max": 1000.0},
        device={"choices": ["auto", "cpu", "cuda", "mps"]},
    )
    return factory()


def get_reader(path: str | list[str]) -> Callable[[str], list[LayerData]] | None:
    """napari's reader hook: :func:`read_predictions` for a prediction folder."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    folder = Path(path)
    if (folder / "results.json").is_file() and (folder / "labels").is_dir():
        return read_predictions
    return None


def read_predictions(path: str | Path) -> list[LayerData]:
    """One Labels layer per image of a ``cellstack predict`` folder, with the features
    of its ``objects/{id}.csv``."""
    import tifffile

    folder = Path(path)
    layers = []
    for tif in sorted((folder / "labels").glob("*.tif")):
        labels = tifffile.imread(tif)
        features: dict[str, np.ndarray] = {}
        table = folder / "objects" / f"{tif.stem}.csv"
        if table.is_file():
            with open(table, newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
            if rows:
                features = {k: np.asarray([_number(r[k]) for r in rows]) for k in rows[0]}
                features = {"index": features["label"], **features}
        layers.append((labels, {"name": tif.stem, "features": features}, "labels"))
    return layers


def _number(text: str) -> int | float | str:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text
