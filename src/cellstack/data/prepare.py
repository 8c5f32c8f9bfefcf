"""``cellstack prepare``: read a dataset once, check it, cache its masks compactly.

A prepared dataset is a folder:

- ``prepared.json``: what was prepared from what (a fingerprint of every source file:
  annotations, images, corrected masks, and the options, and one of the files written
  here), written last; when both still match, preparing again returns at once;
- ``records.csv``: one row per image (``image_id, image_path, height, width,
  cell_type, sample_id, split, instances, masks, train_masks``);
- ``masks/{image_id}.npz``: the raw instance masks (:mod:`cellstack.data.maskcache`);
- ``masks_clean/{image_id}.npz``: the cleaned masks training uses (Sartorius with
  ``fill_holes`` or ``corrected``); validation and scoring keep the raw ones, as the
  original did;
- ``problems.csv``: every bad row, annotation or image, with its id and the reason;
  those are left out, the rest is prepared.

Any command that takes data (``train``, ``cv``, ``evaluate``, ``tune``) accepts the
folder. Images are referenced, not copied. This module owns the format (its reader and
:class:`Writer`); each source format prepares into it from its own module
(:func:`cellstack.data.sartorius.prepare_sartorius`,
:func:`cellstack.data.livecell.prepare_livecell`).
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from cellstack.data.limits import check_image_size
from cellstack.data.maskcache import save_masks
from cellstack.data.records import ImageRecord
from cellstack.errors import CellstackError, DataError
from cellstack.fileio import atomic_write, check_name, child, open_text, remove_partials

MANIFEST = "prepared.json"
RECORDS = "records.csv"
PROBLEMS = "problems.csv"
FORMAT = "cellstack-prepared-1"
# Written first into a folder prepare owns; a folder without it (or a manifest) that
# holds anything is the user's and is refused, since prepare rewrites masks/ there.
OWNER = ".cellstack-prepared"
RECORD_COLUMNS = (
    "image_id",
    "image_path",
    "height",
    "width",
    "cell_type",
    "sample_id",
    "split",
    "instances",
    "masks",
    "train_masks",
)


@dataclass(frozen=True)
class Problem:
    """A part of the source that was left out.

    Attributes:
        where: the file and row or annotation (``train.csv row 12``).
        image_id: the image it belongs to ("" when unknown).
        reason: what is wrong, in one line.
    """

    where: str
    image_id: str
    reason: str


@dataclass(frozen=True)
class PrepareReport:
    """What ``prepare`` did: counts per split and cell type, and the problems found."""

    out: Path
    n_images: int
    n_instances: int
    per_type: dict[str, int]
    per_split: dict[str, int]
    problems: tuple[Problem, ...]
    cached: bool

    def summary(self) -> str:
        types = ", ".join(f"{k} {v}" for k, v in sorted(self.per_type.items()))
        splits = ", ".join(f"{k} {v}" for k, v in self.per_split.items() if k)
        head = "up to date (nothing to do): " if self.cached else "prepared "
        lines = [
            f"{head}{self.n_images} images, {self.n_instances} instances in {self.out} "
            f"({types}{'; ' + splits if splits else ''})"
        ]
        if self.problems:
            lines.append(
                f"{len(self.problems)} problem(s) left out, listed in {self.out / PROBLEMS}:"
            )
            lines += [
                f"  {p.where} (id {p.image_id or '?'}): {p.reason}" for p in self.problems[:10]
            ]
            if len(self.problems) > 10:
                lines.append(f"  ... and {len(self.problems) - 10} more")
        return "\n".join(lines)


# ------------------------------------------------------------------ reading prepared data


def is_prepared(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def read_prepared(path: str | Path) -> list[ImageRecord]:
    """The records of a prepared folder (raw masks; ``train_mask_path`` when cleaned)."""
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path / MANIFEST}: unreadable ({exc})") from None
    if manifest.get("format") != FORMAT:
        raise DataError(
            f"{path / MANIFEST}: format {manifest.get('format')!r} is not {FORMAT}; "
            "run cellstack prepare again"
        )
    records = []
    with open_text(path / RECORDS, "records file") as f:
        reader = csv.DictReader(f)
        missing = [c for c in RECORD_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(
                f"{path / RECORDS}: missing column(s) {', '.join(missing)}; "
                "run cellstack prepare again"
            )
        for row_no, row in enumerate(reader, start=1):
            where = f"{path / RECORDS} row {row_no}"
            try:
                image_id = check_name(row["image_id"] or "", where)
                height, width = int(row["height"]), int(row["width"])
                check_image_size(height, width, where)
                records.append(
                    ImageRecord(
                        image_id=image_id,
                        image_path=Path(row["image_path"]),
                        height=height,
                        width=width,
                        cell_type=row["cell_type"],
                        sample_id=row["sample_id"],
                        mask_path=child(path, row["masks"]),
                        train_mask_path=(
                            child(path, row["train_masks"]) if row["train_masks"] else None
                        ),
                        split=row["split"],
                    )
                )
            except (TypeError, ValueError) as exc:
                if isinstance(exc, CellstackError):
                    raise DataError(str(exc)) from None
                raise DataError(f"{where}: bad value ({exc})") from None
    return records


# ------------------------------------------------------------------ caching


def fingerprint_of(files: Iterable[Path], options: dict) -> str:
    """Hash of the sources' names, sizes and modification times, and the options."""
    h = hashlib.sha256(json.dumps(options, sort_keys=True).encode())
    for p in sorted(set(files)):
        st = p.stat()
        h.update(f"{p.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def cached_report(out: Path, fingerprint: str) -> PrepareReport | None:
    try:
        manifest = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("format") != FORMAT or manifest.get("fingerprint") != fingerprint:
        return None
    # What was written must be as written: a records.csv, problems.csv or mask file
    # edited (or removed) since is prepared again, not reported "up to date".
    try:
        if manifest.get("outputs") != _outputs_fingerprint(out):
            return None
    except OSError:
        return None
    problems = []
    if (out / PROBLEMS).is_file():
        with open_text(out / PROBLEMS, "problems.csv") as f:
            problems = [Problem(r["where"], r["image_id"], r["reason"]) for r in csv.DictReader(f)]
    return PrepareReport(
        out=out,
        n_images=manifest["images"],
        n_instances=manifest["instances"],
        per_type=manifest["per_type"],
        per_split=manifest["per_split"],
        problems=tuple(problems),
        cached=True,
    )


class Writer:
    """Writes masks and rows; ``finish`` writes records, problems and the manifest last."""

    def __init__(self, out: Path, fingerprint: str, source: str) -> None:
        self.out, self.fingerprint, self.source = out, fingerprint, source
        (out / MANIFEST).unlink(missing_ok=True)
        (out / OWNER).touch()
        # No stale masks of an earlier preparation: delete the mask files its records
        # name (and nothing else), and what a killed write left behind.
        for rel in _previous_mask_files(out):
            rel.unlink(missing_ok=True)
        for sub in ("", "masks", "masks_clean"):
            remove_partials(out / sub)
        self.rows: list[dict] = []
        self.problems: list[Problem] = []
        self.ids: set[str] = set()

    def add(
        self,
        rec: ImageRecord,
        masks: sp.csr_matrix,
        clean: sp.csr_matrix | None = None,
        split: str = "",
    ) -> None:
        try:
            check_name(rec.image_id, str(rec.image_path))
        except CellstackError as exc:
            self.problems.append(Problem(str(rec.image_path), "", str(exc).split(": ", 1)[-1]))
            return
        if rec.image_id in self.ids:
            self.problems.append(
                Problem(str(rec.image_path), rec.image_id, "another image has the same id")
            )
            return
        self.ids.add(rec.image_id)
        save_masks(child(self.out, "masks", f"{rec.image_id}.npz"), masks, rec.shape)
        train_masks = ""
        if clean is not None:
            train_masks = f"masks_clean/{rec.image_id}.npz"
            save_masks(child(self.out, train_masks), clean, rec.shape)
        self.rows.append(
            {
                "image_id": rec.image_id,
                "image_path": str(Path(rec.image_path).resolve()),
                "height": rec.height,
                "width": rec.width,
                "cell_type": rec.cell_type,
                "sample_id": rec.sample_id,
                "split": split,
                "instances": masks.shape[0],
                "masks": f"masks/{rec.image_id}.npz",
                "train_masks": train_masks,
            }
        )

    def finish(self, options: dict) -> PrepareReport:
        if not self.rows:
            raise DataError(
                f"{self.source}: no usable image ({len(self.problems)} problem(s), first: "
                f"{self._first_problem()})"
            )
        with atomic_write(self.out / RECORDS, newline="") as f:
            writer = csv.DictWriter(f, fieldnames=RECORD_COLUMNS)
            writer.writeheader()
            writer.writerows(self.rows)
        with atomic_write(self.out / PROBLEMS, newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["where", "image_id", "reason"])
            writer.writerows([p.where, p.image_id, p.reason] for p in self.problems)
        per_type = dict(Counter(r["cell_type"] for r in self.rows))
        per_split = dict(Counter(r["split"] for r in self.rows))
        n_instances = sum(int(r["instances"]) for r in self.rows)
        manifest = {
            "format": FORMAT,
            "source": self.source,
            "fingerprint": self.fingerprint,
            "options": options,
            "images": len(self.rows),
            "instances": n_instances,
            "per_type": per_type,
            "per_split": per_split,
            "problems": len(self.problems),
            "outputs": _outputs_fingerprint(self.out),
        }
        with atomic_write(self.out / MANIFEST) as f:
            json.dump(manifest, f, indent=1)
        return PrepareReport(
            self.out, len(self.rows), n_instances, per_type, per_split, tuple(self.problems), False
        )

    def _first_problem(self) -> str:
        p = self.problems[0] if self.problems else None
        return f"{p.where}: {p.reason}" if p else "none"


def _outputs_fingerprint(out: Path) -> str:
    """:func:`fingerprint_of` the files a preparation wrote: its records, problems and
    every mask file its records name."""
    return fingerprint_of([out / RECORDS, out / PROBLEMS, *_previous_mask_files(out)], {})


def _previous_mask_files(out: Path) -> list[Path]:
    """The mask files an earlier preparation into ``out`` wrote (from its records)."""
    if not (out / RECORDS).is_file():
        return []
    files = []
    try:
        with open_text(out / RECORDS, "records.csv") as f:
            for row in csv.DictReader(f):
                for key in ("masks", "train_masks"):
                    rel = row.get(key) or ""
                    if rel.endswith(".npz") and rel.startswith(("masks/", "masks_clean/")):
                        files.append(child(out, rel))
    except (OSError, UnicodeDecodeError, csv.Error, CellstackError):
        return []  # unreadable: leave the files alone, new ones overwrite by name
    return files


def check_out_folder(out: Path) -> None:
    """``out`` is new, empty, or an earlier ``prepare`` output; never a user's folder."""
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()):
        if not ((out / MANIFEST).is_file() or (out / OWNER).is_file()):
            raise DataError(
                f"{out}: folder holds files that cellstack prepare did not write; "
                "choose a new or empty --out"
            )


