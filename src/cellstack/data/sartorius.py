"""The Sartorius (Kaggle) layout: ``DIR/train.csv`` + ``DIR/train/{id}.png``, and its
preparation (:func:`prepare_sartorius`, into :mod:`cellstack.data.prepare`'s folder).

``train.csv`` has one row per cell with columns ``id, annotation, width, height,
cell_type, plate_time, sample_date, sample_id, elapsed_timedelta``; ``annotation`` is a
Kaggle RLE (see :mod:`cellstack.data.rle`). Predictions are written as
``submission.csv`` with columns ``id,predicted``: one row per predicted cell, and one
row with an empty ``predicted`` for an image with no cell.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from cellstack.data.limits import check_id, check_image_size
from cellstack.data.prepare import (
    PrepareReport,
    Problem,
    begin,
    check_image,
    fingerprint_of,
    sparse_rows,
)
from cellstack.data.records import ImageRecord
from cellstack.data.rle import parse_runs
from cellstack.errors import DataError
from cellstack.fileio import atomic_write, open_text

TRAIN_COLUMNS = (
    "id",
    "annotation",
    "width",
    "height",
    "cell_type",
    "plate_time",
    "sample_date",
    "sample_id",
    "elapsed_timedelta",
)
REQUIRED_COLUMNS = ("id", "annotation", "width", "height", "cell_type")
SUBMISSION_COLUMNS = ("id", "predicted")


def _int_field(row: dict, key: str, where: str) -> int:
    try:
        value = int(row[key])
    except (TypeError, ValueError):
        raise DataError(f"{where}: {key} must be an integer, got {row[key]!r}") from None
    if value <= 0:
        raise DataError(f"{where}: {key} must be positive, got {value}")
    return value


def read_train_csv(
    csv_path: str | Path,
    images_dir: str | Path | None = None,
    *,
    validate: bool = True,
    on_bad_row: Callable[[int, str, str], None] | None = None,
) -> list[ImageRecord]:
    """Read a Sartorius ``train.csv`` into one :class:`ImageRecord` per image.

    Args:
        csv_path: the CSV file.
        images_dir: where ``{id}.png`` live; default ``train/`` beside the CSV.
        validate: parse every RLE now, so a bad row fails here with its row number.
        on_bad_row: instead of raising at the first bad row, call
            ``on_bad_row(row_number, image_id, message)`` for each one and leave it out
            (``cellstack prepare`` reports them all).

    Raises:
        DataError: missing columns, a non-integer size, an id whose rows disagree on
            size or cell type, or (with ``validate``) a malformed RLE; the message names
            the file, the row number (1 = first data row) and the image id.
    """
    csv_path = Path(csv_path)
    images_dir = Path(images_dir) if images_dir is not None else csv_path.parent / "train"
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: file not found")
    by_id: dict[str, dict] = {}
    with open_text(csv_path) as f:
        reader = csv.DictReader(f)
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{csv_path}: missing column(s) {', '.join(missing)}")
        for row_no, row in enumerate(reader, start=1):
            image_id = (row["id"] or "").strip()
            try:
                _add_row(
                    by_id,
                    row,
                    image_id,
                    f"{csv_path} row {row_no} (id {image_id or '?'})",
                    validate,
                )
            except DataError as exc:
                if on_bad_row is None:
                    raise
                on_bad_row(row_no, image_id, str(exc))
        if reader.line_num <= 1:
            raise DataError(f"{csv_path}: has a header but no rows (no annotated image)")
    return [
        ImageRecord(
            image_id=image_id,
            image_path=images_dir / f"{image_id}.png",
            height=e["height"],
            width=e["width"],
            cell_type=e["cell_type"],
            sample_id=e["sample_id"] or image_id,
            rles=tuple(e["rles"]),
        )
        for image_id, e in by_id.items()
    ]


def _add_row(by_id: dict[str, dict], row: dict, image_id: str, where: str, validate: bool) -> None:
    """Check one train.csv row and add its annotation to its image's entry."""
    if not image_id:
        raise DataError(f"{where}: empty id")
    check_id(image_id, where)
    width = _int_field(row, "width", where)
    height = _int_field(row, "height", where)
    check_image_size(height, width, where)
    cell_type = (row["cell_type"] or "").strip() or "cell"
    annotation = (row["annotation"] or "").strip()
    if validate and annotation:
        parse_runs(annotation, (height, width), where=where)
    entry = by_id.get(image_id)
    if entry is None:
        entry = by_id[image_id] = {
            "height": height,
            "width": width,
            "cell_type": cell_type,
            "sample_id": (row.get("sample_id") or "").strip(),
            "rles": [],
        }
    elif (entry["height"], entry["width"], entry["cell_type"]) != (height, width, cell_type):
        raise DataError(
            f"{where}: size/cell_type {width}x{height}/{cell_type} disagrees with "
            f"earlier rows of the same id ({entry['width']}x{entry['height']}/"
            f"{entry['cell_type']})"
        )
    if annotation:
        entry["rles"].append(annotation)


def write_train_csv(path: str | Path, rows: Iterable[Mapping[str, object]]) -> None:
    """Write ``train.csv`` rows (dicts with the :data:`TRAIN_COLUMNS`), atomically."""
    with atomic_write(path, newline="") as f:
        writer = csv.DictWriter(f, fieldnames=TRAIN_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in TRAIN_COLUMNS})


