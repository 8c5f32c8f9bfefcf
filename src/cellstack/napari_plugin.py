"""napari plugin: segment an image layer with a cellstack model, and open prediction
folders (``pip install 'cellstack[napari]'``; the manifest is ``napari.yaml``).

- The widget (*Plugins > cellstack: Segment*) segments the selected image layer with a
  built-in model (``nuclei``, ``cells``), a run folder, a CV folder or an ensemble YAML,
  in a worker thread (the window stays alive, a progress bar counts planes, Cancel
  stops after the current plane), and adds a Labels layer named after the image, the
  model and the settings, whose ``features`` hold each cell's label id, cell type,
  score, area, centroid and box. Errors arrive as the one-line cellstack message.
- The reader opens a folder written by ``cellstack predict`` through its marker file
  ``cellstack-outputs.txt`` (the only name it claims, so opening any other file never
  involves cellstack): one Labels layer per image, with the features of
  ``objects/{id}.csv``.

The functions that do the work need no napari and are tested without a viewer; the
widget is tested in a real viewer (``tests/test_napari_viewer.py``).
"""

from __future__ import annotations

import csv
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

#: napari's layer data tuple: ``(data, layer keyword arguments, layer type)``.
LayerData = tuple[np.ndarray, dict[str, Any], str]

#: How the widget reads a layer's axes: napari keeps channels as separate layers
#: (``channel_axis`` on opening), so 3-D is a Z-stack and 4-D a time series of them.
AXES_BY_NDIM = {2: "YX", 3: "ZYX", 4: "TZYX"}
#: The prediction folder's marker, which the reader claims (see the module docstring).
MARKER = "cellstack-outputs.txt"


def keep_compiler_out() -> None:
    """Keep triton (PyTorch's compiler backend) out of this process, unless
    ``CELLSTACK_ALLOW_TRITON=1``.

    torchvision's ops import ``torch._dynamo``, which imports triton when it is installed
    (every CUDA build of torch brings it). Inside napari, whose OpenGL context has
    already loaded Mesa's LLVM, importing triton's own LLVM kills the process with a
    segmentation fault. cellstack never compiles, so triton is not needed: marking it
    absent before torch's stack loads makes ``import triton`` fail cleanly and dynamo
    carry on without it. Nothing is changed when triton is already imported.
    """
    if os.environ.get("CELLSTACK_ALLOW_TRITON") == "1" or "triton" in sys.modules:
        return
    sys.modules["triton"] = None  # type: ignore[assignment]  # import -> ImportError


def _run_files(model: str) -> tuple[tuple[str, float], ...]:
    """``(file, mtime)`` of what decides a model's output: a cache key that changes when
    ``cellstack tune`` rewrites ``thresholds.yaml`` or training writes new weights."""
    from cellstack.modeling.builtin import resolve_run

    path = resolve_run(model, quiet=True)
    files = [path] if path.is_file() else sorted(p for p in path.glob("*") if p.is_file())
    return tuple((str(p), p.stat().st_mtime) for p in files)


_CACHE: dict[tuple, Any] = {}


def load_segmenter(model: str, device: str, diameter: float | None):
    """The :class:`~cellstack.inference.segmenter.Segmenter` of ``model``, loaded once
    per (model files, device, diameter): reloaded when the run's files change."""
    keep_compiler_out()
    from cellstack.inference.segmenter import Segmenter

    key = (model, device, diameter, _run_files(model))
    if key not in _CACHE:
        _CACHE.clear()  # one model in memory at a time
        _CACHE[key] = Segmenter.load(model, device=device, diameter=diameter)
    return _CACHE[key]


def check_inputs(
    data: Any, model: str, diameter: float | None, name: str, *, rgb: bool = False
) -> str:
    """The layer's axes, after checking every input before anything loads.

    Raises:
        CellstackError: no image layer, a layer of an unsupported shape, no model, or a
            model that is neither a built-in nor an existing path.
    """
    from cellstack.errors import CellstackError
    from cellstack.modeling.builtin import builtin_names, resolve_run

    if data is None:
        raise CellstackError("no image layer selected: open an image and choose it in 'image'")
    if not str(model).strip():
        raise CellstackError(
            f"choose a model: a built-in ({', '.join(builtin_names())}), a run folder or an "
            "ensemble YAML"
        )
    if not resolve_run(str(model), quiet=True).exists():
        raise CellstackError(
            f"{model}: not a built-in model ({', '.join(builtin_names())}) and no such run "
            "folder or ensemble YAML"
        )
    if diameter is not None and not diameter > 0:
        raise CellstackError(f"cell diameter must be positive (0 = as trained), got {diameter}")
    ndim = np.ndim(data)
    axes = ("YXS" if ndim == 3 else None) if rgb else AXES_BY_NDIM.get(ndim)
    if axes is None:
        expected = "3 (an RGB image)" if rgb else "2 to 4"
        raise CellstackError(f"layer {name!r} has {ndim} dimensions; expected {expected}")
    return axes


