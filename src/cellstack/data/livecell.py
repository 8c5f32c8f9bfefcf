"""LIVECell: its COCO instance files read, by ``cellstack prepare`` and as data.

LIVECell ships ``livecell_coco_{train,val,test}.json`` (COCO instance annotations with
polygon segmentations) beside ``.tif`` images. Its cell type is per image; we take it
from the category of the image's annotations (the per-cell-line json files use one
category per file) or from the file-name prefix (``A172_Phase_...``).

One streamed reader of the json (:func:`read_instances_header` and
:func:`image_annotations`: memory holds one image's annotations, never the file's), one
decoder of a segmentation (:func:`segmentation_pixels`, which scans only the object's
box) and one rule for finding an image file by name (:func:`image_files`)
serve both
:func:`read_coco_instances` (a json given as data: strict, the first bad entry is the
error) and :func:`prepare_livecell` (a dataset folder: lenient, bad entries are listed
in ``problems.csv`` and left out).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from cellstack.data import rle
from cellstack.data.coco import check_json_depth, coded_segmentation
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
from cellstack.errors import DataError

LIVECELL_SPLITS = ("train", "val", "test")
#: Image file suffixes LIVECell folders hold.
IMAGE_SUFFIXES = (".tif", ".tiff", ".png")

# LIVECell's file names: {cell line}_Phase_{well}_{position}_{time}_{crop}.tif; the
# images of one well over time share a sample (fold groups must not split them).
_LIVECELL_NAME = re.compile(r"^(?P<well>.+)_\d+d\d+h\d+m_\d+$")


def image_identity(img: dict, anns: list[dict], categories: dict) -> tuple[str, str]:
    """``(cell_type, sample_id)`` of a COCO image entry: the one rule that reading a
    COCO file and preparing LIVECell share.

    The cell type is the image's most common annotation category, lower-cased, unless
    that is a generic ``cell`` (LIVECell's all-lines json), then the file-name prefix
    (``A172_...`` -> ``a172``). The sample (the group folds keep together) is the
    entry's ``sample_id`` when it has one, else the LIVECell well
    (:func:`livecell_sample_id`).
    """
    # An annotation's category_id that is no id (a list, a mapping) names no category.
    votes = Counter(
        categories.get(a.get("category_id")) if _is_id(a.get("category_id")) else None for a in anns
    )
    category = votes.most_common(1)[0][0] if votes else None
    name = Path(str(img["file_name"])).name
    sample = img.get("sample_id")
    return livecell_cell_type(name, category), str(sample) if sample else livecell_sample_id(name)


def livecell_cell_type(file_name: str, category: str | None) -> str:
    """A LIVECell image's cell line: its annotations' category, unless that is the
    generic ``cell`` of the all-lines json, then the file-name prefix (``A172_...``)."""
    if category and category.lower() not in ("cell", "cells"):
        return category.lower()
    return Path(file_name).name.split("_")[0].lower()


def livecell_sample_id(file_name: str) -> str:
    """The well of a LIVECell image (its name without time point and crop)."""
    stem = Path(file_name).stem
    m = _LIVECELL_NAME.match(stem)
    return m.group("well") if m else stem


@dataclass(frozen=True)
class InstancesHeader:
    """A COCO instance file's images and categories, read without its annotations.

    Attributes:
        path: the file.
        images: its ``images`` entries, in order.
        categories: ``{category id: name}``.
    """

    path: Path
    images: list
    categories: dict

    @cached_property
    def positions_of(self) -> dict:
        """``{image id: [positions of the entries with that id]}`` (entries without an
        id left out)."""
        positions: dict = {}
        for n, img in enumerate(self.images):
            if isinstance(img, dict) and "id" in img:
                positions.setdefault(_key(img["id"]), []).append(n)
        return positions

    def shared_id(self, n: int) -> str | None:
        """Why ``images[n]`` cannot be read: None, or a reason naming the other entries
        that share its ``id`` (an annotation names its image by id alone, so theirs
        cannot be told apart)."""
        img = self.images[n]
        if not isinstance(img, dict) or "id" not in img:
            return None
        same = self.positions_of[_key(img["id"])]
        if len(same) < 2:
            return None
        return (
            f"image id {img['id']!r} is shared by images{same}: their annotations cannot be "
            "told apart"
        )


def _json_error(path: Path, exc: Exception) -> DataError:
    """The one-line error of a file the streamed parser rejects: not UTF-8 (said as
    :func:`~cellstack.fileio.read_text` says it), else not valid json, with the first
    line of the parser's message."""
    from cellstack.errors import CellstackError
    from cellstack.fileio import read_text

    try:
        read_text(path, "json file")  # only on this error path: is it text at all?
    except CellstackError as text_error:
        return DataError(str(text_error))
    arg = exc.args[0] if exc.args else exc
    message = arg.decode("utf-8", "replace") if isinstance(arg, bytes) else str(arg)
    return DataError(f"{path}: not valid json ({message.strip().splitlines()[0]})")


def read_instances_header(path: str | Path) -> InstancesHeader:
    """The images and categories of a COCO instance file, read in one streamed pass
    that builds nothing of its annotations (LIVECell's train file holds over a million
    polygons). A file that is not a COCO instance file is a one-line DataError."""
    import ijson
    from ijson.common import ObjectBuilder

    path = Path(path)
    keys: set[str] = set()
    kinds: dict[str, str] = {}  # top-level key -> the first event of its value
    found: dict[str, list] = {"images": [], "categories": []}
    builder, building = None, ""
    try:
        with _open_json(path) as f:
            check_json_depth(path)  # before the parser, whose memory grows with the depth
            for k, (prefix, event, value) in enumerate(ijson.parse(f, use_float=True)):
                if k == 0 and (prefix, event) != ("", "start_map"):
                    raise DataError(f"{path}: not a COCO instance file (not a json object)")
                if prefix == "" and event == "map_key":
                    keys.add(value)
                elif prefix in keys and prefix not in kinds:
                    kinds[prefix] = event
                elif builder is None and prefix in ("images.item", "categories.item"):
                    builder, building = ObjectBuilder(), prefix.split(".")[0]
                    if event not in ("start_map", "start_array"):  # a scalar item
                        builder.event(event, value)
                        found[building].append(builder.value)
                        builder = None
                        continue
                if builder is not None:
                    builder.event(event, value)
                    if prefix == f"{building}.item" and event in ("end_map", "end_array"):
                        found[building].append(builder.value)
                        builder = None
    except (ijson.JSONError, UnicodeDecodeError) as exc:
        raise _json_error(path, exc) from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read the json file ({exc.strerror or exc})") from None
    for key in ("images", "annotations", "categories"):
        if key not in keys:
            raise DataError(f"{path}: not a COCO instance file (no {key!r})")
    for key in ("images", "annotations", "categories"):
        if kinds.get(key) != "start_array":
            raise DataError(f"{path}: not a COCO instance file ({key!r} is not a list)")
    categories = {}
    for k, c in enumerate(found["categories"]):
        if not isinstance(c, dict) or "id" not in c or "name" not in c:
            raise DataError(f"{path}: categories[{k}] is not a mapping with an id and a name")
        if not _is_id(c["id"]) or not isinstance(c["name"], str):
            raise DataError(
                f"{path}: categories[{k}]: the id must be a number or text and the name a "
                f"text, got id {c['id']!r}, name {c['name']!r}"
            )
        categories[c["id"]] = c["name"]
    return InstancesHeader(path, found["images"], categories)


def _is_id(value: object) -> bool:
    """An id COCO files use: an integer or a text (not a bool, list or mapping)."""
    return isinstance(value, int | str) and not isinstance(value, bool)


def _open_json(path: Path):
    """``path`` opened for ijson (bytes), past a UTF-8 byte-order mark.

    Raises:
        DataError: no such file.
    """
    if not path.is_file():
        raise DataError(f"{path}: json file not found")
    f = open(path, "rb")
    if f.read(3) != b"\xef\xbb\xbf":
        f.seek(0)
    return f


def image_annotations(header: InstancesHeader):
    """``(position, image entry, its annotations)`` for every image of ``header``, in
    order: a generator whose memory holds one image's annotations, never the file's
    (LIVECell's train file holds over a million polygons, hundreds per image).

    One streamed pass copies every annotation of a listed image, as one json line, into
    a temporary file, noting the line's offset and the positions of the images it
    belongs to (int64 pairs, 16 bytes an annotation); each image then reads back its
    own lines, in file order. Annotations of images the file does not list are left
    out, as the whole-file reader does; an entry without an ``id`` gets none (its own
    check names what it lacks).
    """
    import json
    import tempfile
    from array import array

    import ijson

    positions_of = header.positions_of
    with tempfile.TemporaryFile("w+b", prefix="cellstack-prepare-") as lines:
        owners, offsets = array("q"), array("q")  # 8 bytes each, not a Python int
        try:
            with _open_json(header.path) as f:
                for ann in ijson.items(f, "annotations.item", use_float=True):
                    try:
                        owned = positions_of.get(_key(ann["image_id"]), ())
                    except (KeyError, TypeError) as exc:
                        raise DataError(
                            f"{header.path}: a category or annotation lacks {exc}"
                        ) from None
                    if owned:
                        offset = lines.tell()
                        lines.write(json.dumps(ann).encode() + b"\n")
                        owners.extend(owned)
                        offsets.extend([offset] * len(owned))
        except (ijson.JSONError, UnicodeDecodeError) as exc:
            raise _json_error(header.path, exc) from None
        owner = np.frombuffer(owners, dtype=np.int64)
        offset = np.frombuffer(offsets, dtype=np.int64)
        order = np.argsort(owner, kind="stable")  # by image, file order within one
        owner, offset = owner[order], offset[order]
        bounds = np.searchsorted(owner, np.arange(len(header.images) + 1))
        for n, img in enumerate(header.images):
            anns = []
            for at in offset[bounds[n] : bounds[n + 1]]:
                lines.seek(int(at))
                anns.append(json.loads(lines.readline()))
            yield n, img, anns


def _key(image_id: object) -> object:
    """An image id as a dict key (json ids are ints or strings; lists cannot be keys)."""
    return image_id if isinstance(image_id, int | str | float) else repr(image_id)


def image_entry(img: object, where: str) -> tuple[str, object, int, int]:
    """``(file name, id, height, width)`` of an ``images`` entry, checked.

    Raises:
        DataError: ``where: bad or missing KEY`` or an image-size / name problem.
    """
    try:
        name = Path(str(img["file_name"])).name
        entry_id = img["id"]
        height, width = int(img["height"]), int(img["width"])
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{where}: bad or missing {exc}") from None
    check_image_size(height, width, f"{where} ({name})")
    check_id(Path(name).stem, f"{where} ({name})")
    return name, entry_id, height, width


def segmentation_pixels(segmentation, height: int, width: int, *, where: str) -> np.ndarray:
    """Flat row-major indices int64[K] (ascending, K >= 1) of a COCO segmentation
    (polygons or RLE) in a ``height`` x ``width`` image. Only the object's box is
    scanned: a whole-image scan would dominate for small cells.

    Raises:
        DataError: ``where: bad segmentation (reason)``: what
            :func:`~cellstack.data.coco.coded_segmentation` refuses, or a segmentation
            that covers no pixel of the image (a line, a point, wholly outside).
    """
    from pycocotools import mask as mu

    if segmentation is None:
        raise DataError(f"{where}: bad segmentation (none given)")
    try:
        coded = coded_segmentation(segmentation, height, width)
        x, y, w, h = (int(v) for v in mu.toBbox(coded))
        crop = mu.decode(coded)[y : y + h + 1, x : x + w + 1]
    except DataError as exc:
        raise DataError(f"{where}: bad segmentation ({exc})") from None
    except Exception as exc:  # pycocotools raises bare TypeErrors etc.
        raise DataError(f"{where}: bad segmentation ({type(exc).__name__}: {exc})") from None
    ys, xs = np.nonzero(crop)
    if len(ys) == 0:
        raise DataError(
            f"{where}: bad segmentation (covers no pixel of the {width}x{height} image)"
        )
    return np.sort((ys + y).astype(np.int64) * width + xs + x)


def image_files(root: Path) -> dict[str, Path]:
    """``{file name: path}`` of every image file under ``root`` (the first by sorted
    path where two share a name): how an entry's ``file_name`` is found."""
    found: dict[str, Path] = {}
    for p in sorted(root.rglob("*")):
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
            found.setdefault(p.name, p)
    return found


def read_coco_instances(
    json_path: str | Path, images_dir: str | Path | None = None
) -> list[ImageRecord]:
    """Read a COCO instance json (LIVECell) into records with Kaggle RLE masks.

    Args:
        json_path: the annotation file.
        images_dir: where the images' ``file_name`` are found, in any subfolder
            (:func:`image_files`); default: the json's folder.
    """
    coco = read_instances_header(json_path)
    base = Path(images_dir) if images_dir is not None else coco.path.parent
    files = image_files(base)
    records = []
    for n, img, anns in image_annotations(coco):
        name, _, h, w = image_entry(img, f"{coco.path} images[{n}]")
        where = f"{coco.path} image {name}"
        shared = coco.shared_id(n)
        if shared:
            raise DataError(f"{coco.path} images[{n}]: {shared}")
        cell_type, sample_id = image_identity(img, anns, coco.categories)
        rles = []
        for a in anns:
            pixels = segmentation_pixels(
                a.get("segmentation"), h, w, where=f"{where} annotation {a.get('id')}"
            )
            rles.append(rle.encode_pixels(pixels))
        records.append(
            ImageRecord(
                image_id=Path(name).stem,
                image_path=files.get(name, base / str(img["file_name"])),
                height=h,
                width=w,
                cell_type=cell_type,
                sample_id=sample_id,
                rles=tuple(rles),
            )
        )
    return records


def find_livecell_files(root: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    """``({split: json}, {image file name: path})`` found anywhere under ``root``."""
    jsons = {}
    for split in LIVECELL_SPLITS:
        found = sorted(root.rglob(f"livecell_coco_{split}.json"))
        if found:
            jsons[split] = found[0]
    if not jsons:
        raise DataError(
            f"{root}: no livecell_coco_{{train,val,test}}.json found (expected the "
            "LIVECell_dataset_2021 folder)"
        )
    return jsons, image_files(root)


def prepare_livecell(
    root: str | Path,
    out: str | Path,
    *,
    splits: Sequence[str] = LIVECELL_SPLITS,
    progress: bool = True,
) -> PrepareReport:
    """Prepare LIVECell (``livecell_coco_{train,val,test}.json`` + tif images).

    Every cell line is kept; an image's class is its cell line (lower-case, e.g.
    ``a172``, ``shsy5y``) and its ``split`` the json it came from, so a config can
    train on some splits and validate on another (``data.splits``, ``data.val_split``).
    Bad annotations and missing images are listed in ``problems.csv`` and left out.
    """
    from tqdm import tqdm

    root, out = Path(root), Path(out)
    if not root.is_dir():
        raise DataError(f"{root}: LIVECell folder not found")
    jsons, images = find_livecell_files(root)
    jsons = {s: p for s, p in jsons.items() if s in splits}
    options = {"splits": sorted(jsons)}
    writer = begin(out, fingerprint_of([*jsons.values(), *images.values()], options), str(root))
    if isinstance(writer, PrepareReport):
        return writer
    for split, json_path in jsons.items():
        coco = read_instances_header(json_path)
        for n, img, anns in tqdm(
            image_annotations(coco),
            total=len(coco.images),
            desc=f"preparing {split}",
            unit="img",
            disable=not progress,
        ):
            where = f"{json_path} images[{n}]"
            try:
                name, entry_id, height, width = image_entry(img, where)
            except DataError as exc:
                writer.problems.append(Problem(where, "", str(exc).split(": ", 1)[-1]))
                continue
            image_id = Path(name).stem
            shared = coco.shared_id(n)
            if shared:
                writer.problems.append(Problem(where, image_id, shared))
                continue
            cell_type, sample_id = image_identity(img, anns, coco.categories)
            if name not in images:
                where = f"{json_path} image {entry_id}"
                writer.problems.append(Problem(where, image_id, f"image file {name} not found"))
                continue
            rec = ImageRecord(
                image_id=image_id,
                image_path=images[name],
                height=height,
                width=width,
                cell_type=cell_type,
                sample_id=sample_id,
            )
            if not check_image(rec, writer):
                continue
            rows, cols = [], []
            for ann in anns:
                where = f"{json_path} annotation {ann.get('id')}"
                try:
                    pixels = segmentation_pixels(
                        ann.get("segmentation"), rec.height, rec.width, where=where
                    )
                except DataError as exc:
                    writer.problems.append(Problem(where, image_id, str(exc).split(": ", 1)[-1]))
                    continue
                rows.append(np.full(len(pixels), len(rows)))
                cols.append(pixels)
            masks = sparse_rows(rows, cols, (len(rows), rec.height * rec.width))
            writer.add(rec, masks, split=split)
    return writer.finish(options)
