"""``cellstack cv DATA --config CFG --folds K --out CV``: k-fold training with
out-of-fold (OOF) predictions, as the original trained every model. The folder's layout
is :class:`~cellstack.inference.cvfolder.CVFolder`'s.

Running the same command again continues: a fold with ``model.pt`` is skipped, a fold
with only ``checkpoint.pt`` resumes exactly, OOF files are reused. ``cellstack tune CV``
tunes post-processing on the stored OOF detections without running a model and writes
``CV/thresholds.yaml``, which ``cellstack predict CV`` then uses.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from cellstack import ddp
from cellstack.config import Config, config_from_dict, config_to_dict, save_config
from cellstack.data.folds import folds_beside, read_folds_csv, write_folds_csv
from cellstack.data.records import ImageRecord
from cellstack.errors import CellstackError
from cellstack.fileio import atomic_write
from cellstack.inference.cvfolder import OOF, CVFolder
from cellstack.modeling import runfolder


@dataclass(frozen=True)
class CVResult:
    """The CV table: ``rows`` per fold and ``all`` (every OOF image), each with the
    number of images, the score, COCO AP/AP50 and the score per cell type."""

    out: Path
    rows: dict[str, dict]
    cell_types: tuple[str, ...]

    def table(self) -> str:
        """Markdown: one row per fold, then all OOF images."""
        head = ["fold", "images", "score", "AP", "AP50", *self.cell_types]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for name, row in self.rows.items():
            types = [
                f"{row['per_cell_type'][t]:.4f} ({row['counts'][t]})"
                if t in row["per_cell_type"]
                else "-"
                for t in self.cell_types
            ]
            cells = [
                name,
                str(row["images"]),
                f"{row['score']:.4f}",
                f"{row['ap']:.4f}",
                f"{row['ap50']:.4f}",
                *types,
            ]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)


def _fold_config(cfg: Config, fold: int, k: int) -> Config:
    return replace(cfg, data=replace(cfg.data, fold=fold, folds=k, val_split=None))


def _check_same_config(cv: CVFolder, cfg: Config) -> None:
    if config_to_dict(cv.config()) != config_to_dict(cfg):
        raise CellstackError(
            f"{cv.path} holds a CV run with another config ({cv.config_path}); run the same "
            "command to continue it, or choose another --out"
        )


def run_cv(
    cfg: Config,
    data: str | Path,
    out: str | Path,
    *,
    folds: int = 5,
    device: str = "auto",
    progress: bool = True,
) -> CVResult:
    """Train every fold, predict its held-out images, score them (module docstring)."""
    from cellstack.data.splits import assign_folds, cv_records
    from cellstack.engine.trainer import resolve_auto, train
    from cellstack.inference.predict import raw_predictions
    from cellstack.inference.sources import load_source

    data, out = Path(data), Path(out)
    cfg = config_from_dict(config_to_dict(cfg), [f"data.folds={folds}", "data.fold=null"])
    cv = CVFolder(out)
    if (out / runfolder.FINAL).is_file() or (out / runfolder.CHECKPOINT).is_file():
        raise CellstackError(f"{out} is a training run folder; choose another --out for CV")
    records, class_names = cv_records(data, cfg)
    # Every `auto` is resolved once, from all the CV's training data, so that the folds
    # agree (anchors, sizes, thresholds) and their models can be merged.
    cfg, _ = resolve_auto(cfg, records, say=print if ddp.current().main else None)
    made = not cv.folds_path.is_file()
    if made:
        fold_of = assign_folds(records, data, folds, cfg.train.seed)
        found = sorted({fold_of[r.image_id] for r in records})
        if found != list(range(folds)):
            # folds.csv beside the data was made with another --k: training `folds` of
            # its folds would leave images out of every fold's held-out set.
            raise CellstackError(
                f"{folds_beside(data)} splits the images into folds "
                f"{', '.join(map(str, found))}: pass --folds {len(found)}, or remake it "
                f"with `cellstack folds DATA --k {folds}`"
            )
    else:
        fold_of = read_folds_csv(cv.folds_path)
    if cv.config_path.is_file():
        _check_same_config(cv, cfg)
    cv.write_source(data)  # before anything else is written: it marks the folder as CV's
    if not cv.config_path.is_file():
        save_config(cfg, cv.config_path)
    if made:
        write_folds_csv(cv.folds_path, records, fold_of)

    for k in range(folds):
        run = cv.fold_run(k)
        state = cv.fold_state(k)
        if state == "trained":
            print(f"fold {k}: trained, skipped")
        elif state == "started":
            print(f"fold {k}: resuming {run}")
            train(cfg, data, run, resume=True, progress=progress)
        else:
            print(f"fold {k}: training {run}")
            _check_folds(data, cv)
            train(_fold_config(cfg, k, folds), data, run, progress=progress)
        world = ddp.current()  # under torchrun, rank 0 predicts the OOF images
        if cv.oof_path(k).is_file() or not world.main:
            ddp.barrier(world)
            continue
        held_out = [r for r in records if fold_of[r.image_id] == k]
        raws = raw_predictions(load_source(run), held_out, device=device, progress=progress)
        cv.save_raw(k, [r.image_id for r in held_out], raws)
        ddp.barrier(world)

    with atomic_write(cv.ensemble_path) as f:
        f.write(
            "# The fold models of this CV run as one ensemble (cellstack predict CV ...).\n"
            f"models: [{', '.join(f'fold{k}' for k in range(folds))}]\n"
            "flips: [none]\ntype_settings: none\n"
        )
    return score_oof(out, records, class_names, fold_of, cfg, progress=progress)


def _check_folds(data: Path, cv: CVFolder) -> None:
    """The trainer takes folds from ``folds.csv`` beside the data, or makes them with
    the same function and seed as CV did, so both agree, unless that file appeared or
    changed since CV started."""
    theirs = folds_beside(data)
    if theirs.is_file() and read_folds_csv(theirs) != read_folds_csv(cv.folds_path):
        raise CellstackError(
            f"{theirs} differs from {cv.folds_path}, the split this CV run started with; "
            "restore it or start another --out"
        )


def score_oof(
    out: Path,
    records: list[ImageRecord],
    class_names: tuple[str, ...],
    fold_of: dict[str, int],
    cfg: Config,
    *,
    progress: bool = True,
) -> CVResult:
    """Post-process the OOF detections with the CV's thresholds, write the OOF
    submission and the CV table (``cv.json``, ``cv.md``)."""
    from cellstack.data import rle
    from cellstack.data.masks import pixels_to_labels, pixels_to_sparse
    from cellstack.data.sartorius import write_submission
    from cellstack.evaluation.report import evaluate
    from cellstack.inference.postprocess import postprocess
    from cellstack.inference.thresholds import THRESHOLDS, resolve_thresholds

    thresholds = resolve_thresholds(cfg, tuned=out / THRESHOLDS)
    raws = CVFolder(out).load_oof()
    preds, confidences, submission = {}, {}, {}
    for rec in records:
        raw = raws[rec.image_id]
        # Made at the run's data.scale: mapped to the image's pixels as predict maps them.
        params = thresholds.for_classes(raw.classes.numpy(), class_names)
        cells = postprocess(raw, params, rec.shape)
        preds[rec.image_id] = pixels_to_sparse(cells.pixels, rec.shape)
        confidences[rec.image_id] = list(cells.scores)
        labels = pixels_to_labels(cells.pixels, rec.shape)
        submission[rec.image_id] = rle.encode_labels(labels)[1]
    write_submission(out / OOF / "submission.csv", submission)
    rows = {}
    groups = {
        f"fold {k}": [r for r in records if fold_of[r.image_id] == k]
        for k in sorted(set(fold_of[r.image_id] for r in records))
    }
    groups["all (OOF)"] = records
    for name, members in groups.items():
        report = evaluate(
            members,
            {r.image_id: preds[r.image_id] for r in members},
            scores={r.image_id: confidences[r.image_id] for r in members},
            progress=progress and name.startswith("all"),
        )
        rows[name] = {"images": len(members), **report.to_dict()}
        if not name.startswith("all"):
            rows[name].pop("per_image")
    result = CVResult(out, rows, tuple(sorted({r.cell_type for r in records})))
    with atomic_write(out / "cv.json") as f:
        json.dump({"thresholds": thresholds.to_dict(), "rows": rows}, f, indent=1)
    with atomic_write(out / "cv.md") as f:
        f.write(result.table() + "\n")
    return result


def rescore(out: str | Path, *, progress: bool = True) -> CVResult:
    """Recompute the CV table of a finished CV folder (e.g. after ``tune``)."""
    from cellstack.data.splits import cv_records

    cv = CVFolder.find(out)
    if cv is None:
        raise CellstackError(f"{out}: not a CV folder (cellstack cv)")
    cfg = cv.config()
    records, class_names = cv_records(cv.data_path(), cfg)
    fold_of = read_folds_csv(cv.folds_path)
    records = [r for r in records if r.image_id in fold_of]
    return score_oof(out, records, class_names, fold_of, cfg, progress=progress)