def layer_name(image: str, model: str, diameter: float | None, taken: set[str]) -> str:
    """``"{image} cells [{model}, d=...]"``, numbered when that name is taken, so runs
    with other settings sit side by side instead of replacing each other."""
    settings = Path(str(model)).name or str(model)
    if diameter:
        settings += f", d={diameter:g}"
    base = f"{image} cells [{settings}]"
    name, k = base, 2
    while name in taken:
        name, k = f"{base} ({k})", k + 1
    return name


def iter_segment(
    data: np.ndarray,
    model: str | Path,
    *,
    rgb: bool = False,
    diameter: float | None = None,
    device: str = "auto",
    name: str = "image",
) -> Iterator[tuple[int, int] | LayerData]:
    """Segment a layer's data plane by plane: yields ``(planes done, planes)`` after
    each plane, then the Labels layer to add (with its features) as the last item.

    Args:
        data: the layer's array: [H, W], [H, W, 3|4] with ``rgb``, [Z, H, W] or
            [T, Z, H, W].
        model: a built-in model name, run folder, CV folder or ensemble YAML.
        diameter: typical cell diameter (px) in this image; None: as trained.
    """
    axes = check_inputs(data, str(model), diameter, name, rgb=rgb)
    seg = load_segmenter(str(model), device, diameter)
    for item in seg.iter_planes(np.asarray(data), axes=axes):
        if isinstance(item, tuple):
            yield item
            continue
        # napari maps a label value to its features row through the "index" column.
        features = {"index": item.table["label"], **item.table}
        meta = {"cellstack_model": str(model), "class_names": list(seg.class_names)}
        yield (
            item.labels,
            {"name": f"{name} cells", "features": features, "metadata": meta},
            "labels",
        )


def segment_layer(data: np.ndarray, model: str | Path, **kwargs) -> LayerData:
    """:func:`iter_segment` to the end: the Labels layer to add."""
    *_, layer = iter_segment(data, model, **kwargs)
    return layer


