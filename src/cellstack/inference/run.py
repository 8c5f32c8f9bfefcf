"""``cellstack predict RUN IMAGES --out OUT``: load a run, predict a folder, write outputs."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from cellstack.config import PredictConfig
from cellstack.data.images import IMAGE_SUFFIXES, list_images, read_image, to_gray_uint8
from cellstack.errors import DataError
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
    path = Path(path)
    if path.is_file():
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise DataError(f"{path}: not an image ({', '.join(IMAGE_SUFFIXES)})")
        return [(path.stem, path)]
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
) -> PredictSummary:
    """Predict every image of ``images`` with a run's final model or an ensemble YAML
    (see :mod:`~cellstack.inference.sources`); write to ``out``.

    Under ``torchrun`` every process predicts its share of the images (writing their
    label images and overlays itself) and rank 0 writes the merged ``submission.csv``
    and ``results.json``, in the images' order.
    """
    import time

    from tqdm import tqdm

    from cellstack.engine import distributed
    from cellstack.engine.trainer import pick_device
    from cellstack.inference.export import PredictionWriter
    from cellstack.inference.sources import load_source

    src = load_source(source, overrides)
    class_names = src.class_names
    p = src.cfg.predict
    thresholds = src.thresholds
    if any(o.split("=")[0].strip() in _POSTPROCESS_KEYS for o in overrides):
        # Thresholds given on the command line beat thresholds.yaml.
        thresholds = Thresholds(params_from(p))
    torch_device = pick_device(device, distributed.launched().local_rank)
    world = distributed.setup(torch_device)
    predictor = Predictor(
        src.model,
        thresholds,
        device=torch_device,
        tile_size=p.tile_size,
        tile_overlap=p.tile_overlap,
        batch_size=p.batch_size,
    )
    writer = PredictionWriter(out, class_names)
    todo = find_images(images)
    mine = distributed.shard(todo, world)
    t0 = time.perf_counter()
    bar = tqdm(
        total=len(mine), desc="predicting", unit="img", disable=not (progress and world.main)
    )
    with torch.inference_mode():
        for k in range(0, len(mine), p.batch_size):
            chunk = mine[k : k + p.batch_size]
            images = [to_gray_uint8(read_image(path)) for _, path in chunk]
            for (image_id, _), image, inst in zip(chunk, images, predictor(images), strict=True):
                writer.add(image_id, image, inst)
            bar.update(len(chunk))
    bar.close()
    parts = distributed.gather((writer.submission, writer.coco), world)
    merged = writer.merged(parts, [image_id for image_id, _ in todo])
    if world.main:
        merged.close()
    distributed.barrier(world)
    n_cells = len(merged.coco)
    return PredictSummary(Path(out), len(todo), n_cells, time.perf_counter() - t0)
