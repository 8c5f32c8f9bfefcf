"""Competition metric speed: cellstack's sparse metric vs a straightforward dense one.

Both start from the same Kaggle RLE strings (what a submission and train.csv hold) of
synthetic shsy5y-like images with ~300 cells each, perturbed to make predictions.

The baseline is the usual first implementation: decode one dense H x W mask per
object, compute the IoU matrix (as one BLAS matrix product of the flattened masks,
already far faster than a Python loop over pairs), then count matches threshold by
threshold. Ours builds sparse masks straight from the runs and multiplies those.

Prints a table and writes JSON (default benchmarks/results/metric_speed.json).
"""

from __future__ import annotations

import time

import harness
import numpy as np
from scipy import ndimage

from cellstack.data import rle
from cellstack.data.synthetic import synthetic_labels
from cellstack.evaluation.metric import IOU_THRESHOLDS, score_image


def perturb(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A plausible prediction: cells dropped, eroded, dilated, shifted; some false ones."""
    out = np.zeros_like(labels)
    next_id = int(labels.max()) + 1
    for i, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        r = rng.random()
        if r < 0.1:
            continue
        box = tuple(slice(max(s.start - 2, 0), s.stop + 2) for s in sl)
        mask = labels[box] == i
        if r < 0.35:
            mask = ndimage.binary_erosion(mask)
        elif r < 0.55:
            mask = ndimage.binary_dilation(mask)
        elif r < 0.7:
            mask = np.roll(mask, 2, axis=1)
        region = out[box]
        region[mask & (region == 0)] = i
    for _ in range(rng.integers(5, 20)):  # false positives
        y, x = rng.integers(0, labels.shape[0] - 8), rng.integers(0, labels.shape[1] - 8)
        region = out[y : y + 6, x : x + 6]
        region[region == 0] = next_id
        next_id += 1
    return out


def dense_score(truth_rles: list[str], pred_rles: list[str], shape: tuple[int, int]) -> float:
    """The straightforward metric: dense masks, IoU by matrix product, per-threshold counts."""
    t = np.stack([rle.decode(r, shape).ravel() for r in truth_rles]).astype(np.float32)
    p = np.stack([rle.decode(r, shape).ravel() for r in pred_rles]).astype(np.float32)
    # float32 counts pixels exactly (< 2**24), but the division must be float64: in
    # float32 an exact IoU such as 6/10 rounds above the 0.60 threshold and counts as
    # a match that the strict "IoU > t" rule rejects.
    inter = (t @ p.T).astype(np.float64)
    union = t.sum(1, dtype=np.float64)[:, None] + p.sum(1, dtype=np.float64)[None, :] - inter
    iou = inter / union
    values = []
    for thr in IOU_THRESHOLDS:
        matches = iou > thr
        tp = int(matches.any(axis=1).sum())
        fp = len(pred_rles) - int(matches.any(axis=0).sum())
        fn = len(truth_rles) - tp
        values.append(tp / (tp + fp + fn))
    return float(np.mean(values))


def sparse_score(truth_rles: list[str], pred_rles: list[str], shape: tuple[int, int]) -> float:
    """cellstack's metric, from the same RLE strings."""
    t = rle.rles_to_sparse(truth_rles, shape)
    p = rle.rles_to_sparse(pred_rles, shape)
    return score_image(t, p, shape=shape).score


def main() -> None:
    parser = harness.arguments(__doc__, "metric_speed", threads=None)
    parser.add_argument("--n-images", type=int, default=100)
    parser.add_argument("--cells", type=int, default=300, help="cells per image (target)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    shape = (520, 704)
    rng = np.random.default_rng(args.seed)
    pairs, n_cells = [], []
    for _ in range(args.n_images):
        truth = synthetic_labels(rng, "shsy5y", shape, n_cells=args.cells)
        pred = perturb(truth, rng)
        pairs.append((rle.encode_labels(truth)[1], rle.encode_labels(pred)[1]))
        n_cells.append(len(pairs[-1][0]))

    timings, scores = {}, {}
    for name, fn in (("cellstack (sparse)", sparse_score), ("dense baseline", dense_score)):
        start = time.perf_counter()
        scores[name] = [fn(t, p, shape) for t, p in pairs]
        timings[name] = time.perf_counter() - start
    ours, base = scores["cellstack (sparse)"], scores["dense baseline"]
    max_diff = float(np.max(np.abs(np.array(ours) - np.array(base))))
    ratio = timings["dense baseline"] / timings["cellstack (sparse)"]

    print(f"{args.n_images} images {shape[1]}x{shape[0]}, {np.mean(n_cells):.0f} cells/image")
    rows = [
        [name, secs, 1000 * secs / args.n_images, f"{np.mean(scores[name]):.6f}"]
        for name, secs in timings.items()
    ]
    harness.print_table(["implementation", "total s", "ms/image", "mean score"], rows, digits=2)
    print(f"speed-up: {ratio:.1f}x   max |score difference|: {max_diff:.2e}")
    result = {
        "n_images": args.n_images,
        "mean_cells_per_image": float(np.mean(n_cells)),
        "seconds": timings,
        "ms_per_image": {k: 1000 * v / args.n_images for k, v in timings.items()},
        "mean_score": {k: float(np.mean(v)) for k, v in scores.items()},
        "speedup": ratio,
        "max_abs_score_difference": max_diff,
    }
    harness.write_report(args.out, result)


if __name__ == "__main__":
    main()
