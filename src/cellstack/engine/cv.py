"""``cellstack cv DATA --config CFG --folds K --out CV``: k-fold training with
out-of-fold (OOF) predictions, as the original trained every model.

The CV folder::

    CV/config.yaml          the config every fold trains with (data.fold set per fold)
    CV/folds.csv            the split (grouped by sample, stratified by cell type)
    CV/fold{k}/             fold k's run folder (cellstack train)
    CV/oof/fold{k}.pt       fold k's raw OOF detections (see save_raw), then
    CV/oof/submission.csv   the post-processed OOF cells of every fold
    CV/cv.json, CV/cv.md    the CV table: per fold and per cell type
    CV/ensemble.yaml        the fold models as one ensemble, so that
                            ``cellstack predict CV IMAGES`` averages the folds

Running the same command again continues: a fold with ``model.pt`` is skipped, a fold
with only ``checkpoint.pt`` resumes exactly, OOF files are reused. ``cellstack tune CV``
tunes post-processing on the stored OOF detections without running a model and writes
``CV/thresholds.yaml``, which ``cellstack predict CV`` then uses.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from cellstack.config import Config, config_from_dict, config_to_dict, load_config, save_config
from cellstack.data.folds import read_folds_csv, write_folds_csv
from cellstack.data.layouts import load_dataset
from cellstack.data.records import ImageRecord
from cellstack.engine import checkpoint as ckpt
from cellstack.engine import distributed
from cellstack.errors import CellstackError
from cellstack.fileio import atomic_path, atomic_write
from cellstack.structures import Instances

OOF = "oof"


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


def save_raw(path: Path, image_ids: list[str], raws: list[Instances]) -> None:
    """Raw detections of some images, compactly: boxes, scores, labels, and RoI mask
    probabilities quantised to uint8 (p * 255, as the original kept its soft masks)."""
    items = [
        {
            "image_size": inst.image_size,
            "boxes": inst.boxes.float(),
            "scores": inst.scores.float(),
            "labels": inst.labels,
            "roi_masks": (inst.roi_masks.float() * 255).round().to(torch.uint8),
        }
        for inst in raws
    ]
    with atomic_path(path) as tmp:
        torch.save({"image_ids": image_ids, "instances": items}, tmp)


def load_raw(path: Path) -> dict[str, Instances]:
    """``{image_id: Instances}`` as :func:`save_raw` wrote them (masks back to float)."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CellstackError(f"{path}: cannot read OOF predictions ({exc})") from None
    out = {}
    for image_id, item in zip(data["image_ids"], data["instances"], strict=True):
        out[image_id] = Instances(
            tuple(item["image_size"]),
            boxes=item["boxes"],
            scores=item["scores"],
            labels=item["labels"],
            roi_masks=item["roi_masks"].float() / 255,
        )
    return out


def is_cv_folder(path: str | Path) -> bool:
    return (Path(path) / "folds.csv").is_file() and (Path(path) / OOF).is_dir()


def _fold_config(cfg: Config, fold: int, k: int) -> Config:
    return replace(cfg, data=replace(cfg.data, fold=fold, folds=k, val_split=None))