def make_widget():
    """The dock widget napari shows (built when napari asks for it)."""
    keep_compiler_out()
    from magicgui.widgets import (
        ComboBox,
        Container,
        FileEdit,
        FloatSpinBox,
        ProgressBar,
        PushButton,
    )
    from napari.layers import Image
    from napari.utils.notifications import show_error, show_info

    from cellstack.modeling.builtin import builtin_names

    folder_choice = "run folder / ensemble YAML below"
    # Choices from a callable: napari resets a docked widget's choices whenever its
    # layers change, so the list follows the viewer.
    image = ComboBox(label="image", choices=lambda _w: _image_choices(Image), nullable=True)
    model = ComboBox(label="model", choices=[*builtin_names(), folder_choice])
    path = FileEdit(label="run / ensemble", mode="r", filter="*.yaml *.yml", value="")
    folder = FileEdit(label="or run folder", mode="d", value="")
    diameter = FloatSpinBox(label="cell diameter (0 = as trained)", min=0.0, max=1000.0)
    device = ComboBox(label="device", choices=["auto", "cpu", "cuda", "mps"])
    run_button = PushButton(text="Segment")
    cancel = PushButton(text="Cancel", enabled=False)
    progress = ProgressBar(label="planes", min=0, max=1, value=0)
    widget = Container(
        widgets=[image, model, path, folder, diameter, device, run_button, cancel, progress]
    )
    state: dict[str, Any] = {"worker": None}

    def viewer():
        import napari

        return napari.current_viewer()

    def refresh(*_):
        """Choices from the viewer; an empty (or gone) choice becomes the selected image
        layer, else the top one, so a viewer with one image needs no choosing."""
        image.reset_choices()
        if image.value not in _image_choices(Image):
            image.value = default_image(viewer())

    def follow(event):
        """A newly selected image layer (a click, or one just added) is the one to
        segment; selecting a Labels layer keeps the choice."""
        image.reset_choices()
        if isinstance(event.value, Image) and event.value.name in image.choices:
            image.value = event.value.name

    def default_image(v) -> str | None:
        if v is None:
            return None
        active = v.layers.selection.active
        if isinstance(active, Image):
            return active.name
        names = _image_choices(Image)
        return names[-1] if names else None

    def chosen_model() -> str:
        if model.value != folder_choice:
            return str(model.value)
        for edit in (path, folder):
            text = str(edit.value or "").strip()
            if text and text != ".":
                return text
        return ""

    def finish(*_):
        run_button.enabled, cancel.enabled = True, False
        state["worker"] = None

    def start(*_):
        from napari.qt.threading import thread_worker

        from cellstack.errors import CellstackError

        refresh()
        v = viewer()
        layer = v.layers[image.value] if v and image.value in v.layers else None
        spec = chosen_model()
        d = float(diameter.value) or None
        try:
            check_inputs(
                None if layer is None else layer.data,
                spec,
                d,
                getattr(layer, "name", "image"),
                rgb=bool(getattr(layer, "rgb", False)),
            )
        except CellstackError as exc:
            show_error(str(exc))
            return

        @thread_worker
        def work():
            yield from iter_segment(
                layer.data,
                spec,
                rgb=bool(layer.rgb),
                diameter=d,
                device=str(device.value),
                name=layer.name,
            )

        worker = work()
        state["worker"] = worker
        taken = {lyr.name for lyr in v.layers}

        def on_yield(item):
            if len(item) == 2:
                progress.max, progress.value = max(item[1], 1), item[0]
                return
            data, kwargs, _ = item
            kwargs = {**kwargs, "name": layer_name(layer.name, spec, d, taken)}
            v.add_labels(data, scale=layer.scale[-data.ndim :], **kwargs)
            show_info(f"cellstack: {len(kwargs['features']['label'])} cells in {layer.name}")

        def on_error(exc):
            message = (
                str(exc) if isinstance(exc, CellstackError) else f"{type(exc).__name__}: {exc}"
            )
            show_error(message.splitlines()[0] if message else type(exc).__name__)

        worker.yielded.connect(on_yield)
        worker.errored.connect(on_error)
        worker.finished.connect(finish)
        run_button.enabled, cancel.enabled = False, True
        progress.value = 0
        worker.start()

    def stop(*_):
        if state["worker"] is not None:
            state["worker"].quit()  # after the current plane

    v = viewer()
    if v is not None:
        selection = v.layers.selection.events.active
        selection.connect(follow)
        # The viewer outlives a closed widget: its events must not reach deleted Qt objects.
        widget.native.destroyed.connect(lambda *_: selection.disconnect(follow))
        refresh()
    run_button.changed.connect(start)
    cancel.changed.connect(stop)
    widget.start, widget.stop, widget.state = start, stop, state  # for tests and scripts
    return widget


def _image_choices(image_type) -> list[str]:
    import napari

    v = napari.current_viewer()
    return [lyr.name for lyr in v.layers if isinstance(lyr, image_type)] if v else []


def get_reader(path: str | list[str]) -> Callable[[str], list[LayerData]] | None:
    """napari's reader hook for a prediction folder's marker (or the folder itself).
    napari only asks for paths matching :data:`MARKER`, so what it asks for is opened."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    p = Path(path)
    folder = p.parent if p.name == MARKER else p
    if (folder / MARKER).is_file() or (folder / "results.json").is_file():
        return read_predictions
    return None


def read_predictions(path: str | Path) -> list[LayerData]:
    """The layers of a ``cellstack predict`` folder (given as the folder or its marker):
    per image, the input image where ``inputs.json`` says where it is and it still
    exists, then a Labels layer with the features of its ``objects/{id}.csv``."""
    import json

    import tifffile

    from cellstack.data.images import read_image
    from cellstack.fileio import open_text, read_text

    folder = Path(path)
    folder = folder.parent if folder.name == MARKER else folder
    inputs = {}
    if (folder / "inputs.json").is_file():
        inputs = json.loads(read_text(folder / "inputs.json", "inputs file"))
    layers = []
    for tif in sorted((folder / "labels").glob("*.tif")):
        source = Path(inputs.get(tif.stem, ""))
        if inputs.get(tif.stem) and source.is_file():
            image = read_image(source)
            layers.append((image, {"name": f"{tif.stem} ({folder.name})"}, "image"))
        labels = tifffile.imread(tif)
        features: dict[str, np.ndarray] = {}
        table = folder / "objects" / f"{tif.stem}.csv"
        if table.is_file():
            with open_text(table, "object table") as f:
                rows = list(csv.DictReader(f))
            if rows:
                features = {k: np.asarray([_number(r[k]) for r in rows]) for k in rows[0]}
                features = {"index": features["label"], **features}
        name = f"{tif.stem} cells ({folder.name})"
        layers.append((labels, {"name": name, "features": features}, "labels"))
    return layers


def _number(text: str) -> int | float | str:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text
