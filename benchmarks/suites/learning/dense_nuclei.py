"""Dense fields: does a model find the obvious nuclei where they touch? (issue 42)

Scores models (built-in names or run folders) on the held-out dense cases of
``train_builtin.dense_cases``: confluent synthetic nuclei (37-70% of the frame covered,
never trained on, seed 31) and their 8-bit JPEG copies, and the densest 512x512 window of
mnfinder's U2OS test image (nuclei cut by the window's border) with its JPEG copy. Per
case: the competition score, recall and precision at IoU 0.5, and the predicted count.

    python benchmarks/learning.py dense-nuclei [--models nuclei RUN ...] [--work DIR]
        [--out benchmarks/results/dense_nuclei.json]

Prints a table (one row per model and case group) and writes JSON.
"""

from __future__ import annotations

import platform
from pathlib import Path

import harness
import numpy as np
import train_builtin


def groups(image_ids: list[str]) -> dict[str, list[str]]:
    """Case groups by image id: synthetic fields, their JPEG copies, the U2OS window."""
    out: dict[str, list[str]] = {}
    for i in image_ids:
        kind = "U2OS window" if i.startswith("u2os") else "synthetic field"
        out.setdefault(kind + (" (JPEG)" if i.endswith("_jpeg") else ""), []).append(i)
    return out


def score_model(source: str, folder: Path, work: Path) -> dict[str, dict]:
    """``{group: {score, recall50, precision50, border_recall50, n_true, n_pred}}`` of
    ``source``; ``border_recall50``: the recall of the true nuclei the image's border cuts."""
    import cellstack
    from cellstack.data.dataset import load_sample
    from cellstack.data.layouts import load_dataset
    from cellstack.evaluation.matching import as_sparse, overlaps
    from cellstack.evaluation.metric import score_image

    seg = cellstack.Segmenter.load(source)
    records = {r.image_id: r for r in load_dataset(folder)}
    per_image = {}
    for image_id, rec in records.items():
        image, _ = load_sample(rec)
        truth = rec.sparse_masks()
        pred = seg(image).labels
        h, w = image.shape[:2]
        ys, xs = np.divmod(truth.indices, w)
        on_edge = (ys == 0) | (ys == h - 1) | (xs == 0) | (xs == w - 1)
        rows = np.repeat(np.arange(truth.shape[0]), np.diff(truth.indptr))
        cut = np.flatnonzero(np.bincount(rows[on_edge], minlength=truth.shape[0]))
        pred = as_sparse(pred)
        ov = overlaps(truth, pred)
        found = ov.truth_idx[ov.iou >= 0.5]  # one partner at most per cell at IoU >= 0.5
        per_image[image_id] = {
            "score": score_image(truth, pred, shape=(h, w)).score,
            "tp": len(found),
            "n_true": truth.shape[0],
            "n_pred": pred.shape[0],
            "border_tp": int(np.isin(cut, found).sum()),
            "border_n": len(cut),
        }
    out = {}
    for group, ids in groups(sorted(per_image)).items():
        rows = [per_image[i] for i in ids]
        tp, n_true, n_pred, b_tp, b_n = (
            sum(r[k] for r in rows) for k in ("tp", "n_true", "n_pred", "border_tp", "border_n")
        )
        out[group] = {
            "score": float(np.mean([r["score"] for r in rows])),
            "recall50": tp / max(n_true, 1),
            "precision50": tp / max(n_pred, 1),
            "border_recall50": b_tp / max(b_n, 1),
            "n_true": n_true,
            "n_pred": n_pred,
            "images": len(rows),
        }
    return out


def main() -> None:
    parser = harness.arguments(__doc__, "dense_nuclei", threads=None)
    parser.add_argument("--models", nargs="+", default=["nuclei"])
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache/cellstack-dense")
    args = parser.parse_args()
    folder = train_builtin.dense_cases(args.work)
    results = {"machine": f"{platform.processor() or platform.machine()}", "models": {}}
    print(
        "| model | case | images | nuclei | found | recall50 | recall50, cut by the border "
        "| precision50 | score |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for source in args.models:
        rows = results["models"][source] = score_model(source, folder, args.work)
        for group, r in rows.items():
            print(
                f"| {source} | {group} | {r['images']} | {r['n_true']} | {r['n_pred']} | "
                f"{r['recall50']:.3f} | {r['border_recall50']:.3f} | {r['precision50']:.3f} | "
                f"{r['score']:.4f} |",
                flush=True,
            )
    harness.write_report(args.out, results)


if __name__ == "__main__":
    main()
