"""How cell-shaped the masks are: box-filled masks, truncated edges, gaps between cells.

A mask head that has learnt "fill the box" gives rectangles with straight edges where
the mask meets its box. This scores the masks of one or more sources (built-in names or
run folders) on label folders, beside the truth, with numbers that show it:

- ``box_edge``: mean over cells of the fraction of the cell's bounding-box border pixels
  that the mask covers (a filled rectangle: 1.0; a disk: about 0.1). Truth cells give
  the level a good mask should have.
- ``matched_iou``: mean IoU of the cells matched at IoU >= 0.5 (one to one).
- ``fg_recall`` / ``fg_precision``: truth foreground pixels covered by some predicted
  cell, and predicted pixels inside the truth foreground (gaps between touching cells
  lower the recall).

    python benchmarks/learning.py mask-quality --source cells nuclei [--sets NAME ...]
        [--figure docs/mask_quality.png] [--out benchmarks/results/mask_quality.json]

Sets: ``sheet`` and ``phase`` (synthetic, made by ``train_builtin.py``'s recipe for
``cells``), ``mnfinder`` (real nuclei, fetched into the benchmark cache once). Prints a
table and writes JSON; ``--figure`` writes truth and each source's outlines side by side
on one crop of each set.
"""

from __future__ import annotations

from pathlib import Path

import harness
import numpy as np
import realdata
import train_builtin

ROOT = harness.ROOT


def box_edge(labels: np.ndarray) -> np.ndarray:
    """float64[N]: per cell of ``labels`` (int[H, W]), the covered share of its box border."""
    from scipy import ndimage

    out = []
    for k, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        crop = labels[sl] == k
        if min(crop.shape) < 3:
            continue
        border = np.concatenate([crop[0], crop[-1], crop[1:-1, 0], crop[1:-1, -1]])
        out.append(border.mean())
    return np.asarray(out, dtype=np.float64)


def image_stats(truth: np.ndarray, pred: np.ndarray) -> dict:
    """Mask-shape numbers of one prediction against its truth (both int[H, W] ids)."""
    from cellstack.data.masks import sparse_from_labels
    from cellstack.evaluation.matching import overlaps

    ov = overlaps(sparse_from_labels(truth), sparse_from_labels(pred))
    matched = ov.iou[ov.iou >= 0.5]
    t, p = truth > 0, pred > 0
    return {
        "box_edge_truth": box_edge(truth).tolist(),
        "box_edge_pred": box_edge(pred).tolist(),
        "matched_iou": matched.tolist(),
        "fg_recall": float((t & p).sum() / max(t.sum(), 1)),
        "fg_precision": float((t & p).sum() / max(p.sum(), 1)),
    }


def summarise(per_image: list[dict]) -> dict:
    def mean(key):
        values = [v for s in per_image for v in s[key]]
        return float(np.mean(values)) if values else float("nan")

    return {
        "box_edge_truth": mean("box_edge_truth"),
        "box_edge_pred": mean("box_edge_pred"),
        "matched_iou": mean("matched_iou"),
        "matched": sum(len(s["matched_iou"]) for s in per_image),
        "fg_recall": float(np.mean([s["fg_recall"] for s in per_image])),
        "fg_precision": float(np.mean([s["fg_precision"] for s in per_image])),
    }


def label_sets(names: list[str], work: Path) -> dict[str, Path]:
    folders = {}
    if {"sheet", "phase"} & set(names):
        _, sets = train_builtin.datasets("cells", work / "cells")
        folders["sheet"] = sets["synthetic oblique-light sheet (held out)"]
        folders["phase"] = sets["synthetic phase contrast (held out)"]
    if "mnfinder" in names:
        _, sets = train_builtin.datasets("nuclei", work / "nuclei")
        folders["mnfinder"] = sets["mnfinder test"]
    return {n: folders[n] for n in names}


def crop_of(truth: np.ndarray, size: int = 256) -> tuple[slice, slice]:
    """The ``size`` square window with the most truth cells (stride size/2)."""
    h, w = truth.shape
    best, where = -1, (0, 0)
    for y in range(0, max(h - size, 0) + 1, size // 2):
        for x in range(0, max(w - size, 0) + 1, size // 2):
            n = len(np.unique(truth[y : y + size, x : x + size]))
            if n > best:
                best, where = n, (y, x)
    return slice(where[0], where[0] + size), slice(where[1], where[1] + size)


def main() -> None:
    parser = harness.arguments(__doc__, "mask_quality", threads=None)
    parser.add_argument("--source", nargs="+", default=["cells", "nuclei"])
    parser.add_argument("--sets", nargs="+", default=["sheet", "phase", "mnfinder"])
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks/results/builtin")
    parser.add_argument("--figure", type=Path)
    args = parser.parse_args()

    import tifffile

    from cellstack.inference.overlay import outline_overlay, side_by_side
    from cellstack.inference.segmenter import Segmenter

    realdata.use_imagenet_package()
    folders = label_sets(args.sets, args.work)
    results: dict = {}
    rows = []
    for source in args.source:
        seg = Segmenter.load(source, device="cpu")
        for set_name, folder in folders.items():
            per_image, panels = [], None
            for k, path in enumerate(sorted((folder / "images").glob("*.tif"))):
                image = tifffile.imread(path)
                truth = tifffile.imread(folder / "labels" / path.name).astype(np.int32)
                pred = seg(image).labels
                per_image.append(image_stats(truth, pred))
                if k == 0:
                    crop = crop_of(truth)
                    panels = (image[crop], truth[crop], pred[crop])
            summary = summarise(per_image)
            results.setdefault(str(source), {})[set_name] = summary
            rows.append((str(source), set_name, summary, panels))

    print(
        f"{'source':<10} {'set':<10} {'box_edge':>9} {'truth':>7} {'IoU':>6} "
        f"{'matched':>8} {'fg_rec':>7} {'fg_prec':>8}"
    )
    for source, set_name, s, _ in rows:
        print(
            f"{source:<10} {set_name:<10} {s['box_edge_pred']:>9.3f} {s['box_edge_truth']:>7.3f} "
            f"{s['matched_iou']:>6.3f} {s['matched']:>8d} {s['fg_recall']:>7.3f} "
            f"{s['fg_precision']:>8.3f}"
        )
    harness.write_report(args.out, results)
    if args.figure:
        from cellstack.data.images import write_png

        strips = []
        for *_, (image, truth, pred) in rows:
            strips.append(side_by_side(outline_overlay(image, truth), outline_overlay(image, pred)))
        width = max(s.shape[1] for s in strips)
        strips = [
            np.pad(s, ((0, 4), (0, width - s.shape[1]), (0, 0)), constant_values=255)
            for s in strips
        ]
        write_png(args.figure, np.concatenate(strips))
        pairs = ", ".join(f"{r[0]} on {r[1]}" for r in rows)
        print(f"wrote {args.figure}: per row, truth | prediction ({pairs})")


if __name__ == "__main__":
    main()