def begin(out: Path, fingerprint: str, source: str) -> PrepareReport | Writer:
    """Start preparing into ``out``: its report when it already holds this preparation
    (the same ``fingerprint``), else a :class:`Writer` (the folder checked and made)."""
    check_out_folder(out)
    out.mkdir(parents=True, exist_ok=True)
    cached = cached_report(out, fingerprint)
    return cached if cached is not None else Writer(out, fingerprint, source)


def check_image(rec: ImageRecord, writer: Writer) -> bool:
    """Whether the image exists, decodes fully, and has the annotated size (else a
    problem): a truncated file is caught here, not in the middle of training."""
    from cellstack.data.images import read_image

    try:
        shape = read_image(rec.image_path).shape[:2]
    except DataError as exc:
        reason = str(exc).removeprefix(f"{rec.image_path}: ")
        writer.problems.append(Problem(str(rec.image_path), rec.image_id, reason))
        return False
    if shape != rec.shape:
        writer.problems.append(
            Problem(
                str(rec.image_path),
                rec.image_id,
                f"image is {shape[1]}x{shape[0]}, annotations say {rec.width}x{rec.height}",
            )
        )
        return False
    return True


def sparse_rows(
    rows: list[np.ndarray], cols: list[np.ndarray], shape: tuple[int, int]
) -> sp.csr_matrix:
    """Sparse bool masks of ``shape`` from per-mask row and column index arrays."""
    r = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    c = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    out = sp.csr_matrix((np.ones(len(r), dtype=bool), (r, c)), shape=shape)
    out.sort_indices()
    return out
