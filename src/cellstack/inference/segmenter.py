"""The public Python API: :class:`Segmenter` turns images into labelled cells.

::

    import cellstack
    seg = cellstack.Segmenter.load("runs/r18")   # a run, a CV folder or an ensemble YAML
    result = seg(image)                          # numpy array, any dtype, 2-D (+ colour)
    result.labels      # int32[H, W] instance ids, 0 = background
    result.instances   # Instances: boxes, scores, classes (cell-type indices), pixels
    result.table       # per-object columns: label, cell_type, score, area, centroid, bbox

The segmenter owns input checking and intensity scaling (every plane is scaled by its
0.5/99.5 percentiles to uint8, as the model trained), stacks (``axes="ZYX"``,
``"TCYX"`` with ``channel=``), rescaling to the trained object size (``diameter=``)
and the run's tuned thresholds. ``cellstack predict`` is a loop over
:meth:`Segmenter.iter_many`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from cellstack.data.dataset import rescale_image
from cellstack.data.images import PlaneSpec, gray_planes, read_planes, select_planes
from cellstack.data.limits import check_image_size
from cellstack.data.masks import pixels_to_labels
from cellstack.errors import ArgumentTypeError, CellstackError
from cellstack.inference.ensemble import Ensemble
from cellstack.inference.predictor import Predictor
from cellstack.inference.result import Result, object_table
from cellstack.inference.scale import resize_factor
from cellstack.inference.sources import Source, load_source
from cellstack.inference.thresholds import Thresholds
from cellstack.inference.tune import TuneGrid, TuneResult, calibrate
from cellstack.structures import Instances


@contextmanager
def _view_bars(model: torch.nn.Module, show: bool) -> Iterator[None]:
    """An ensemble's bar over each image's views (:attr:`Ensemble.show_views`) for the
    duration of a call that shows its own bar."""
    if not isinstance(model, Ensemble):
        yield
        return
    before, model.show_views = model.show_views, show
    try:
        yield
    finally:
        model.show_views = before


class Segmenter:
    """Cells from images with a trained run, a CV folder or an ensemble.

    Args:
        source: a loaded model (:func:`~cellstack.inference.sources.load_source`).
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``,
            or a ``torch.device``.
        diameter: the typical cell diameter (px) in the images to come; they are
            rescaled so that their cells have the size the model trained on, and the
            masks mapped back. ``scale`` gives that factor directly. Default: none.
        thresholds: post-processing thresholds; default the run's (its tuned
            ``thresholds.yaml``, else its config's).
        batch_size: planes per forward pass (default the run's ``predict.batch_size``).
    """

    def __init__(
        self,
        source: Source,
        *,
        device: str | torch.device = "auto",
        diameter: float | None = None,
        scale: float | None = None,
        thresholds: Thresholds | None = None,
        batch_size: int | None = None,
    ) -> None:
        from cellstack import ddp

        self.source = source
        p = source.cfg.predict
        self.batch_size = p.batch_size if batch_size is None else batch_size
        if not _is_int(self.batch_size) or self.batch_size < 1:
            raise CellstackError(f"batch_size must be an integer >= 1, got {self.batch_size!r}")
        self.predictor = Predictor(
            source.model,
            thresholds or source.thresholds,
            device=ddp.pick_device(device, ddp.launched().local_rank),
            tile_size=p.tile_size,
            tile_overlap=p.tile_overlap,
            batch_size=self.batch_size,
            scale=resize_factor(source, diameter, scale),
            amp=p.amp,
        )

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        device: str | torch.device = "auto",
        diameter: float | None = None,
        scale: float | None = None,
        overrides: Sequence[str] = (),
        allow_unfinished: bool = False,
        batch_size: int | None = None,
    ) -> Segmenter:
        """Load a run folder, a CV folder or an ensemble YAML (see
        :mod:`~cellstack.inference.sources`). ``overrides``: dotted config settings
        (``predict.score_thresh=0.4``), which beat the run's tuned thresholds."""

        # Every argument is checked before the (possibly large) model loads.
        if not isinstance(path, str | Path):
            raise ArgumentTypeError(
                f"path must be a run folder, CV folder, ensemble YAML or built-in model name "
                f"(str or Path), got {type(path).__name__}"
            )
        if isinstance(overrides, str) or not all(isinstance(o, str) for o in overrides):
            raise ArgumentTypeError(
                "overrides must be a list of 'section.key=value' strings, e.g. "
                f"['predict.score_thresh=0.4'], got {overrides!r}"
            )
        if batch_size is not None and (not _is_int(batch_size) or batch_size < 1):
            raise CellstackError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        resize_factor(None, diameter, scale)
        # The source's thresholds follow the one rule (thresholds.resolve_thresholds):
        # post-processing overrides beat the run's tuned thresholds.
        src = load_source(path, tuple(overrides), allow_unfinished=allow_unfinished)
        return cls(src, device=device, diameter=diameter, scale=scale, batch_size=batch_size)

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.source.class_names)

    @property
    def scale(self) -> float:
        """The resize factor images get before the model (held once, by the predictor)."""
        return self.predictor.scale

    @property
    def device(self) -> torch.device:
        return self.predictor.device

    def __call__(
        self,
        image: np.ndarray | str | Path,
        *,
        axes: str | None = None,
        channel: int | Sequence[int] | None = None,
        normalize: bool | tuple[float, float] = True,
        diameter: float | None = None,
        scale: float | None = None,
        score_thresh: float | None = None,
        mask_thresh: float | None = None,
        min_size: int | None = None,
    ) -> Result:
        """Segment one image: an array (2-D, 2-D + colour, or a stack with ``axes``,
        e.g. ``"ZYX"``, ``"CYX"`` with ``channel=``) or an image file.

        ``normalize``: True scales every plane by its own 0.5/99.5 percentiles (as the
        model trained); ``(lo, hi)`` maps that intensity range to 0..255 for every plane
        alike (the blocks of a large image, a time series of one brightness).
        ``diameter``/``scale`` and ``score_thresh``, ``mask_thresh``, ``min_size`` (px)
        apply to this call only (:meth:`with_settings`), as in Cellpose's ``eval``.
        """
        seg = self.with_settings(
            diameter=diameter,
            scale=scale,
            score_thresh=score_thresh,
            mask_thresh=mask_thresh,
            min_size=min_size,
        )
        (result,) = seg.iter_many(
            [image], axes=axes, channel=channel, normalize=normalize, progress=False
        )
        return result

    def with_settings(
        self,
        *,
        diameter: float | None = None,
        scale: float | None = None,
        score_thresh: float | None = None,
        mask_thresh: float | None = None,
        min_size: int | None = None,
    ) -> Segmenter:
        """A segmenter sharing this one's model with other settings (this one when all
        are None): ``diameter`` or ``scale`` as in :meth:`load`; the thresholds for
        every cell type alike.

        Raises:
            ArgumentTypeError: a threshold that is not a number (or ``min_size`` not an
                integer); CellstackError: one out of its range.
        """
        values = {
            k: v
            for k, v in (
                ("score_thresh", score_thresh),
                ("mask_thresh", mask_thresh),
                ("min_size", min_size),
            )
            if v is not None
        }
        if diameter is None and scale is None and not values:
            return self
        for key, value in values.items():
            number = _is_int(value) if key == "min_size" else _is_number(value)
            if not number:
                kind = "an integer" if key == "min_size" else "a number"
                raise ArgumentTypeError(f"{key} must be {kind}, got {value!r}")
        return self._sharing_model(
            scale=None
            if diameter is None and scale is None
            else resize_factor(self.source, diameter, scale),
            thresholds=self.predictor.thresholds.with_values(**values) if values else None,
        )

    def _sharing_model(
        self, *, scale: float | None = None, thresholds: Thresholds | None = None
    ) -> Segmenter:
        """A copy with its own predictor settings (``scale``, ``thresholds`` where given)
        that shares this one's model and source."""
        out = copy.copy(self)
        out.predictor = copy.copy(self.predictor)
        if scale is not None:
            out.predictor.scale = scale
        if thresholds is not None:
            out.predictor.thresholds = thresholds
        return out

    def segment_many(
        self,
        items: Iterable[np.ndarray | str | Path],
        *,
        axes: str | None = None,
        channel: int | Sequence[int] | None = None,
        progress: bool = True,
    ) -> list[Result]:
        """Segment many images or files (see :meth:`iter_many`), as a list."""
        return list(self.iter_many(items, axes=axes, channel=channel, progress=progress))

    def iter_many(
        self,
        items: Iterable[np.ndarray | str | Path],
        *,
        axes: str | None = None,
        channel: int | Sequence[int] | None = None,
        spec: PlaneSpec | None = None,
        normalize: bool | tuple[float, float] = True,
        progress: bool = True,
    ) -> Iterator[Result]:
        """Segment images or files one after another, yielding each result as soon as
        its planes are done, with a progress bar over planes.

        Planes of consecutive images are batched together (``batch_size``). Files are
        read by their own axes (:func:`~cellstack.data.images.read_planes`); ``spec``
        (or ``channel``) chooses channels and names axes the file does not;
        ``normalize`` as in :meth:`__call__`.
        """
        from tqdm import tqdm

        spec = _spec(spec, channel)
        limits = _limits(normalize)
        items = list(items) if not isinstance(items, list) else items
        bar = tqdm(total=len(items), desc="segmenting", unit="img", disable=not progress)
        pending: list[tuple[np.ndarray, str]] = []  # images whose planes wait for a batch
        queued = 0
        # closed on errors too: the error line stands alone
        with torch.inference_mode(), bar, _view_bars(self.predictor.model, progress):
            for n, item in enumerate(items):
                where = str(item) if isinstance(item, str | Path) else f"image {n}"
                image, lead = self._planes(item, axes, spec, where, limits)
                pending.append((image, lead))
                queued += int(np.prod(image.shape[: len(lead)]))
                if queued >= self.batch_size or n == len(items) - 1:
                    yield from self._run(pending)
                    bar.update(len(pending))
                    pending, queued = [], 0

    def iter_planes(
        self,
        image: np.ndarray | str | Path,
        *,
        axes: str | None = None,
        channel: int | Sequence[int] | None = None,
    ) -> Iterator[tuple[int, int] | Result]:
        """Segment one image plane by plane, for a GUI that shows progress and can stop
        between planes: yields ``(planes done, planes)`` before the first plane and
        after each, then the :class:`Result` (the same as :meth:`__call__`'s)."""
        planes, lead = self._planes(image, axes, _spec(None, channel), "image")
        flat = planes.reshape(-1, *planes.shape[len(lead) :])
        yield 0, len(flat)
        cells: list[Instances] = []
        for k, plane in enumerate(flat):
            with torch.inference_mode():
                cells.extend(self.predictor([plane]))
            yield k + 1, len(flat)
        yield self._result(planes, lead, cells)

    def raw(self, planes: Sequence[np.ndarray]) -> list[Instances]:
        """Model detections before post-processing (``boxes``, ``scores``, ``classes``,
        ``roi_masks``) of uint8[H, W] planes as the model sees them (already scaled, as
        :func:`~cellstack.data.dataset.load_sample` gives them, not resized): what
        ``tune`` searches and ``cv`` stores."""
        with torch.inference_mode():
            return self.predictor.raw(list(planes))

    def instances(self, planes: Sequence[np.ndarray]) -> list[Instances]:
        """The post-processed cells (``pixels``, ``scores``, ``classes``) of uint8[H, W]
        planes as the model sees them, at this segmenter's thresholds and scale."""
        with torch.inference_mode():
            return self.predictor(list(planes))

    def optimize_thresholds(
        self,
        images: Sequence[np.ndarray | str | Path],
        labels: Sequence[np.ndarray],
        *,
        channel: int | Sequence[int] | None = None,
        scales: bool = True,
        progress: bool = False,
    ) -> tuple[Segmenter, TuneResult]:
        """The post-processing thresholds (and scale) that score best on annotated
        images (stardist's name), searched as ``cellstack tune --out`` searches them:
        the model runs once per image and scale, then every point of
        :meth:`~cellstack.inference.tune.TuneGrid.for_objects` (confidence, mask
        threshold, outline offset, mask NMS, minimum size) is scored from the raw
        detections, per predicted cell type. The scales are those of
        :func:`~cellstack.inference.tune.candidate_scales`: this segmenter's, and around
        the one that gives the labels' median cell the size the model trained on.

        Args:
            images: 2-D images or image files, as :meth:`__call__` takes them.
            labels: int[H, W] label images of the same sizes, 0 = background.
            scales: search the scale too (False: this segmenter's scale only).

        Returns:
            ``(segmenter, result)``: a segmenter sharing this one's model with the tuned
            thresholds and scale, and the search (``result.before`` / ``result.after``:
            mean competition score at the current and the tuned settings;
            ``result.loo``: the leave-one-out score over the images, or a single image's
            quadrants, what to expect on new images; ``result.kept``: no estimated gain,
            so the current thresholds and scale were kept; ``table()``). Nothing is
            written: ``cellstack tune MODEL DATA --out NEW`` writes a tuned model folder.
        """
        for name, value in (("images", images), ("labels", labels)):
            if isinstance(value, str | bytes | Path | dict) or not isinstance(value, Iterable):
                raise ArgumentTypeError(
                    f"{name} must be a list of {name} (arrays or files), got {type(value).__name__}"
                )
        images, labels = list(images), list(labels)
        if not images or len(images) != len(labels):
            raise CellstackError(
                f"optimize_thresholds needs one label image per image, got {len(images)} "
                f"images and {len(labels)} label images"
            )
        planes, truths = [], []
        for k, (image, label) in enumerate(zip(images, labels, strict=True)):
            where = str(image) if isinstance(image, str | Path) else f"image {k}"
            plane, lead = self._planes(image, None, _spec(None, channel), where)
            label = np.asarray(label)
            if lead:
                raise CellstackError(f"image {k}: a {lead}YX stack; pass its 2-D planes")
            if label.shape != plane.shape or label.dtype.kind not in "iub":
                raise CellstackError(
                    f"labels[{k}]: an integer label image of shape {plane.shape} expected, "
                    f"got {label.dtype} {label.shape}"
                )
            planes.append(plane)
            truths.append(label.astype(np.int64))
        result = calibrate(
            lambda factor: [raw for p in planes for raw in self.raw([rescale_image(p, factor)])],
            truths,
            self.class_names,
            self.predictor.thresholds,
            TuneGrid.for_objects(self.source.area_p1),
            scale=self.scale,
            diameter=self.source.diameter if scales else None,
            where=f"the {len(truths)} label images",
            progress=progress,
        )
        return self._sharing_model(scale=result.scale, thresholds=result.thresholds), result

    def _planes(
        self,
        item: np.ndarray | str | Path,
        axes: str | None,
        spec: PlaneSpec,
        where: str,
        limits: tuple[float, float] | None = None,
    ) -> tuple[np.ndarray, str]:
        """:func:`_planes`, also checking that the planes fit once resized by ``scale``."""
        image, lead = _planes(item, axes, spec, where, limits)
        if self.scale != 1:  # what the model will see must fit too
            h, w = (round(d * self.scale) for d in image.shape[-2:])
            check_image_size(h, w, f"{where} resized by {self.scale:.4g}")
        return image, lead

    def _run(self, pending: list[tuple[np.ndarray, str]]) -> Iterator[Result]:
        """The results of some images, their planes predicted as one batch."""
        flat = [
            plane
            for image, lead in pending
            for plane in image.reshape(-1, *image.shape[len(lead) :])
        ]
        cells = iter(self.predictor(flat))
        for image, lead in pending:
            n = int(np.prod(image.shape[: len(lead)]))
            yield self._result(image, lead, [next(cells) for _ in range(n)])

    def _result(self, image: np.ndarray, lead: str, planes: list[Instances]) -> Result:
        lead_shape = image.shape[: len(lead)]
        h, w = image.shape[-2:]
        labels = np.zeros((len(planes), h, w), dtype=np.int32)
        tables, first = [], 1
        for k, inst in enumerate(planes):
            plane = pixels_to_labels(inst.pixels, (h, w))
            labels[k] = np.where(plane > 0, plane + (first - 1), 0)
            table = object_table(labels[k], inst, self.class_names, first)
            for axis, index in zip(lead.lower(), np.unravel_index(k, lead_shape), strict=True):
                table[axis] = np.full(len(inst), index, dtype=np.int64)
            tables.append(table)
            first += len(inst)
        table = {c: np.concatenate([t[c] for t in tables]) for c in tables[0]}
        return Result(
            labels=labels.reshape(*lead_shape, h, w),
            planes=tuple(planes),
            table=table,
            image=image,
            lead=lead,
            class_names=self.class_names,
        )


