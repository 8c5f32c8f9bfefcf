"""``cellstack predict RUN IMAGES --out OUT``: load a run, predict a folder, write outputs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cellstack.data.images import IMAGE_SUFFIXES, PlaneSpec, list_images, plane_layout
from cellstack.data.labels import LABEL_DTYPES
from cellstack.errors import CellstackError, DataError
from cellstack.inference.export import (
    OUTPUTS,
    PredictionWriter,
    check_unique_outputs,
    remove_outputs,
)

if TYPE_CHECKING:
    from cellstack.data.records import ImageRecord
    from cellstack.inference.sources import Source
    from cellstack.structures import Instances


def find_images(path: str | Path) -> list[tuple[str, Path]]:
    """``(id, path)`` of the images to predict.

    Accepts a folder of images, a folder with ``images/`` (label layout), a Sartorius
    folder (``train.csv`` + ``train/``, or a ``test/`` folder) or one image file.
    """
    from cellstack.data.records import check_id

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
        remove_outputs(out)
        for name in OUTPUTS:
            remove_partials(out / name)
        remove_partials(out)
    out.mkdir(parents=True, exist_ok=True)


def check_predict_inputs(
    images: str | Path,
    spec: PlaneSpec,
    diameter: float | None,
    scale: float | None,
    label_dtype: str,
) -> list[tuple[str, Path]]:
    """``(id, path)`` of the images to predict, after every argument and every image
    header is checked: before ``--overwrite`` clears anything and before the model
    loads, a stack, a corrupt header or colliding output names fail at once."""
    from cellstack.inference.segmenter import resize_factor

    resize_factor(None, diameter, scale)
    if label_dtype not in LABEL_DTYPES:
        raise CellstackError(f"--label-dtype must be one of {', '.join(LABEL_DTYPES)}")
    todo = find_images(images)
    check_unique_outputs([(i, *plane_layout(p, spec)[:2]) for i, p in todo])
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
    *,
    overrides: tuple[str, ...] = (),
    device: str = "auto",
    progress: bool = True,
    overwrite: bool = False,
    allow_unfinished: bool = False,
    diameter: float | None = None,
    scale: float | None = None,
    spec: PlaneSpec | None = None,
    save_rois: bool = False,
    overlays: bool = True,
    label_dtype: str = "int32",
    save_geojson: bool = False,
    save_ome_zarr: bool = False,
) -> PredictSummary:
    """Predict every image of ``images`` with a run's final model, a CV folder or an
    ensemble YAML (see :mod:`~cellstack.inference.sources`); write to ``out`` (see
    :class:`~cellstack.inference.export.PredictionWriter`). A loop over
    :meth:`Segmenter.iter_many <cellstack.inference.segmenter.Segmenter.iter_many>`.

    Under ``torchrun`` every process predicts its share of the images (writing their
    label images and overlays itself) and rank 0 writes the merged ``submission.csv``
    and ``results.json``, in the images' order.

    ``diameter``: the typical cell diameter in these images (px); they are rescaled so
    their cells have the size the model trained on (its stored median diameter) and
    the masks mapped back. ``scale`` gives the factor directly. Default: no rescaling.
    ``spec``: channels and axes of stacks (:class:`~cellstack.data.images.PlaneSpec`);
    Z-stacks and time series are segmented plane by plane. ``save_geojson``,
    ``save_ome_zarr``: also QuPath GeoJSON and OME-Zarr labels (see the writer).
    """
    import contextlib
    import time

    from cellstack import ddp
    from cellstack.fileio import output_lock
    from cellstack.inference.segmenter import Segmenter

    spec = spec or PlaneSpec()
    todo = check_predict_inputs(images, spec, diameter, scale, label_dtype)
    out = Path(out)
    ddp.pick_device(device, ddp.launched().local_rank)
    main_process = ddp.launched().rank == 0
    if out.exists() and not out.is_dir():
        raise CellstackError(f"{out}: exists and is not a folder; choose another --out")
    lock = output_lock(out, "cellstack predict") if main_process else contextlib.nullcontext()
    with lock:
        if main_process:
            prepare_output(out, [path for _, path in todo], overwrite)
        seg = Segmenter.load(
            source,
            device=device,
            diameter=diameter,
            scale=scale,
            overrides=overrides,
            allow_unfinished=allow_unfinished,
        )
        world = ddp.setup(seg.device)
        writer = PredictionWriter(
            out,
            seg.class_names,
            overlays=overlays,
            save_rois=save_rois,
            label_dtype=label_dtype,
            save_geojson=save_geojson,
            save_ome_zarr=save_ome_zarr,
        )
        mine = ddp.shard(todo, world)
        t0 = time.perf_counter()
        results = seg.iter_many(
            [path for _, path in mine], spec=spec, progress=progress and world.main
        )
        for (image_id, _), result in zip(mine, results, strict=True):
            writer.add(image_id, result)
        parts = ddp.gather((writer.submission, writer.coco), world)
        merged = writer.merged(parts, [image_id for image_id, _ in todo])
        if world.main:
            merged.close(inputs=dict(todo))
        ddp.barrier(world)
    n_cells = len(merged.coco)
    return PredictSummary(Path(out), len(todo), n_cells, time.perf_counter() - t0)


def dry_run(
    source: str | Path,
    *,
    overrides: tuple[str, ...] = (),
    allow_unfinished: bool = False,
    image_size: tuple[int, int] = (520, 704),
) -> str:
    """``predict --dry-run``: load a run, CV folder or ensemble and describe what
    predicting one image of ``image_size`` (H, W) holds, without predicting."""
    from cellstack.data.records import check_image_size
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
