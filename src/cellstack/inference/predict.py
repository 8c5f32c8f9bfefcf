"""The predict workflow, on top of the parts: ``cellstack predict`` (a folder in, the
outputs written), ``--dry-run``, and raw predictions of annotated images (what
calibration and CV search). The tune workflows are
:mod:`~cellstack.inference.calibration`."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from cellstack.data.images import IMAGE_SUFFIXES, PlaneSpec, list_images, plane_layout
from cellstack.errors import CellstackError, DataError
from cellstack.inference.export import (
    OUTPUTS,
    OutputOptions,
    PredictionWriter,
    check_unique_outputs,
    remove_outputs,
)

if TYPE_CHECKING:
    from cellstack.data.records import ImageRecord
    from cellstack.inference.result import Result
    from cellstack.inference.segmenter import Segmenter
    from cellstack.inference.sources import Source
    from cellstack.structures import Instances


def find_images(path: str | Path) -> list[tuple[str, Path]]:
    """``(id, path)`` of the images to predict.

    Accepts a folder of images, a folder with ``images/`` (label layout), a Sartorius
    folder (``train.csv`` + ``train/``, or a ``test/`` folder) or one image file.
    """
    from cellstack.data.limits import check_id

    path = Path(path)
    if path.is_file():
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise DataError(f"{path}: not an image ({', '.join(IMAGE_SUFFIXES)})")
        return [(check_id(path.stem, str(path)), path)]
    if not path.is_dir():
        raise DataError(f"{path}: not found")
    if (path / "train.csv").is_file():
        from cellstack.data.sartorius import read_train_csv

        return [
            (r.image_id, r.image_path) for r in read_train_csv(path / "train.csv", validate=False)
        ]
    for sub in ("images", "test", "train"):
        if (path / sub).is_dir() and not list_images(path):
            return [(p.stem, p) for p in list_images(path / sub)]
    images = list_images(path)
    if not images:
        raise DataError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return [(p.stem, p) for p in images]


def raw_predictions(
    src: Source,
    records: list[ImageRecord],
    *,
    device: str = "auto",
    scale: float | None = None,
    progress: bool = True,
) -> list[Instances]:
    """Raw detections (:meth:`Predictor.raw`) of a loaded source on annotated records,
    one image at a time: what ``tune`` searches and ``cv`` stores as OOF predictions.

    Each image is resized as prediction resizes it (by ``scale``, or as the run says: a
    run trained with ``data.scale`` sees its images at that scale), so the detections
    are in that image's pixels and ``image_size``;
    :func:`~cellstack.inference.tune.truth_at` brings the truth there."""
    from tqdm import tqdm

    from cellstack.data.dataset import load_sample
    from cellstack.inference.segmenter import Segmenter

    seg = Segmenter(src, device=device, scale=scale)
    raws = []
    for rec in tqdm(records, desc="predicting", unit="img", disable=not progress):
        image, _ = load_sample(rec)
        raws.extend(seg.raw(seg.predictor.resized([image])))
    return raws


def prepare_output(out: Path, inputs: list[Path], overwrite: bool) -> None:
    """Make ``out`` ready for a predict run, before any model loads.

    Refused: ``out`` is a file, holds one of the input images (an overlay could
    overwrite it), or is not empty and ``overwrite`` is off. With ``overwrite`` exactly
    the files an earlier predict listed in its manifest
    (:data:`~cellstack.inference.export.MANIFEST`) are removed first, so old label
    images never sit beside new ones and nothing of the user's is touched;
    ``submission.csv`` and ``results.json`` are written last, so a killed run leaves no
    file that says it finished. The caller holds :func:`~cellstack.fileio.output_lock`.
    """
    from cellstack.fileio import LOCK, remove_partials

    if out.exists() and not out.is_dir():
        raise CellstackError(f"{out}: exists and is not a folder; choose another --out")
    root = out.resolve()
    for p in inputs:
        if p.resolve().is_relative_to(root):
            raise CellstackError(
                f"--out {out} holds the input image {p}; choose an output folder outside the inputs"
            )
    if out.is_dir() and any(p.name != LOCK for p in out.iterdir()):
        if not overwrite:
            raise CellstackError(
                f"{out}: folder is not empty; pass --overwrite to replace earlier predictions "
                "there, or choose another --out"
            )
        # Checked before anything is removed: the run would refuse to write through it
        # later, with the earlier predictions already gone.
        link = next(_links_under(out), None)
        if link is not None:
            raise CellstackError(
                f"{link}: a symbolic link inside --out {out}; predict writes only files of "
                "its own there: remove the link, or choose another --out"
            )
        remove_outputs(out)
        for name in OUTPUTS:
            remove_partials(out / name)
        remove_partials(out)
    out.mkdir(parents=True, exist_ok=True)


def _links_under(folder: Path) -> Iterator[Path]:
    """Symbolic links anywhere under ``folder`` (never followed)."""
    import os

    for root, dirs, files in os.walk(folder):
        for name in [*dirs, *files]:
            if os.path.islink(os.path.join(root, name)):
                yield Path(root) / name


def _remove_empty_tree(folder: Path) -> None:
    """Remove ``folder`` if it holds no file, only empty folders (never a file)."""
    import os

    if not folder.is_dir() or folder.is_symlink():
        return
    for root, _, _ in sorted(os.walk(folder), key=lambda w: -len(w[0])):
        try:
            os.rmdir(root)
        except OSError:
            return  # not empty: something was written, keep it


@dataclass(frozen=True)
class PredictOptions:
    """How a folder is predicted: ``cellstack predict``'s options, shared by
    :func:`predict_folder` and the Dask folder path
    (:func:`~cellstack.distributed.folders.predict_images`).

    Attributes:
        overrides: dotted ``predict.*`` settings (``predict.score_thresh=0.5``).
        allow_unfinished: predict with a run's last checkpoint when it has no model.pt.
        diameter: the typical cell diameter in these images (px); they are rescaled so
            their cells have the size the model trained on and the masks mapped back.
        scale: the rescaling factor itself. Default (neither): no rescaling.
        spec: channels and axes of stacks; Z-stacks and time series are segmented
            plane by plane.
        outputs: what is written beside the label images and object tables.
    """

    overrides: tuple[str, ...] = ()
    allow_unfinished: bool = False
    diameter: float | None = None
    scale: float | None = None
    spec: PlaneSpec = field(default_factory=PlaneSpec)
    outputs: OutputOptions = field(default_factory=OutputOptions)

    def load(self, source: str | Path, device: str | torch.device) -> Segmenter:
        """The :class:`~cellstack.inference.segmenter.Segmenter` of ``source`` with these
        options."""
        from cellstack.inference.segmenter import Segmenter

        return Segmenter.load(
            source,
            device=device,
            diameter=self.diameter,
            scale=self.scale,
            overrides=self.overrides,
            allow_unfinished=self.allow_unfinished,
        )

    def check_inputs(self, images: str | Path) -> list[tuple[str, Path]]:
        """``(id, path)`` of the images to predict, after every option and every image
        header is checked: before ``--overwrite`` clears anything and before the model
        loads, a stack, a corrupt header or colliding output names fail at once."""
        from cellstack.inference.scale import resize_factor

        resize_factor(None, self.diameter, self.scale)
        todo = find_images(images)
        check_unique_outputs([(i, *plane_layout(p, self.spec)[:2]) for i, p in todo])
        return todo


@dataclass(frozen=True)
class PredictSummary:
    out: Path
    n_images: int
    n_cells: int
    seconds: float


def predict_folder(
    source: str | Path,
    images: str | Path,
    out: str | Path,
    options: PredictOptions | None = None,
    *,
    device: str = "auto",
    progress: bool = True,
    overwrite: bool = False,
) -> PredictSummary:
    """Predict every image of ``images`` with a run's final model, a CV folder or an
    ensemble YAML (see :mod:`~cellstack.inference.sources`) and ``options``; write to
    ``out`` (see :class:`~cellstack.inference.export.PredictionWriter`). A loop over
    :meth:`Segmenter.iter_many <cellstack.inference.segmenter.Segmenter.iter_many>`.

    Under ``torchrun`` every process predicts its share of the images (writing their
    label images and overlays itself) and rank 0 writes the merged ``submission.csv``
    and ``results.json``, in the images' order.
    """

    from cellstack import ddp

    options = options or PredictOptions()
    todo = options.check_inputs(images)
    out = Path(out)
    ddp.pick_device(device, ddp.launched().local_rank)
    main_process = ddp.launched().rank == 0
    if out.exists() and not out.is_dir():
        raise CellstackError(f"{out}: exists and is not a folder; choose another --out")
    created = not out.exists()
    try:
        return _predict_into(source, todo, out, options, device, progress, overwrite)
    except BaseException:
        if created and main_process:  # a refused run leaves no empty --out behind
            _remove_empty_tree(out)
        raise


def _predict_into(
    source: str | Path,
    todo: list[tuple[str, Path]],
    out: Path,
    options: PredictOptions,
    device: str,
    progress: bool,
    overwrite: bool,
) -> PredictSummary:
    """:func:`predict_folder` once its inputs are checked."""
    import contextlib
    import time

    from cellstack import ddp
    from cellstack.fileio import output_lock

    main_process = ddp.launched().rank == 0
    lock = output_lock(out, "cellstack predict") if main_process else contextlib.nullcontext()
    with lock:
        if main_process:
            prepare_output(out, [path for _, path in todo], overwrite)
        seg = options.load(source, device)
        world = ddp.setup(seg.device)
        writer = PredictionWriter(out, seg.class_names, options.outputs, options.spec)
        mine = ddp.shard(todo, world)
        t0 = time.perf_counter()
        results = seg.iter_many(
            [path for _, path in mine], spec=options.spec, progress=progress and world.main
        )
        write_behind(writer, mine, results)
        parts = ddp.gather((writer.submission, writer.coco), world)
        merged = writer.merged(parts, [image_id for image_id, _ in todo])
        if world.main:
            merged.close(inputs=dict(todo))
        ddp.barrier(world)
    n_cells = len(merged.coco)
    return PredictSummary(Path(out), len(todo), n_cells, time.perf_counter() - t0)


def write_behind(
    writer: PredictionWriter, items: Sequence[tuple[str, Path]], results: Iterator[Result]
) -> None:
    """``writer.add`` each result in a thread while the next image is segmented.

    Encoding and writing an image's outputs (TIFF, PNG, RLE: C code that releases the
    GIL) then overlaps the model's next forward pass. At most one image waits to be
    written, so memory stays that of two results; a failed write raises before the next
    image is written, and images are added in order (the submission's order)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="cellstack-writer") as pool:
        pending = None
        for (image_id, path), result in zip(items, results, strict=True):
            if pending is not None:
                pending.result()
            pending = pool.submit(writer.add, image_id, result, path)
        if pending is not None:
            pending.result()


def dry_run(
    source: str | Path,
    *,
    overrides: tuple[str, ...] = (),
    allow_unfinished: bool = False,
    image_size: tuple[int, int] = (520, 704),
) -> str:
    """``predict --dry-run``: load a run, CV folder or ensemble and describe what
    predicting one image of ``image_size`` (H, W) holds, without predicting."""
    from cellstack.data.limits import check_image_size
    from cellstack.inference.ensemble import Ensemble
    from cellstack.inference.sources import load_source
    from cellstack.inference.views import view_bytes
    from cellstack.inference.weights import weight_bytes

    check_image_size(image_size[0], image_size[1], "--dry-run-size")
    src = load_source(source, overrides, allow_unfinished=allow_unfinished)
    if isinstance(src.model, Ensemble):
        return src.model.plan(image_size)
    mb = 2**20
    weights = weight_bytes(src.model)
    view = view_bytes(src.model, image_size)
    return (
        f"one model ({src.cfg.model.arch}, {src.cfg.model.backbone.name}), one "
        f"{image_size[1]}x{image_size[0]} image: weights {weights / mb:.0f} MB, features "
        f"{view / mb:.0f} MB; estimated peak {(weights + view) / mb:.0f} MB (weights + "
        "features; backbone activations come on top)"
    )