def _spec(spec: PlaneSpec | None, channel: int | Sequence[int] | None) -> PlaneSpec:

    spec = spec or PlaneSpec()
    if channel is None:
        return spec
    if _is_int(channel):
        chosen = (channel,)
    elif isinstance(channel, list | tuple) and channel and all(_is_int(c) for c in channel):
        chosen = tuple(channel)
    else:
        raise ArgumentTypeError(
            f"channel must be a channel index (int >= 0) or a list of them, got {channel!r}"
        )
    if min(chosen) < 0:
        raise CellstackError(f"channel indices must be >= 0, got {channel!r}")
    return replace(spec, channel=tuple(int(c) for c in chosen))


def _is_number(value: object) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(
        value, bool | np.bool_
    )


def _is_int(value: object) -> bool:
    """An integer that is not a bool (``True`` is an int to Python, never a count)."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def _limits(normalize: object) -> tuple[float, float] | None:
    """None (each plane's own percentiles) for True, else the checked ``(lo, hi)``."""
    if normalize is True:
        return None
    ok = (
        isinstance(normalize, tuple | list)
        and len(normalize) == 2
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in normalize)
        and all(math.isfinite(v) for v in normalize)
    )
    if not ok:
        raise ArgumentTypeError(
            f"normalize must be True or a (lo, hi) intensity range, got {normalize!r}"
        )
    if not normalize[0] < normalize[1]:
        # (5, 5) or (10, 5) maps every pixel to 0 or 255: no cell, silently.
        raise CellstackError(f"normalize=(lo, hi) needs lo < hi, got {tuple(normalize)!r}")
    return float(normalize[0]), float(normalize[1])


