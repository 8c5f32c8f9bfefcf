"""COCO json: LIVECell annotations (polygons) in, COCO results (RLE masks) out.

LIVECell ships ``livecell_coco_{train,val,test}.json`` (COCO instance annotations with
polygon segmentations) beside ``.tif`` images. Its cell type is per image; we take it
from the category of the image's annotations (the per-cell-line json files use one
category per file) or from the file-name prefix (``A172_Phase_...``).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from cellstack.data import rle
from cellstack.data.records import ImageRecord, check_id, check_image_size
from cellstack.errors import CellstackError, DataError
from cellstack.fileio import atomic_write, read_text


def _mask_utils():
    from pycocotools import mask as mask_utils

    return mask_utils


def coded_segmentation(segmentation, height: int, width: int) -> dict | None:
    """A COCO segmentation (polygons, uncompressed or compressed RLE) as pycocotools'
    compressed RLE; None for polygons with fewer than 3 points (an empty mask)."""
    mu = _mask_utils()
    if isinstance(segmentation, list):
        polys = [p for p in segmentation if len(p) >= 6]
        return mu.merge(mu.frPyObjects(polys, height, width)) if polys else None
    if isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
        return mu.frPyObjects(segmentation, height, width)
    return segmentation


def segmentation_to_mask(segmentation, height: int, width: int, *, where: str) -> np.ndarray:
    """Rasterise a COCO segmentation (polygons or RLE) to bool[H, W]."""
    try:
        coded = coded_segmentation(segmentation, height, width)
        if coded is None:
            return np.zeros((height, width), dtype=bool)
        return _mask_utils().decode(coded).astype(bool)
    except Exception as exc:
        raise DataError(f"{where}: bad segmentation ({type(exc).__name__}: {exc})") from None


def mask_to_polygons(mask: np.ndarray) -> list[list[float]]:
    """Outer contours of bool[H, W] as COCO polygons ``[x0, y0, x1, y1, ...]``.

    Coordinates are pixel centres. Rasterising polygons back is approximate at the
    boundary (that is how LIVECell's own ground truth is defined).
    """
    import cv2

    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    polys = []
    for c in contours:
        if len(c) < 3:  # COCO needs 3 points; a thin sliver becomes a tiny triangle
            x, y = c[0, 0]
            c = np.array([[[x, y]], [[x + 1, y]], [[x, y + 1]]])
        polys.append(c.reshape(-1).astype(float).tolist())
    return polys


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
    votes = Counter(categories.get(a.get("category_id")) for a in anns)
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


def read_coco_instances(
    json_path: str | Path, images_dir: str | Path | None = None
) -> list[ImageRecord]:
    """Read a COCO instance json (LIVECell) into records with Kaggle RLE masks.

    Args:
        json_path: the annotation file.
        images_dir: where the images' ``file_name`` live; default: the json's folder,
            then its ``images/`` subfolder.
    """
    json_path = Path(json_path)
    data = read_json(json_path)
    if not isinstance(data, dict):
        raise DataError(f"{json_path}: not a COCO instance file (not a json object)")
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise DataError(f"{json_path}: not a COCO instance file (no {key!r})")
    try:
        categories = {c["id"]: c["name"] for c in data["categories"]}
        anns_by_image: dict[int, list[dict]] = {}
        for ann in data["annotations"]:
            anns_by_image.setdefault(ann["image_id"], []).append(ann)
    except (KeyError, TypeError) as exc:
        raise DataError(f"{json_path}: a category or annotation lacks {exc}") from None
    base = Path(images_dir) if images_dir is not None else json_path.parent
    records = []
    for n, img in enumerate(data["images"]):
        try:
            h, w, name = int(img["height"]), int(img["width"]), str(img["file_name"])
            img["id"]
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{json_path} images[{n}]: bad or missing {exc}") from None
        where = f"{json_path} image {name}"
        check_image_size(h, w, where)
        check_id(Path(name).stem, where)
        anns = anns_by_image.get(img["id"], [])
        masks = [
            segmentation_to_mask(a["segmentation"], h, w, where=f"{where} annotation {a['id']}")
            for a in anns
        ]
        cell_type, sample_id = image_identity(img, anns, categories)
        path = base / img["file_name"]
        if not path.exists() and (base / "images" / img["file_name"]).exists():
            path = base / "images" / img["file_name"]
        records.append(
            ImageRecord(
                image_id=Path(img["file_name"]).stem,
                image_path=path,
                height=h,
                width=w,
                cell_type=cell_type,
                sample_id=sample_id,
                rles=tuple(rle.encode(m) for m in masks if m.any()),
            )
        )
    return records


def encode_coco_rle(mask: np.ndarray) -> dict:
    """COCO compressed RLE of bool[H, W] with a json-ready ``counts`` string."""
    coded = _mask_utils().encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in coded["size"]], "counts": coded["counts"].decode("ascii")}


def result_entry(
    image_id: str, mask: np.ndarray, score: float, category_id: int, **extra: object
) -> dict:
    """One COCO results entry (json-ready) for bool[H, W] ``mask``: compressed RLE,
    ``bbox`` [x, y, w, h] of the mask's pixels, ``score``, and ``extra`` fields."""
    seg = encode_coco_rle(mask)
    bbox = _mask_utils().toBbox({"size": seg["size"], "counts": seg["counts"].encode()})
    return {
        "image_id": image_id,
        "category_id": int(category_id),
        "segmentation": seg,
        "bbox": [float(v) for v in bbox.tolist()],
        "score": float(score),
        **extra,
    }


def write_json(path: str | Path, obj: object) -> None:
    """Write ``obj`` as json, atomically."""
    with atomic_write(path) as f:
        json.dump(obj, f)


def write_coco_instances(
    path: str | Path,
    images: Sequence[Mapping],
    masks_per_image: Sequence[Sequence[np.ndarray]],
    cell_types: Sequence[str],
    categories: Sequence[str],
) -> None:
    """Write a LIVECell-style COCO instance json with polygon segmentations.

    Args:
        images: ``{"id": int, "file_name": str, "width": int, "height": int}`` each.
        masks_per_image: bool[H, W] masks per image.
        cell_types: the category name of each image's cells.
        categories: every category name, in id order (ids start at 1).
    """
    cat_id = {name: i + 1 for i, name in enumerate(categories)}
    annotations = []
    for img, masks, cell_type in zip(images, masks_per_image, cell_types, strict=True):
        for mask in masks:
            ys, xs = np.nonzero(mask)
            if len(xs) == 0:
                continue
            x0, y0 = int(xs.min()), int(ys.min())
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": img["id"],
                    "category_id": cat_id[cell_type],
                    "segmentation": mask_to_polygons(mask),
                    "area": float(mask.sum()),
                    "bbox": [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1],
                    "iscrowd": 0,
                }
            )
    write_json(
        path,
        {
            "images": list(images),
            "annotations": annotations,
            "categories": [{"id": i, "name": n} for n, i in cat_id.items()],
        },
    )


def read_json(path: str | Path):
    """Parse a json file (UTF-8) with one-line errors naming it."""
    try:
        return json.loads(read_text(path, "json file"))
    except CellstackError as exc:
        raise DataError(str(exc)) from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid json ({exc})") from None