def _check_same_config(out: Path, cfg: Config) -> None:
    saved = load_config(out / "config.yaml")
    if config_to_dict(saved) != config_to_dict(cfg):
        raise CellstackError(
            f"{out} holds a CV run with another config ({out / 'config.yaml'}); run the same "
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
    from cellstack.data.splits import assign_folds
    from cellstack.engine.trainer import train
    from cellstack.inference.run import raw_predictions
    from cellstack.inference.sources import load_source

    data, out = Path(data), Path(out)
    cfg = config_from_dict(config_to_dict(cfg), [f"data.folds={folds}", "data.fold=null"])
    out.mkdir(parents=True, exist_ok=True)
    if (out / "config.yaml").is_file():
        _check_same_config(out, cfg)
    else:
        save_config(cfg, out / "config.yaml")
    records, class_names = cv_records(data, cfg)
    if (out / "folds.csv").is_file():
        fold_of = read_folds_csv(out / "folds.csv")
    else:
        fold_of = assign_folds(records, data, folds, cfg.train.seed)
        write_folds_csv(out / "folds.csv", records, fold_of)
    (out / OOF).mkdir(exist_ok=True)
    _write_meta(out, data)

    for k in range(folds):
        run = out / f"fold{k}"
        if (run / ckpt.FINAL).is_file():
            print(f"fold {k}: trained, skipped")
        elif (run / ckpt.CHECKPOINT).is_file():
            print(f"fold {k}: resuming {run}")
            train(cfg, data, run, resume=True, progress=progress)
        else:
            print(f"fold {k}: training {run}")
            _check_folds(data, out)
            train(_fold_config(cfg, k, folds), data, run, progress=progress)
        oof_path = out / OOF / f"fold{k}.pt"
        world = distributed.current()  # under torchrun, rank 0 predicts the OOF images
        if oof_path.is_file() or not world.main:
            distributed.barrier(world)
            continue
        held_out = [r for r in records if fold_of[r.image_id] == k]
        raws = raw_predictions(load_source(run), held_out, device=device, progress=progress)
        save_raw(oof_path, [r.image_id for r in held_out], raws)
        distributed.barrier(world)

    with atomic_write(out / "ensemble.yaml") as f:
        f.write(
            "# The fold models of this CV run as one ensemble (cellstack predict CV ...).\n"
            f"models: [{', '.join(f'fold{k}' for k in range(folds))}]\n"
            "flips: [none]\ntype_settings: none\n"
        )
    return score_oof(out, records, class_names, fold_of, cfg, progress=progress)


def cv_records(data: Path, cfg: Config) -> tuple[list[ImageRecord], tuple[str, ...]]:
    """The records CV splits (those of ``data.splits``) and the class names, which the
    trainer takes from every record of the data."""
    from cellstack.data.splits import class_names_of, training_pool

    records = load_dataset(data)
    return training_pool(records, cfg, data), tuple(class_names_of(records))


def _check_folds(data: Path, out: Path) -> None:
    """The trainer takes folds from ``folds.csv`` beside the data, or makes them with
    the same function and seed as CV did, so both agree, unless that file appeared or
    changed since CV started."""
    base = data if data.is_dir() else data.parent
    theirs = base / "folds.csv"
    if theirs.is_file() and read_folds_csv(theirs) != read_folds_csv(out / "folds.csv"):
        raise CellstackError(
            f"{theirs} differs from {out / 'folds.csv'}, the split this CV run started with; "
            "restore it or start another --out"
        )


def _write_meta(out: Path, data: Path) -> None:
    with atomic_write(out / OOF / "source.json") as f:
        json.dump({"data": str(data.resolve())}, f)


def oof_data_path(out: Path) -> Path:
    """The dataset a CV folder was trained on (for ``tune`` without DATA)."""
    return Path(json.loads((Path(out) / OOF / "source.json").read_text())["data"])


def load_oof(out: Path) -> dict[str, Instances]:
    """Every fold's raw OOF detections, ``{image_id: Instances}``."""
    paths = sorted((Path(out) / OOF).glob("fold*.pt"))
    if not paths:
        raise CellstackError(f"{out}: no OOF predictions yet (run cellstack cv to the end)")
    merged: dict[str, Instances] = {}
    for p in paths:
        merged.update(load_raw(p))
    return merged


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
    from cellstack.data.sartorius import write_submission
    from cellstack.evaluation.report import evaluate
    from cellstack.inference.postprocess import pixels_to_labels, pixels_to_sparse, postprocess
    from cellstack.inference.sources import folder_thresholds

    thresholds = folder_thresholds(out, cfg)
    raws = load_oof(out)
    preds, confidences, submission = {}, {}, {}
    for rec in records:
        raw = raws[rec.image_id]
        cells = postprocess(raw, thresholds.for_labels(raw.labels.numpy(), class_names))
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
    out = Path(out)
    cfg = load_config(out / "config.yaml")
    records, class_names = cv_records(oof_data_path(out), cfg)
    fold_of = read_folds_csv(out / "folds.csv")
    records = [r for r in records if r.image_id in fold_of]
    return score_oof(out, records, class_names, fold_of, cfg, progress=progress)