def _planes(
    item: np.ndarray | str | Path,
    axes: str | None,
    spec: PlaneSpec,
    where: str,
    limits: tuple[float, float] | None = None,
) -> tuple[np.ndarray, str]:
    """uint8 planes ``[*lead, H, W]`` and their lead axes, from a file or an array."""
    if axes is not None and not isinstance(axes, str):
        raise ArgumentTypeError(f"axes must be a string such as 'ZYX', got {axes!r}")
    if isinstance(item, str | Path):
        if axes is not None:
            raise CellstackError(
                f"{where}: axes= applies to arrays; a file is read by its own axes (name an "
                "axis the file lacks with spec=PlaneSpec(z_axis=...))"
            )
        return read_planes(item, spec, limits)
    if not isinstance(item, np.ndarray) and not hasattr(item, "__array__"):
        raise ArgumentTypeError(
            f"{where}: expected a numpy array or an image file path, got {type(item).__name__}"
        )
    array = np.asarray(item)
    if array.dtype == bool:
        raise CellstackError(
            f"{where}: a bool array is a mask, not an image; pass the image's pixels "
            "(e.g. image.astype(np.uint8) * 255 if it really is binary)"
        )
    if axes is None:
        if array.ndim == 2:
            axes = "YX"
        elif array.ndim == 3 and array.shape[-1] in (3, 4):
            axes = "YXS"
        else:
            raise CellstackError(
                f"{where}: an array of shape {array.shape} needs its axes, e.g. "
                "axes='ZYX' (a Z-stack), 'TYX', or 'CYX' with channel=0; 2-D images and "
                "[H, W, 3|4] colour need none"
            )
    if len(axes) != array.ndim:
        raise CellstackError(f"{where}: axes {axes!r} do not match shape {array.shape}")
    if array.dtype.kind not in "biuf" and array.dtype.kind != "c":
        raise CellstackError(f"{where}: pixels of dtype {array.dtype} are not numbers")
    planes, lead = select_planes(array, axes.upper(), spec, where)  # DataError: a CellstackError
    check_image_size(planes.shape[len(lead)], planes.shape[len(lead) + 1], where)
    return gray_planes(planes, lead, limits), lead
