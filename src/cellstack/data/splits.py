"""Which records a run trains and validates on: splits, folds and class names."""

from __future__ import annotations

from pathlib import Path

from cellstack.config import Config
from cellstack.data.folds import folds_beside, grouped_stratified_folds, read_folds_csv
from cellstack.data.records import ImageRecord
from cellstack.errors import CellstackError


def assign_folds(records: list[ImageRecord], data: Path, k: int, seed: int) -> dict[str, int]:
    """``{image_id: fold}``: from ``folds.csv`` beside the data when present
    (``cellstack folds``), else made by :func:`grouped_stratified_folds`."""
    path = folds_beside(data)
    if path.is_file():
        folds = read_folds_csv(path)
        missing = [r.image_id for r in records if r.image_id not in folds]
        if missing:
            raise CellstackError(f"{path}: no fold for image {missing[0]}")
        return folds
    return grouped_stratified_folds(records, k, seed=seed)


def class_names_of(records: list[ImageRecord]) -> list[str]:
    """The classes a run learns: every cell type of its data (all splits), sorted."""
    return sorted({r.cell_type for r in records})


def training_pool(records: list[ImageRecord], cfg: Config, data: Path) -> list[ImageRecord]:
    """The records of ``data.splits`` (all records when empty), which folds divide.

    Raises:
        CellstackError: ``data.splits`` or ``data.val_split`` names a split the data
            does not have.
    """
    d = cfg.data
    available = sorted({r.split for r in records})
    for name in (*d.splits, *([d.val_split] if d.val_split else [])):
        if name not in available:
            raise CellstackError(
                f"{data}: no split {name!r} (it has {', '.join(repr(a) for a in available)}); "
                "check data.splits / data.val_split"
            )
    return [r for r in records if r.split in d.splits] if d.splits else list(records)


def split_records(
    records: list[ImageRecord], cfg: Config, data: Path
) -> tuple[list[ImageRecord], list[ImageRecord], dict[str, int] | None]:
    """``(train, val, folds)`` as the config asks.

    ``data.splits`` keeps the records of those splits for training; ``data.val_split``
    validates on a split, ``data.fold`` on a fold (:func:`assign_folds`; the folds
    are returned so the run can record them). Training records carry their cleaned
    masks (:meth:`ImageRecord.for_training`), validation keeps the raw ones.
    """
    d = cfg.data
    pool = training_pool(records, cfg, data)
    folds = None
    if d.val_split is not None:
        val = [r for r in records if r.split == d.val_split]
        train = [r for r in pool if r.split != d.val_split]
    elif d.fold is not None:
        folds = assign_folds(pool, data, d.folds, cfg.train.seed)
        train = [r for r in pool if folds[r.image_id] != d.fold]
        val = [r for r in pool if folds[r.image_id] == d.fold]
        if not val:
            raise CellstackError(f"fold {d.fold} has no validation images")
    else:
        train, val = pool, []
    if not train:
        raise CellstackError(f"{data}: the config leaves no training images")
    return [r.for_training() for r in train], val, folds


def cv_records(data: Path, cfg: Config) -> tuple[list[ImageRecord], tuple[str, ...]]:
    """The records CV splits (those of ``data.splits``) and the class names, which the
    trainer takes from every record of the data."""
    from cellstack.data.layouts import load_dataset

    records = load_dataset(data)
    return training_pool(records, cfg, data), tuple(class_names_of(records))
