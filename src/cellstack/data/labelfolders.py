"""The label-image layouts, as Cellpose and StarDist users keep their data.

- ``DIR/images/{stem}.png|tif`` with ``DIR/labels/{stem}.tif|png`` (or ``DIR/masks/``,
  StarDist's habit): a label image of the same size, integer instance ids,
  0 = background.
- Cellpose's flat folder: ``DIR/{stem}.tif`` beside ``DIR/{stem}_masks.tif`` (or
  ``_cp_masks.png``, what Cellpose writes for its own predictions), or beside
  ``DIR/{stem}_seg.npy``, what Cellpose's GUI saves (read without running code:
  :mod:`~cellstack.data.segnpy`): masks drawn or corrected there are training data.

Label files may carry the ``_masks`` / ``_cp_masks`` suffix in every layout. An
optional ``DIR/cell_types.csv`` with columns ``id,cell_type`` names each image's type.
"""

from __future__ import annotations

import csv
from pathlib import Path

from cellstack.data.images import IMAGE_SUFFIXES, image_size, list_images
from cellstack.data.labels import LABEL_SUFFIXES
from cellstack.data.records import ImageRecord
from cellstack.data.segnpy import SEG_SUFFIX
from cellstack.errors import DataError

#: Folders of label images beside ``images/`` (ours, StarDist's).
LABEL_DIRS = ("labels", "masks")


#: What Cellpose appends to an image's stem for its masks (training, predictions).
MASK_STEM_SUFFIXES = ("", "_masks", "_cp_masks")


def find_label(labels_dir: Path, stem: str, *, masks_only: bool = False) -> Path | None:
    """The label file for ``stem`` in ``labels_dir``: ``{stem}``, ``{stem}_masks`` or
    ``{stem}_cp_masks`` with any of :data:`LABEL_SUFFIXES`, or Cellpose's GUI file
    ``{stem}_seg.npy``; not the bare ``{stem}`` with ``masks_only`` (a folder where the
    images themselves lie too).

    Raises:
        DataError: two of them exist (which one is the truth would be a guess).
    """
    found = [
        labels_dir / f"{stem}{tail}{suffix}"
        for tail in MASK_STEM_SUFFIXES[1 if masks_only else 0 :]
        for suffix in LABEL_SUFFIXES
        if (labels_dir / f"{stem}{tail}{suffix}").is_file()
    ]
    if (labels_dir / f"{stem}{SEG_SUFFIX}").is_file():
        found.append(labels_dir / f"{stem}{SEG_SUFFIX}")
    if len(found) > 1:
        raise DataError(
            f"{labels_dir}: {found[0].name} and {found[1].name} both label image {stem!r}; keep one"
        )
    return found[0] if found else None


def is_mask_name(stem: str) -> bool:
    """Whether a file stem names a Cellpose mask (``*_masks``, ``*_cp_masks``)."""
    return any(stem.endswith(tail) for tail in MASK_STEM_SUFFIXES if tail)


def has_mask_files(folder: Path) -> bool:
    """Whether ``folder`` holds Cellpose-named mask files (``*_masks``, ``*_cp_masks``,
    the GUI's ``*_seg.npy``)."""
    return folder.is_dir() and any(
        (p.suffix.lower() in LABEL_SUFFIXES and is_mask_name(p.stem)) or p.name.endswith(SEG_SUFFIX)
        for p in folder.iterdir()
    )


def label_folder(root: Path) -> Path | None:
    """The folder of label images of the dataset at ``root``: ``labels/`` or
    ``masks/`` beside ``images/``, or ``root`` itself when it is a flat Cellpose folder
    (images and their ``_masks`` files side by side); None when it is none of these."""
    if (root / "images").is_dir():
        dirs = [root / d for d in LABEL_DIRS if (root / d).is_dir()]
        if len(dirs) > 1:
            raise DataError(f"{root}: has both labels/ and masks/; keep one")
        return dirs[0] if dirs else root / "labels"
    return root if has_mask_files(root) else None


def read_cell_types(path: Path) -> dict[str, str]:
    """``{id: cell_type}`` from a ``cell_types.csv`` (columns ``id,cell_type``)."""
    from cellstack.fileio import open_text

    with open_text(path) as f:
        reader = csv.DictReader(f)
        if not {"id", "cell_type"} <= set(reader.fieldnames or []):
            raise DataError(f"{path}: needs columns id,cell_type")
        out: dict[str, str] = {}
        for row_no, row in enumerate(reader, start=1):
            image_id = (row["id"] or "").strip()
            if image_id in out:
                raise DataError(f"{path} row {row_no}: id {image_id!r} is listed twice")
            out[image_id] = (row["cell_type"] or "").strip()
        return out


def read_label_dir(root: str | Path, *, require_labels: bool = True) -> list[ImageRecord]:
    """Read a label-image dataset (see the module docstring) into records.

    Raises:
        DataError: no images, or (with ``require_labels``) an image without a label.
    """
    root = Path(root)
    labels_dir = label_folder(root)
    if labels_dir is None:
        raise DataError(f"{root}: no images/ folder and no Cellpose *_masks or *_seg.npy files")
    image_dir = root / "images" if (root / "images").is_dir() else root
    listed = list_images(image_dir)
    images = [p for p in listed if not is_mask_name(p.stem)]
    if image_dir != labels_dir:  # images/ beside labels/: a *_masks file there is misplaced
        stray = next((p for p in listed if is_mask_name(p.stem)), None)
        if stray is not None:
            raise DataError(
                f"{stray}: a mask file among the images; move it to {labels_dir} (or rename "
                "it if it is an image)"
            )
    if not images:
        raise DataError(f"{image_dir}: no images ({', '.join(IMAGE_SUFFIXES)})")
    types_csv = root / "cell_types.csv"
    cell_types = read_cell_types(types_csv) if types_csv.is_file() else {}
    records = []
    for image_path in images:
        label_path = find_label(labels_dir, image_path.stem, masks_only=labels_dir == image_dir)
        if label_path is None and require_labels:
            raise DataError(
                f"{image_path}: no label image {labels_dir / image_path.stem}.tif "
                "(or _masks.tif, .png)"
            )
        h, w = image_size(image_path)
        records.append(
            ImageRecord(
                image_id=image_path.stem,
                image_path=image_path,
                height=h,
                width=w,
                cell_type=cell_types.get(image_path.stem, "cell"),
                sample_id=image_path.stem,
                label_path=label_path,
            )
        )
    return records
