"""The tune workflows: ``cellstack tune`` (:func:`calibrate_source`, :func:`run_tune`,
a tuned copy of any model in a new folder :func:`write_tuned`), a CV folder's tuning
on its stored detections, and the thresholds a run chooses after training
(:func:`tune_run_thresholds`). All of them call the one search,
:func:`~cellstack.inference.tune.calibrate`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from cellstack.errors import CellstackError
from cellstack.inference.predict import raw_predictions
from cellstack.inference.tune import TuneGrid, TuneResult, calibrate

if TYPE_CHECKING:
    from cellstack.config import Config
    from cellstack.data.records import ImageRecord


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
    import json
    import shutil
    import tempfile
    from dataclasses import replace as copy_with

    from cellstack.inference.thresholds import THRESHOLDS, write_thresholds
    from cellstack.modeling import runfolder
    from cellstack.modeling.builtin import (
        CARD,
        LICENSES,
        META,
        is_builtin_folder,
        write_builtin,
    )

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
        if (source / LICENSES).is_file():
            shutil.copyfile(source / LICENSES, tmp / LICENSES)
        write_thresholds(
            tmp / THRESHOLDS, result.thresholds, f"written by cellstack tune on {summary}"
        )
        (tmp / CARD).write_text(_tuned_card(source, result, summary), encoding="utf-8")
        if out.exists():
            out.rmdir()  # empty (checked before the model ran)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _tuned_card(source: Path, result: TuneResult, summary: str) -> str:
    """``source``'s model card (or a title) with a line under "Tuned" saying on what
    and to which scale and thresholds it was tuned."""
    import datetime

    from cellstack.modeling.builtin import CARD

    card = (
        (source / CARD).read_text(encoding="utf-8")
        if (source / CARD).is_file()
        else f"# Model tuned from `{source.name}`\n"
    )
    p = result.thresholds.default
    return card.rstrip() + (
        ("\n\n## Tuned\n" if "\n## Tuned\n" not in card else "\n")
        + f"\n- {datetime.date.today().isoformat()}: `cellstack tune` from `{source}` on "
        f"{summary}; scale {result.scale_before:.4g} -> {result.scale:.4g}; mask "
        f"{p.mask_thresh}, offset {p.mask_offset:+g}, score {p.score_thresh}, nms "
        f"{p.mask_nms_iou}, min_size {p.min_size}.\n"
    )


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
    from cellstack.modeling.runfolder import read_data_stats

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
    first = cv.fold_run(0)
    grid = grid or TuneGrid.for_objects(trained_sizes(read_data_stats(first), first)["area_p1"])
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
