"""COCO json: segmentations (polygons, RLE) decoded, COCO results (RLE masks) and
instance files written. Reading LIVECell's instance files is :mod:`cellstack.data.
livecell`'s.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from cellstack.errors import DataError
from cellstack.fileio import atomic_write

#: Containers deeper than this are refused before a json file is parsed: a COCO file
#: needs 5 (file, annotations, annotation, polygons, polygon), and the streamed parser
#: keeps a path string per open level, so 100,000 nested brackets (200 KB) took 10 GB.
MAX_JSON_DEPTH = 32
_CHUNK = 1 << 22


def check_json_depth(path: Path, limit: int = MAX_JSON_DEPTH) -> None:
    """Refuse a json file whose arrays and objects nest deeper than ``limit``, in one
    pass over its bytes with bounded memory (4 MB at a time, about 50 MB of arrays;
    brackets inside strings do not count).

    Raises:
        DataError: ``path: json nested deeper than LIMIT levels``.
    """
    depth, in_string, backslashes = 0, False, 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            data = np.frombuffer(chunk, dtype=np.uint8)
            # A quote ends or starts a string unless an odd run of backslashes escapes it.
            quotes = np.flatnonzero(data == ord('"'))
            escaped = np.zeros(len(quotes), bool)
            slash = data == ord("\\")
            if slash.any() or backslashes:
                run = _backslash_runs(slash, backslashes)
                escaped = (quotes > 0) & (run[np.maximum(quotes - 1, 0)] % 2 == 1)
                if len(quotes) and quotes[0] == 0:
                    escaped[0] = backslashes % 2 == 1
                backslashes = int(run[-1]) if slash[-1] else 0
            real = quotes[~escaped]
            opens = np.flatnonzero((data == ord("[")) | (data == ord("{")))
            closes = np.flatnonzero((data == ord("]")) | (data == ord("}")))
            brackets = np.concatenate([opens, closes])
            step = np.concatenate([np.ones(len(opens), np.int64), -np.ones(len(closes), np.int64)])
            order = np.argsort(brackets, kind="stable")
            brackets, step = brackets[order], step[order]
            # Outside a string: an even number of real quotes before it (with the carry).
            outside = (np.searchsorted(real, brackets) + in_string) % 2 == 0
            levels = depth + np.cumsum(step[outside])
            if len(levels) and levels.max() > limit:
                raise DataError(f"{path}: json nested deeper than {limit} levels")
            depth = int(levels[-1]) if len(levels) else depth
            in_string = (in_string + len(quotes) - int(escaped.sum())) % 2 == 1


def _backslash_runs(slash: np.ndarray, carried: int) -> np.ndarray:
    """For each byte, the length of the run of backslashes ending at it (0 where it is
    not one), the run carried over from the previous chunk included."""
    idx = np.arange(len(slash), dtype=np.int32)
    last_break = np.maximum.accumulate(np.where(slash, -1, idx))
    run = np.where(slash, idx - last_break, 0)
    if carried:
        lead = slash & (last_break == -1)  # still in the run the last chunk ended with
        run = np.where(lead, run + carried, run)
    return run


def _mask_utils():
    from pycocotools import mask as mask_utils

    return mask_utils


# A polygon may run past the image (a cell cut by its border), but not by more than the
# image's own size: pycocotools rasterises a polygon's whole extent, so one vertex at 1e9
# costs minutes and gigabytes, and at 3e9 or more crashes the process (a signal).
_MARGIN = 1.0


def coded_segmentation(segmentation, height: int, width: int) -> dict:
    """A COCO segmentation (polygons, uncompressed or compressed RLE) of a
    ``height`` x ``width`` image as pycocotools' compressed RLE, checked before any C
    code sees it.

    Raises:
        DataError: a polygon that is not a list of numbers or has an odd count, fewer
            than 3 points, a coordinate that is not finite or lies beyond the image by
            more than its size; an RLE whose ``size`` is not the image's or whose
            counts are not runs that fill it (negative, truncated, a bad character,
            the wrong total); any other value. The message is the reason alone: the
            caller names the file and the annotation.
    """
    mu = _mask_utils()
    if isinstance(segmentation, list):
        if not segmentation:
            raise DataError("an empty polygon list")
        return mu.merge(
            mu.frPyObjects(_checked_polygons(segmentation, height, width), height, width)
        )
    if isinstance(segmentation, dict):
        size, counts = segmentation.get("size"), segmentation.get("counts")
        if not (isinstance(size, list) and [_plain_int(v) for v in size] == [height, width]):
            raise DataError(f"RLE size {size!r} is not the image's [{height}, {width}]")
        if isinstance(counts, list):
            if not all(_plain_int(c) is not None and c >= 0 for c in counts):
                raise DataError("RLE counts are not non-negative integers")
            runs = counts
        elif isinstance(counts, str | bytes):
            raw = counts.encode("ascii", "replace") if isinstance(counts, str) else counts
            runs = rle_string_counts(raw)
            coded = {"size": [height, width], "counts": raw}
        else:
            raise DataError(f"RLE counts of type {type(counts).__name__}")
        if sum(runs) != height * width:
            raise DataError(f"RLE runs cover {sum(runs)} pixels, not the image's {height * width}")
        if isinstance(counts, list):
            return mu.frPyObjects({"size": [height, width], "counts": counts}, height, width)
        return coded
    raise DataError(f"a segmentation of type {type(segmentation).__name__}")


def _plain_int(value: object) -> int | None:
    """``value`` if it is an int (not a bool), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _checked_polygons(polygons: list, height: int, width: int) -> list[list[float]]:
    """COCO polygons ``[[x0, y0, x1, y1, ...], ...]``, each checked (see
    :func:`coded_segmentation`)."""
    out = []
    for poly in polygons:
        if not isinstance(poly, list) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in poly
        ):
            raise DataError("a polygon is not a list of numbers")
        if len(poly) % 2:
            raise DataError(f"a polygon with an odd number of coordinates ({len(poly)})")
        if len(poly) < 6:
            raise DataError(f"a polygon of {len(poly) // 2} point(s) (3 are needed)")
        xy = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
        if not np.isfinite(xy).all():
            raise DataError("a polygon coordinate that is not finite")
        lo, hi = xy.min(axis=0), xy.max(axis=0)
        if (lo < [-_MARGIN * width, -_MARGIN * height]).any() or (
            hi > [(1 + _MARGIN) * width, (1 + _MARGIN) * height]
        ).any():
            raise DataError(
                f"a polygon reaching x {lo[0]:.6g}..{hi[0]:.6g}, y {lo[1]:.6g}..{hi[1]:.6g}: "
                f"far outside the {width}x{height} image"
            )
        out.append([float(v) for v in poly])
    return out