def read_submission(path: str | Path) -> dict[str, list[str]]:
    """Read ``submission.csv`` into ``{id: [rle, ...]}`` (an empty list: no cells).

    A ``train.csv`` is accepted too (its ``annotation`` column stands for
    ``predicted``), so truth can be scored against itself. RLEs are checked against
    the image size by the caller, which knows it.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    out: dict[str, list[str]] = {}
    with open_text(path) as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        mask_column = "predicted" if "predicted" in columns else "annotation"
        if "id" not in columns or mask_column not in columns:
            raise DataError(f"{path}: needs columns id,predicted (found {','.join(columns)})")
        for row_no, row in enumerate(reader, start=1):
            image_id = (row["id"] or "").strip()
            if not image_id:
                raise DataError(f"{path} row {row_no}: empty id")
            masks = out.setdefault(image_id, [])
            predicted = (row[mask_column] or "").strip()
            if predicted:
                masks.append(predicted)
    return out


def write_submission(path: str | Path, predictions: Mapping[str, Sequence[str]]) -> None:
    """Write ``{id: [rle, ...]}`` as ``submission.csv``, atomically.

    An image with no prediction gets one row with an empty ``predicted``, as Kaggle
    expects.
    """
    with atomic_write(path, newline="") as f:
        writer = csv.writer(f)
        writer.writerow(SUBMISSION_COLUMNS)
        for image_id, rles in predictions.items():
            if not rles:
                writer.writerow([image_id, ""])
            for r in rles:
                writer.writerow([image_id, r])


def fill_holes(masks: sp.csr_matrix, shape: tuple[int, int]) -> sp.csr_matrix:
    """Each instance with its holes filled (``scipy.ndimage.binary_fill_holes``)."""
    from scipy import ndimage

    w = shape[1]
    rows, cols = [], []
    for i in range(masks.shape[0]):
        idx = masks.indices[masks.indptr[i] : masks.indptr[i + 1]].astype(np.int64)
        if len(idx) == 0:
            continue
        ys, xs = np.divmod(idx, w)
        y0, x0 = ys.min(), xs.min()
        crop = np.zeros((ys.max() - y0 + 1, xs.max() - x0 + 1), dtype=bool)
        crop[ys - y0, xs - x0] = True
        fy, fx = np.nonzero(ndimage.binary_fill_holes(crop))
        rows.append(np.full(len(fy), i))
        cols.append((fy + y0) * w + fx + x0)
    return sparse_rows(rows, cols, masks.shape)


def read_corrected_foreground(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """bool[H, W]: the red channel (> 0) of a corrected-mask PNG, the true foreground."""
    from cellstack.data.images import read_image

    image = read_image(path)
    red = image[..., 0] if image.ndim == 3 else image
    if red.shape != tuple(shape):
        raise DataError(
            f"{path}: corrected mask is {red.shape[1]}x{red.shape[0]}, the image is "
            f"{shape[1]}x{shape[0]}"
        )
    return red > 0


def prepare_sartorius(
    data: str | Path,
    out: str | Path | None = None,
    *,
    holes: bool = False,
    corrected: str | Path | None = None,
    progress: bool = True,
) -> PrepareReport:
    """Prepare a Sartorius folder (``train.csv`` + ``train/``).

    Args:
        data: the competition folder (or its ``train.csv``).
        out: the prepared folder (default ``DATA/prepared``).
        holes: fill the holes of every training mask (the original's clean-up).
        corrected: a folder of ``{id}.png`` whose red channel marks the true foreground
            of those images (e.g. hengck23's clean astro masks); training masks are cut
            to it and instances left empty are dropped.

    Every row is checked; bad rows, missing or mis-sized images and unreadable
    corrected masks are listed in ``problems.csv`` and left out.
    """
    from tqdm import tqdm

    from cellstack.data.images import list_images

    data = Path(data)
    csv_path = data if data.is_file() else data / "train.csv"
    if not csv_path.is_file():
        raise DataError(f"{data}: no train.csv (expected the Sartorius competition folder)")
    out = Path(out) if out is not None else csv_path.parent / "prepared"
    corrected = Path(corrected) if corrected is not None else None
    if corrected is not None and not corrected.is_dir():
        raise DataError(f"{corrected}: corrected-mask folder not found")
    options = {"fill_holes": holes, "corrected": str(corrected.resolve()) if corrected else None}
    images_dir = csv_path.parent / "train"
    sources = [csv_path]
    if images_dir.is_dir():
        sources += list_images(images_dir)
    if corrected is not None:
        sources += list_images(corrected)
    writer = begin(out, fingerprint_of(sources, options), str(csv_path))
    if isinstance(writer, PrepareReport):
        return writer

    def bad_row(row_no: int, image_id: str, message: str) -> None:
        reason = message.split(": ", 1)[-1]
        writer.problems.append(Problem(f"{csv_path} row {row_no}", image_id, reason))

    records = read_train_csv(csv_path, on_bad_row=bad_row)
    for rec in tqdm(records, desc="preparing", unit="img", disable=not progress):
        if not check_image(rec, writer):
            continue
        masks = rec.sparse_masks()
        clean = fill_holes(masks, rec.shape) if holes else None
        png = corrected / f"{rec.image_id}.png" if corrected is not None else None
        if png is not None and png.is_file():
            try:
                fg = read_corrected_foreground(png, rec.shape)
            except DataError as exc:
                reason = str(exc).removeprefix(f"{png}: ")
                writer.problems.append(Problem(str(png), rec.image_id, reason))
                continue
            cut = (masks if clean is None else clean).multiply(sp.csr_matrix(fg.reshape(1, -1)))
            cut = cut.tocsr().astype(bool)
            clean = cut[np.diff(cut.indptr) > 0]  # instances outside the foreground go
        writer.add(rec, masks, clean)
    return writer.finish(options)
