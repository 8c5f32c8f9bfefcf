"""``cellstack predict RUN IMAGES --out OUT``: load a run, predict a folder, write outputs."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from cellstack.config import PredictConfig
from cellstack.data.images import (
    IMAGE_SUFFIXES,
    image_size,
    list_images,
    read_image,
    to_gray_uint8,
)
from cellstack.errors import CellstackError, DataError
from cellstack.inference.postprocess import PostprocessParams, Thresholds
from cellstack.inference.predictor import Predictor

if TYPE_CHECKING:
    from cellstack.data.records import ImageRecord
    from cellstack.inference.sources import Source
    from cellstack.structures import Instances


def find_images(path: str | Path) -> list[tuple[str, Path]]:
    """``(id, path)`` of the images to predict.

    Accepts a folder of images, a folder with ``images/`` (label layout), a Sartorius
    folder (``train.csv`` + ``train/``, or a ``test/`` folder) or one image file.
    """
    from cellstack.fileio import check_name

    path = Path(path)
    if path.is_file():
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise DataError(f"{path}: not an image ({', '.join(IMAGE_SUFFIXES)})")
        try:
            return [(check_name(path.stem, str(path)), path)]
        except CellstackError as exc:
            raise DataError(str(exc)) from None
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


_POSTPROCESS_KEYS = {f"predict.{f.name}" for f in fields(PostprocessParams)}


def params_from(cfg: PredictConfig) -> PostprocessParams:
    """The post-processing part of a predict config."""
    return PostprocessParams(
        cfg.mask_thresh, cfg.score_thresh, cfg.mask_nms_iou, cfg.min_size, cfg.convex_refill
    )


def raw_predictions(
    src: Source, records: list[ImageRecord], *, device: str = "auto", progress: bool = True
) -> list[Instances]:
    """Raw detections (:meth:`Predictor.raw`) of a loaded source on annotated records,
    one image at a time: what ``tune`` searches and ``cv`` stores as OOF predictions."""
    from tqdm import tqdm

    from cellstack.data.dataset import load_sample
    from cellstack.engine.trainer import pick_device

    p = src.cfg.predict
    predictor = Predictor(
        src.model,
        src.thresholds,
        device=pick_device(device),
        tile_size=p.tile_size,
        tile_overlap=p.tile_overlap,
        batch_size=p.batch_size,
    )
    raws = []
    with torch.inference_mode():
        for rec in tqdm(records, desc="predicting", unit="img", disable=not progress):
            image, _ = load_sample(rec)
            raws.extend(predictor.raw([image]))
    return raws


# What predict writes into its output folder; with --overwrite exactly these are
# replaced, anything else there is left alone.
OUTPUTS = ("submission.csv", "results.json", "labels", "overlays")


def prepare_output(out: Path, inputs: list[Path], overwrite: bool) -> None:
    """Make ``out`` ready for a predict run, before any model loads.

    Refused: ``out`` is a file, holds one of the input images (an overlay could
    overwrite it), or is not empty and ``overwrite`` is off. With ``overwrite`` the
    outputs of an earlier predict (:data:`OUTPUTS`) are removed first, so old label
    images never sit beside new ones; ``submission.csv`` and ``results.json`` are
    written last, so a killed run leaves no file that says it finished.
    """
    import shutil

    from cellstack.fileio import remove_partials

    if out.exists() and not out.is_dir():
        raise CellstackError(f"{out}: exists and is not a folder; choose another --out")
    root = out.resolve()
    for p in inputs:
        if p.resolve().is_relative_to(root):
            raise CellstackError(
                f"--out {out} holds the input image {p}; choose an output folder outside the inputs"
            )
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise CellstackError(
                f"{out}: folder is not empty; pass --overwrite to replace earlier predictions "
                "there, or choose another --out"
            )
        for name in OUTPUTS:
            target = out / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
        remove_partials(out)
    out.mkdir(parents=True, exist_ok=True)


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
) -> PredictSummary:
    """Predict every image of ``images`` with a run's final model or an ensemble YAML
    (see :mod:`~cellstack.inference.sources`); write to ``out``.

    Under ``torchrun`` every process predicts its share of the images (writing their
    label images and overlays itself) and rank 0 writes the merged ``submission.csv``
    and ``results.json``, in the images' order.

    ``diameter``: the typical cell diameter in these images (px); they are rescaled so
    their cells have the size the model trained on (its stored median diameter) and
    the masks mapped back. ``scale`` gives the factor directly. Default: no rescaling.
    """
    import time

    from tqdm import tqdm

    from cellstack.engine import distributed
    from cellstack.engine.trainer import pick_device
    from cellstack.inference.export import PredictionWriter
    from cellstack.inference.sources import load_source

    # Every argument is checked before --overwrite clears anything.
    if diameter is not None and scale is not None:
        raise CellstackError("give --diameter or --scale, not both")
    if (diameter is not None and diameter <= 0) or (scale is not None and scale <= 0):
        raise CellstackError("--diameter and --scale must be positive")
    out = Path(out)
    torch_device = pick_device(device, distributed.launched().local_rank)
    todo = find_images(images)
    for _, path in todo:  # headers only: a stack or a corrupt header fails before the model
        image_size(path)
    if distributed.launched().rank == 0:
        prepare_output(out, [path for _, path in todo], overwrite)
    src = load_source(source, overrides, allow_unfinished=allow_unfinished)
    if diameter is not None:
        if src.diameter is None:
            raise CellstackError(
                f"{source}: the run did not record its training objects' diameter "
                "(data_stats.json); use --scale instead"
            )
        scale = src.diameter / diameter
    class_names = src.class_names
    p = src.cfg.predict
    thresholds = src.thresholds
    if any(o.split("=")[0].strip() in _POSTPROCESS_KEYS for o in overrides):
        # Thresholds given on the command line beat thresholds.yaml.
        thresholds = Thresholds(params_from(p))
    world = distributed.setup(torch_device)
    predictor = Predictor(
        src.model,
        thresholds,
        device=torch_device,
        tile_size=p.tile_size,
        tile_overlap=p.tile_overlap,
        batch_size=p.batch_size,
        scale=scale or 1.0,
    )
    writer = PredictionWriter(out, class_names)
    mine = distributed.shard(todo, world)
    t0 = time.perf_counter()
    bar = tqdm(
        total=len(mine), desc="predicting", unit="img", disable=not (progress and world.main)
    )
    with torch.inference_mode(), bar:  # closed on errors too: the error line stands alone
        for k in range(0, len(mine), p.batch_size):
            chunk = mine[k : k + p.batch_size]
            images = [to_gray_uint8(read_image(path)) for _, path in chunk]
            for (image_id, _), image, inst in zip(chunk, images, predictor(images), strict=True):
                writer.add(image_id, image, inst)
            bar.update(len(chunk))
    parts = distributed.gather((writer.submission, writer.coco), world)
    merged = writer.merged(parts, [image_id for image_id, _ in todo])
    if world.main:
        merged.close()
    distributed.barrier(world)
    n_cells = len(merged.coco)
    return PredictSummary(Path(out), len(todo), n_cells, time.perf_counter() - t0)