def rle_string_counts(counts: bytes) -> list[int]:
    """The runs of a COCO compressed RLE string (pycocotools' ``rleFrString``: 5-bit
    groups from ``'0'``, a continuation bit, a sign bit, each count after the second
    stored as the difference to the one two before).

    Raises:
        DataError: a character outside the alphabet, a truncated count or a negative run.
    """
    runs: list[int] = []
    p = 0
    while p < len(counts):
        value, shift, more = 0, 0, True
        while more:
            if p >= len(counts):
                raise DataError("a truncated RLE string")
            c = counts[p] - 48
            if not 0 <= c < 64:
                raise DataError(f"RLE string character {chr(counts[p])!r} is not in its alphabet")
            value |= (c & 0x1F) << shift
            more = bool(c & 0x20)
            p += 1
            shift += 5
            if not more and c & 0x10:
                value |= -1 << shift
        if len(runs) > 2:
            value += runs[-2]
        if value < 0:
            raise DataError("an RLE string with a negative run")
        runs.append(value)
    return runs


def mask_to_polygons(mask: np.ndarray) -> list[list[float]]:
    """Outer contours of bool[H, W] as COCO polygons ``[x0, y0, x1, y1, ...]`` that
    rasterise back to the same pixels.

    pycocotools keeps a pixel when its centre ``(x + 0.5, y + 0.5)`` lies inside the
    polygon, so a contour through the boundary pixels' centres loses half of every
    boundary pixel (IoU 0.78 on the synthetic cells). The contour is traced on the mask
    upsampled 2x instead and mapped back (``(u + 0.5) / 2``): it runs a quarter pixel
    outside each boundary centre, and the cells read back with IoU 0.9996 (holes are
    filled, as COCO's outer polygons do).
    """
    import cv2

    up = np.kron(mask.astype(np.uint8), np.ones((2, 2), np.uint8))
    contours, _ = cv2.findContours(up, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [((c.reshape(-1, 2) + 0.5) / 2).ravel().tolist() for c in contours]


def encode_coco_rle(pixels: np.ndarray, shape: tuple[int, int]) -> dict:
    """COCO compressed RLE (json-ready ``counts`` string) of the mask whose pixels are
    ``pixels`` (int64[K] flat row-major indices into ``shape`` (H, W), any order).

    The runs come from the pixel indices themselves (in COCO's column-major order), so a
    cell costs its own area, not a full H x W frame."""
    h, w = shape
    p = np.asarray(pixels, dtype=np.int64)
    if len(p):
        col = np.sort((p % w) * h + p // w)
        breaks = np.flatnonzero(np.diff(col) != 1) + 1
        starts = col[np.r_[0, breaks]]
        ends = col[np.r_[breaks - 1, len(col) - 1]] + 1
        bounds = np.concatenate([[0], np.column_stack([starts, ends]).ravel(), [h * w]])
    else:
        bounds = np.array([0, h * w])
    counts = np.diff(bounds)
    if len(counts) > 1 and counts[-1] == 0:  # no background after the last run
        counts = counts[:-1]
    coded = _mask_utils().frPyObjects({"size": [h, w], "counts": counts.tolist()}, h, w)
    return {"size": [h, w], "counts": coded["counts"].decode("ascii")}


def result_entry(
    image_id: str,
    pixels: np.ndarray,
    shape: tuple[int, int],
    score: float,
    category_id: int,
    **extra: object,
) -> dict:
    """One COCO results entry (json-ready) for the mask of ``pixels`` (int64[K] flat
    row-major indices into ``shape`` (H, W)): compressed RLE, ``bbox`` [x, y, w, h] of
    the mask's pixels ([0, 0, 0, 0] when empty), ``score`` and ``extra`` fields."""
    p = np.asarray(pixels, dtype=np.int64)
    bbox = [0.0, 0.0, 0.0, 0.0]
    if len(p):
        y, x = np.divmod(p, shape[1])
        x0, y0 = int(x.min()), int(y.min())
        bbox = [float(x0), float(y0), float(x.max() - x0 + 1), float(y.max() - y0 + 1)]
    return {
        "image_id": image_id,
        "category_id": int(category_id),
        "segmentation": encode_coco_rle(p, shape),
        "bbox": bbox,
        "score": float(score),
        **extra,
    }


def write_json(path: str | Path, obj: object) -> None:
    """Write ``obj`` as json, atomically."""
    with atomic_write(path) as f:
        json.dump(obj, f)


def label_annotations(labels: np.ndarray, category_id: int) -> list[dict]:
    """COCO annotations of every instance of a label image int[H, W] (0 = background),
    in id order: polygon ``segmentation`` (:func:`mask_to_polygons`), ``area``,
    ``bbox`` [x, y, w, h] of its pixels, ``iscrowd`` 0 and ``category_id``; no ``id``
    or ``image_id`` (:func:`write_coco_instances` numbers them).

    Each instance is traced inside its box (plus one pixel of background), so an image
    costs its cells' area, not one full frame per cell.
    """
    from scipy import ndimage

    out = []
    h, w = labels.shape
    for k, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        ys, xs = box
        y0, x0 = max(ys.start - 1, 0), max(xs.start - 1, 0)
        crop = labels[y0 : min(ys.stop + 1, h), x0 : min(xs.stop + 1, w)] == k
        polygons = [
            [v + (x0 if i % 2 == 0 else y0) for i, v in enumerate(poly)]
            for poly in mask_to_polygons(crop)
        ]
        out.append(
            {
                "category_id": category_id,
                "segmentation": polygons,
                "area": float(crop.sum()),
                "bbox": [xs.start, ys.start, xs.stop - xs.start, ys.stop - ys.start],
                "iscrowd": 0,
            }
        )
    return out


def write_coco_instances(
    path: str | Path,
    images: Sequence[Mapping],
    annotations_per_image: Iterable[list[dict]],
    categories: Sequence[str],
) -> None:
    """Write a LIVECell-style COCO instance json, atomically, streaming the annotations
    (memory: one image's at a time, however many images).

    Args:
        images: ``{"id": int, "file_name": str, "width": int, "height": int}`` each.
        annotations_per_image: per image, in the order of ``images``, its annotations
            (:func:`label_annotations`); ``id`` and ``image_id`` are set here.
        categories: every category name, in id order (ids start at 1).
    """
    with atomic_write(path) as f:
        f.write('{"images": ' + json.dumps(list(images)) + ', "annotations": [')
        n = 0
        for img, annotations in zip(images, annotations_per_image, strict=True):
            for ann in annotations:
                n += 1
                entry = {"id": n, "image_id": img["id"], **ann}
                f.write((", " if n > 1 else "") + json.dumps(entry))
        names = [{"id": i + 1, "name": name} for i, name in enumerate(categories)]
        f.write('], "categories": ' + json.dumps(names) + "}")
