"""The folder workflows, on top of the parts: ``cellstack predict`` (a folder in, the
outputs written), ``--dry-run``, raw predictions of annotated images (what tuning and
CV search), and ``cellstack tune`` (:func:`calibrate`, :func:`run_tune`, the tuned
model folder :func:`write_tuned`). The pure threshold search is
:mod:`~cellstack.inference.tune`."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
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
from cellstack.inference.tune import TuneGrid, TuneResult, calibrate

if TYPE_CHECKING:
    from cellstack.config import Config
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
        writer = PredictionWriter(out, seg.class_names, options.outputs)
        mine = ddp.shard(todo, world)
        t0 = time.perf_counter()
        results = seg.iter_many(
            [path for _, path in mine], spec=options.spec, progress=progress and world.main
        )
        write_behind(writer, [image_id for image_id, _ in mine], results)
        parts = ddp.gather((writer.submission, writer.coco), world)
        merged = writer.merged(parts, [image_id for image_id, _ in todo])
        if world.main:
            merged.close(inputs=dict(todo))
        ddp.barrier(world)
    n_cells = len(merged.coco)
    return PredictSummary(Path(out), len(todo), n_cells, time.perf_counter() - t0)


def write_behind(
    writer: PredictionWriter, image_ids: Sequence[str], results: Iterator[Result]
) -> None:
    """``writer.add`` each result in a thread while the next image is segmented.

    Encoding and writing an image's outputs (TIFF, PNG, RLE: C code that releases the
    GIL) then overlaps the model's next forward pass. At most one image waits to be
    written, so memory stays that of two results; a failed write raises before the next
    image is written, and images are added in order (the submission's order)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="cellstack-writer") as pool:
        pending = None
        for image_id, result in zip(image_ids, results, strict=True):
            if pending is not None:
                pending.result()
            pending = pool.submit(writer.add, image_id, result)
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


def calibrate_source(
    src,
    records: Sequence[ImageRecord],
    *,
    grid: TuneGrid | None = None,
    scales: bool = True,
    device: str = "auto",
    progress: bool = True,
) -> TuneResult:
    """:func:`~cellstack.inference.tune.calibrate` a model to annotated records: the
    thresholds of :meth:`TuneGrid.for_objects` per cell type and, with ``scales``, the
    resize factor.

    Args:
        src: a :class:`~cellstack.inference.sources.Source`, or what
            :func:`~cellstack.inference.sources.load_source` loads (a run, a built-in).
        records: the annotated images.
        scales: search the scale too (only where the model records its training
            objects' diameter; a model that does not is calibrated at its own scale).

    Returns:
        The search; ``result.scale`` is the factor to predict at.
    """
    from cellstack.inference.scale import resize_factor
    from cellstack.inference.sources import Source, load_source

    if not isinstance(src, Source):
        src = load_source(src)
    if not records:
        raise CellstackError("calibration needs at least one annotated image")
    folders = sorted({str(r.image_path.parent) for r in records})
    return calibrate(
        lambda s: raw_predictions(src, records, device=device, scale=s, progress=progress),
        records,
        src.class_names,
        src.thresholds,
        grid or TuneGrid.for_objects(src.area_p1),
        scale=resize_factor(src, None, None),
        diameter=src.diameter if scales else None,
        where=f"the {len(records)} annotated images of {', '.join(folders[:2])}",
        progress=progress,
    )


def run_tune(
    source_path,
    data,
    *,
    out=None,
    fold: int | None = None,
    overrides: tuple[str, ...] = (),
    device: str = "auto",
    grid: TuneGrid | None = None,
    progress: bool = True,
    allow_unfinished: bool = False,
) -> tuple[TuneResult, object]:
    """``cellstack tune``: predict ``data`` (or its fold ``fold``) with a model, a
    built-in or an ensemble, search thresholds, write them; returns (result, where).

    With ``out``, a new model folder is written there (:func:`write_tuned`: the
    weights, the tuned thresholds and scale, a card saying what it was tuned on) and
    the source is never touched: the way to calibrate a built-in. Without it, a run's
    (or an ensemble's) ``thresholds.yaml`` is written in place, at the model's own
    scale. A CV folder (``cellstack cv``) is tuned on its stored out-of-fold detections
    instead, without running a model; ``data`` then defaults to the CV's data.
    ``allow_unfinished``: a run without ``model.pt`` uses its latest checkpoint.
    """
    from cellstack.data.layouts import load_dataset
    from cellstack.inference.cvfolder import CVFolder
    from cellstack.inference.sources import load_source
    from cellstack.inference.thresholds import write_thresholds
    from cellstack.modeling.builtin import models_root, resolve_run

    cv = CVFolder.find(source_path)
    if cv is not None:
        if out is not None:
            raise CellstackError(f"{source_path}: --out takes a model, not a CV folder")
        return _tune_cv(cv, data, fold, overrides, grid, progress)
    if data is None:
        raise CellstackError("tune needs DATA (annotated images) unless SOURCE is a CV folder")
    folder = resolve_run(source_path, quiet=True)
    builtin = folder.resolve().is_relative_to(models_root().resolve())
    if out is not None:
        _check_out(Path(out), folder, Path(data))
    elif builtin:
        raise CellstackError(
            f"{source_path} is a built-in model, which tune never changes; give --out NEW "
            f"to write a tuned copy (cellstack tune {source_path} {data} --out NEW), then "
            "predict with NEW"
        )
    src = load_source(source_path, overrides, allow_unfinished=allow_unfinished)
    if out is not None and folder.is_file():
        raise CellstackError(
            f"{source_path}: --out takes a model (a run or a built-in); an ensemble is "
            "tuned in place (thresholds.yaml beside its YAML)"
        )
    records = _fold_records(load_dataset(data), data, fold)
    grid = grid or TuneGrid.for_objects(src.area_p1)
    result = calibrate_source(
        src, records, grid=grid, scales=out is not None, device=device, progress=progress
    )
    what = f"{len(records)} images of {data}" + (f" (fold {fold})" if fold is not None else "")
    summary = f"score {result.before:.4f} -> {result.after:.4f}"
    if not np.isnan(result.loo):
        summary += (
            f" (leave-one-{result.unit}-out {result.loo:.4f}, estimated gain "
            f"{result.estimated_gain:+.4f})"
        )
    if result.kept:
        summary += "; no gain on data the search did not see: the model's thresholds kept"
    if out is not None:
        write_tuned(folder, Path(out), result, f"{what}; {summary}", allow_unfinished)
        return result, Path(out)
    write_thresholds(
        src.thresholds_path, result.thresholds, f"written by cellstack tune on {what}; {summary}"
    )
    return result, src.thresholds_path


def _check_out(out: Path, source: Path, data: Path) -> None:
    """Refuse an ``--out`` that would write into the package, the source, the annotated
    images (as predict refuses its inputs' folder) or a folder that holds anything: a
    tuned model is always a new folder."""
    from cellstack.modeling.builtin import models_root

    where = out.resolve()
    if where.is_relative_to(models_root().resolve()):
        raise CellstackError(f"{out}: inside cellstack's built-in models; choose another --out")
    if where == source.resolve() or where.is_relative_to(source.resolve()):
        raise CellstackError(f"{out}: inside the model being tuned; choose another --out")
    inputs = data.resolve() if data.is_dir() else data.resolve().parent
    if where.is_relative_to(inputs):
        raise CellstackError(
            f"{out}: inside the annotated images' folder {data}; choose an --out outside it"
        )
    if out.exists() and not out.is_dir():
        raise CellstackError(f"{out}: exists and is not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()):
        raise CellstackError(f"{out}: exists and is not an empty folder; choose another --out")


def write_tuned(
    source: Path, out: Path, result: TuneResult, summary: str, allow_unfinished: bool = False
) -> None:
    """A new model folder at ``out``: the weights of ``source`` (a run or a built-in;
    copied, so ``out`` keeps working whatever happens to the source), its training
    objects' statistics, its licences, the tuned ``thresholds.yaml``, the chosen scale
    as the config's ``data.scale`` (predict's default) and its model card with a line
    saying what it was tuned on. Laid out as a built-in (safetensors, no pickle), so
    everything that takes a run takes it. Written into a temporary sibling folder and
    renamed, so ``out`` is either complete or absent."""
    import datetime
    import json
    import shutil
    import tempfile
    from dataclasses import replace as copy_with

    from cellstack.inference.thresholds import THRESHOLDS, write_thresholds
    from cellstack.modeling import runfolder
    from cellstack.modeling.builtin import CARD, META, is_builtin_folder, write_builtin

    cfg, class_names, weights = runfolder.load_run(source, allow_unfinished=allow_unfinished)
    meta = {}
    if is_builtin_folder(source):
        meta = json.loads((source / META).read_text(encoding="utf-8"))
    dtype = str(meta.get("weights_dtype", "float32"))  # a built-in's float16 stays so
    cfg = copy_with(cfg, data=copy_with(cfg.data, scale=round(float(result.scale), 4)))
    stats = runfolder.run_data_stats(source)
    state = runfolder.final_state(weights, cfg, class_names, stats)
    if isinstance(meta.get("versions"), dict):  # what trained the weights, not this tune
        state["versions"] = meta["versions"]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        write_builtin(tmp, state, dtype=getattr(torch, dtype))
        if stats is not None:
            (tmp / "data_stats.json").write_text(json.dumps(stats, indent=1), encoding="utf-8")
        if (source / "LICENSES.md").is_file():
            shutil.copyfile(source / "LICENSES.md", tmp / "LICENSES.md")
        write_thresholds(
            tmp / THRESHOLDS, result.thresholds, f"written by cellstack tune on {summary}"
        )
        card = (
            (source / CARD).read_text(encoding="utf-8")
            if (source / CARD).is_file()
            else (f"# Model tuned from `{source.name}`\n")
        )
        p = result.thresholds.default
        card = card.rstrip() + (
            ("\n\n## Tuned\n" if "\n## Tuned\n" not in card else "\n")
            + f"\n- {datetime.date.today().isoformat()}: `cellstack tune` from `{source}` on "
            f"{summary}; scale {result.scale_before:.4g} -> {result.scale:.4g}; mask "
            f"{p.mask_thresh}, offset {p.mask_offset:+g}, score {p.score_thresh}, nms "
            f"{p.mask_nms_iou}, min_size {p.min_size}.\n"
        )
        (tmp / CARD).write_text(card, encoding="utf-8")
        if out.exists():
            out.rmdir()  # empty (checked before the model ran)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _fold_records(records: list, data, fold: int | None) -> list:
    """The records of fold ``fold`` of ``DATA/folds.csv`` (all of them for None)."""
    from cellstack.data.folds import folds_beside, read_folds_csv

    if fold is None:
        return records
    path = folds_beside(data)
    if not path.is_file():
        raise CellstackError(f"--fold needs {path} (cellstack folds)")
    folds = read_folds_csv(path)
    records = [r for r in records if folds.get(r.image_id) == fold]
    if not records:
        raise CellstackError(f"fold {fold} of {path} has no images")
    return records


def _tune_cv(cv, data, fold, overrides, grid, progress) -> tuple[TuneResult, object]:
    """Tune on a CV folder's stored out-of-fold detections: no model runs."""
    from cellstack.config import config_from_dict, config_to_dict
    from cellstack.data.folds import read_folds_csv
    from cellstack.data.splits import cv_records
    from cellstack.inference.sources import trained_sizes
    from cellstack.inference.thresholds import THRESHOLDS, resolve_thresholds, write_thresholds

    data = Path(data) if data is not None else cv.data_path()
    cfg = config_from_dict(config_to_dict(cv.config()), overrides)
    pool, class_names = cv_records(data, cfg)
    raws = cv.load_oof()
    records = [r for r in pool if r.image_id in raws]
    if fold is not None:
        fold_of = read_folds_csv(cv.folds_path)
        records = [r for r in records if fold_of.get(r.image_id) == fold]
    if not records:
        raise CellstackError(f"{cv.path}: no OOF prediction matches an image of {data}")
    # The starting point is what predict would apply (thresholds given on the command
    # line beat thresholds.yaml).
    current = resolve_thresholds(cfg, overrides, tuned=cv.path / THRESHOLDS)
    grid = grid or TuneGrid.for_objects(trained_sizes(cv.fold_run(0))["area_p1"])
    result = calibrate(
        lambda _: [raws[r.image_id] for r in records],
        records,
        class_names,
        current,
        grid,
        progress=progress,
    )
    path = cv.path / THRESHOLDS
    write_thresholds(
        path,
        result.thresholds,
        f"written by cellstack tune on the OOF predictions of {len(records)} images of {data}"
        + (f" (fold {fold})" if fold is not None else "")
        + f"; score {result.before:.4f} -> {result.after:.4f}",
    )
    return result, path


#: Images the automatic threshold search predicts at most (a few suffice, and it runs
#: after every training).
AUTO_TUNE_IMAGES = 16


def tune_run_thresholds(
    model: torch.nn.Module,
    cfg: Config,
    records: list[ImageRecord],
    data_stats: dict | None,
    run: Path,
    device: torch.device,
    *,
    on_validation: bool,
) -> None:
    """Choose the run's post-processing thresholds on ``records`` (the validation
    images when ``on_validation``, else the training images) and write
    ``thresholds.yaml``.

    The grid is every tuning's (:meth:`TuneGrid.for_objects`, minimum sizes relative to
    the training objects). Per-type thresholds are kept only when every predicted
    type has at least 4 images; otherwise one default serves all.
    """
    from cellstack.data.stats import ObjectStats
    from cellstack.inference.postprocess import PostprocessParams
    from cellstack.inference.sources import Source
    from cellstack.inference.thresholds import THRESHOLDS, Thresholds, write_thresholds

    if len(records) > AUTO_TUNE_IMAGES:  # spread over the pool: its order is by name,
        step = len(records) / AUTO_TUNE_IMAGES  # and a name prefix can be one cell type
        records = [records[int(k * step)] for k in range(AUTO_TUNE_IMAGES)]
    current = Thresholds(PostprocessParams.of(cfg.predict))
    area = ObjectStats.from_dict(data_stats).area_p1 if data_stats else 0.0
    grid = TuneGrid.for_objects(area)
    src = Source.of_model(model, cfg, current)
    result = calibrate(
        lambda _: raw_predictions(src, records, device=device, progress=False),
        records,
        src.class_names,
        current,
        grid,
        progress=False,
    )
    per_type = {k: g["images"] for k, g in result.groups.items() if k != "all"}
    if all(n >= 4 for n in per_type.values()):
        chosen, before, after = result.thresholds, result.before, result.after
    else:  # the default alone: its scores are those of the "all" group
        everything = result.groups["all"]
        chosen = Thresholds(result.thresholds.default)
        before, after = everything["before"], everything["after"]
    which = "validation" if on_validation else "training"
    summary = (
        f"{len(records)} {which} images: score {before:.4f} at the config's thresholds -> "
        f"{after:.4f}"
    )
    write_thresholds(run / THRESHOLDS, chosen, f"Chosen after training on {summary}.")
    print(
        f"thresholds tuned on {summary} (score_thresh {chosen.default.score_thresh}, "
        f"mask_thresh {chosen.default.mask_thresh}) -> {run / THRESHOLDS}"
    )
