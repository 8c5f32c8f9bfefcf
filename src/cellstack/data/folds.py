"""K-fold splits grouped by sample and stratified by cell type.

Images of one ``sample_id`` (the same well imaged over time) look alike, so they must
share a fold or validation scores leak. Within that constraint each fold gets about the
same number of images of every cell type.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cellstack.data.records import ImageRecord
from cellstack.errors import CellstackError, DataError
from cellstack.fileio import atomic_write, open_text


def grouped_stratified_folds(
    records: Sequence[ImageRecord], k: int, *, seed: int = 0
) -> dict[str, int]:
    """Assign every image a fold in ``0..k-1``.

    Groups (samples) are dealt, largest first, to the fold that has the fewest images
    of the group's cell type so far (ties: fewest images overall, then a seeded random
    order). A sample of mixed cell types counts under its majority type.

    Returns:
        ``{image_id: fold}``.

    Raises:
        CellstackError: ``k < 2`` or fewer samples than folds.
    """
    if k < 2:
        raise CellstackError(f"need at least 2 folds, got {k}")
    groups: dict[str, list[ImageRecord]] = defaultdict(list)
    for rec in records:
        groups[rec.sample_id or rec.image_id].append(rec)
    if len(groups) < k:
        raise CellstackError(f"{len(groups)} samples cannot fill {k} folds; use --k {len(groups)}")
    rng = np.random.default_rng(seed)
    names = list(groups)
    rng.shuffle(names)  # seeded order among equal-sized groups
    names.sort(key=lambda g: -len(groups[g]))
    per_type = defaultdict(lambda: np.zeros(k, dtype=np.int64))
    totals = np.zeros(k, dtype=np.int64)
    tie_break = rng.permutation(k)
    assignment = {}
    for name in names:
        members = groups[name]
        types = [r.cell_type for r in members]
        cell_type = max(set(types), key=types.count)
        counts = per_type[cell_type]
        fold = min(range(k), key=lambda f: (counts[f], totals[f], tie_break[f]))
        counts[fold] += len(members)
        totals[fold] += len(members)
        for rec in members:
            assignment[rec.image_id] = fold
    return assignment


def write_folds_csv(
    path: str | Path, records: Sequence[ImageRecord], folds: dict[str, int]
) -> None:
    """Write ``id,fold,cell_type,sample_id``, atomically."""
    with atomic_write(path, newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "fold", "cell_type", "sample_id"])
        for rec in records:
            writer.writerow([rec.image_id, folds[rec.image_id], rec.cell_type, rec.sample_id])


def read_folds_csv(path: str | Path) -> dict[str, int]:
    """``{image_id: fold}`` from a ``folds.csv`` (columns ``id,fold``; folds are
    integers >= 0, each id once).

    Raises:
        DataError: a missing column, a fold that is not such an integer, an id twice.
    """
    out: dict[str, int] = {}
    with open_text(path, "folds file") as f:
        reader = csv.DictReader(f)
        if not {"id", "fold"} <= set(reader.fieldnames or []):
            raise DataError(f"{path}: needs columns id,fold")
        for row_no, row in enumerate(reader, start=1):
            image_id, text = (row["id"] or "").strip(), (row["fold"] or "").strip()
            if not text.isdigit():
                raise DataError(
                    f"{path} row {row_no} (id {image_id}): fold {text!r} is not an integer >= 0"
                )
            if image_id in out:
                raise DataError(f"{path} row {row_no}: id {image_id!r} is listed twice")
            out[image_id] = int(text)
    return out


def folds_beside(data: str | Path) -> Path:
    """Where ``folds.csv`` of a dataset lives: in its folder, or beside its file (a
    ``train.csv`` or COCO json). ``cellstack folds`` writes it there; training, CV and
    tune read it from there."""
    data = Path(data)
    return (data if data.is_dir() else data.parent) / "folds.csv"
