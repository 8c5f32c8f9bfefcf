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
    from cellstack.inference.scale import resize_factor
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
    if diameter is not None:
        resize_factor(None, diameter, None)  # the one check predict and the API make
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
    """The dock widget napari shows (built when napari asks for it): the container of a
    :class:`SegmentWidget`."""
    return SegmentWidget().container


class SegmentWidget:
    """The Segment dock widget: its fields, and what its buttons and the viewer's
    selection do.

    ``container`` is the magicgui Container napari docks: image, model, run / ensemble
    file, run folder, cell diameter, device, Segment, Cancel, the planes' progress. Its
    ``start``, ``stop`` and ``state`` (the running worker) are this object's, for tests
    and scripts.
    """

    #: The model choice that means "the file or folder fields below".
    FOLDER_CHOICE = "run folder / ensemble YAML below"

    def __init__(self) -> None:
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

        from cellstack.modeling.builtin import builtin_names

        self.image_type = Image
        # Choices from a callable: napari resets a docked widget's choices whenever its
        # layers change, so the list follows the viewer.
        self.image = ComboBox(
            label="image", choices=lambda _w: _image_choices(Image), nullable=True
        )
        self.model = ComboBox(label="model", choices=[*builtin_names(), self.FOLDER_CHOICE])
        self.path = FileEdit(label="run / ensemble", mode="r", filter="*.yaml *.yml", value="")
        self.folder = FileEdit(label="or run folder", mode="d", value="")
        self.diameter = FloatSpinBox(label="cell diameter (0 = as trained)", min=0.0, max=1000.0)
        self.device = ComboBox(label="device", choices=["auto", "cpu", "cuda", "mps"])
        self.run_button = PushButton(text="Segment")
        self.cancel = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="planes", min=0, max=1, value=0)
        self.container = Container(
            widgets=[
                self.image,
                self.model,
                self.path,
                self.folder,
                self.diameter,
                self.device,
                self.run_button,
                self.cancel,
                self.progress,
            ]
        )
        self.state: dict[str, Any] = {"worker": None}
        v = _viewer()
        if v is not None:
            selection = v.layers.selection.events.active
            selection.connect(self.follow)
            # The viewer outlives a closed widget: its events must not reach deleted Qt
            # objects.
            self.container.native.destroyed.connect(lambda *_: selection.disconnect(self.follow))
            self.refresh()
        self.run_button.changed.connect(self.start)
        self.cancel.changed.connect(self.stop)
        self.container.start, self.container.stop = self.start, self.stop
        self.container.state = self.state

    def refresh(self, *_) -> None:
        """Choices from the viewer; an empty (or gone) choice becomes the selected image
        layer, else the top one, so a viewer with one image needs no choosing."""
        self.image.reset_choices()
        if self.image.value not in _image_choices(self.image_type):
            self.image.value = self.default_image(_viewer())

    def follow(self, event) -> None:
        """A newly selected image layer (a click, or one just added) is the one to
        segment; selecting a Labels layer keeps the choice."""
        self.image.reset_choices()
        if isinstance(event.value, self.image_type) and event.value.name in self.image.choices:
            self.image.value = event.value.name

    def default_image(self, v) -> str | None:
        """The selected image layer's name, else the top image layer's (None: none)."""
        if v is None:
            return None
        active = v.layers.selection.active
        if isinstance(active, self.image_type):
            return active.name
        names = _image_choices(self.image_type)
        return names[-1] if names else None

    def chosen_model(self) -> str:
        """The built-in chosen, else the file or folder field's text ("" when empty)."""
        if self.model.value != self.FOLDER_CHOICE:
            return str(self.model.value)
        for edit in (self.path, self.folder):
            text = str(edit.value or "").strip()
            if text and text != ".":
                return text
        return ""

    def start(self, *_) -> None:
        """Check the inputs (a one-line error in napari when one is wrong), then segment
        the chosen layer in a worker thread."""
        from napari.qt.threading import thread_worker
        from napari.utils.notifications import show_error

        from cellstack.errors import CellstackError

        self.refresh()
        v = _viewer()
        layer = v.layers[self.image.value] if v and self.image.value in v.layers else None
        spec = self.chosen_model()
        d = float(self.diameter.value) or None
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
                device=str(self.device.value),
                name=layer.name,
            )

        worker = work()
        self.state["worker"] = worker
        taken = {lyr.name for lyr in v.layers}
        worker.yielded.connect(lambda item: self._on_yield(item, v, layer, spec, d, taken))
        worker.errored.connect(_show_one_line)
        worker.finished.connect(self.finish)
        self.run_button.enabled, self.cancel.enabled = False, True
        self.progress.value = 0
        worker.start()

    def _on_yield(self, item, v, layer, spec: str, d: float | None, taken: set[str]) -> None:
        """A progress count, or the Labels layer to add, named for its settings."""
        from napari.utils.notifications import show_info

        if len(item) == 2:
            self.progress.max, self.progress.value = max(item[1], 1), item[0]
            return
        data, kwargs, _ = item
        kwargs = {**kwargs, "name": layer_name(layer.name, spec, d, taken)}
        v.add_labels(data, scale=layer.scale[-data.ndim :], **kwargs)
        show_info(f"cellstack: {len(kwargs['features']['label'])} cells in {layer.name}")

    def finish(self, *_) -> None:
        self.run_button.enabled, self.cancel.enabled = True, False
        self.state["worker"] = None

    def stop(self, *_) -> None:
        """Cancel: the worker stops after the current plane."""
        if self.state["worker"] is not None:
            self.state["worker"].quit()


def _show_one_line(exc: BaseException) -> None:
    """A worker's error as napari's one-line notification (cellstack's own message)."""
    from napari.utils.notifications import show_error

    from cellstack.errors import CellstackError

    message = str(exc) if isinstance(exc, CellstackError) else f"{type(exc).__name__}: {exc}"
    show_error(message.splitlines()[0] if message else type(exc).__name__)


def _viewer():
    import napari

    return napari.current_viewer()


def _image_choices(image_type) -> list[str]:
    import napari

    v = napari.current_viewer()
    return [lyr.name for lyr in v.layers if isinstance(lyr, image_type)] if v else []


def get_reader(path: str | list[str]) -> Callable[[str], list[LayerData]] | None:
    """napari's reader hook for a prediction folder's marker (or the folder itself).
    napari only asks for paths matching :data:`MARKER`, so what it asks for is opened."""
    from cellstack.inference.export import PredictionFolder

    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    p = Path(path)
    folder = p.parent if p.name == MARKER else p
    return read_predictions if PredictionFolder.holds_predictions(folder) else None


def read_predictions(path: str | Path) -> list[LayerData]:
    """The layers of a ``cellstack predict`` folder (given as the folder or its marker):
    per image, the input image where ``inputs.json`` says where it is and it still
    exists, then a Labels layer with the features of its ``objects/{id}.csv``."""
    from cellstack.data.images import read_image
    from cellstack.inference.export import PredictionFolder

    folder = PredictionFolder.open(path)
    name = folder.root.name
    inputs = folder.inputs()
    layers = []
    for image_id in folder.image_ids():
        source = inputs.get(image_id)
        if source is not None and source.is_file():
            layers.append((read_image(source), {"name": f"{image_id} ({name})"}, "image"))
        features = folder.objects(image_id)
        if features:
            features = {"index": features["label"], **features}
        layers.append(
            (
                folder.labels(image_id),
                {"name": f"{image_id} cells ({name})", "features": features},
                "labels",
            )
        )
    return layers
