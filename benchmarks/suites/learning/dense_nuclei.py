"""Dense fields: does a model find the obvious nuclei where they touch? (issue 42)

Scores models (built-in names or run folders) on the held-out dense cases of
``train_builtin.dense_cases``: confluent synthetic nuclei (37-70% of the frame covered,
never trained on, seed 31) and their 8-bit JPEG copies, and the densest 512x512 window of
mnfinder's U2OS test image (nuclei cut by the window's border) with its JPEG copy; and
of ``train_builtin.packed_cases``: 6 fields of mnfinder's test-split nuclei packed
touching (60-85% covered, 18-45 px, cut by the field's border). Per case: the
competition score, recall and precision at IoU 0.5 (of every nucleus and of those the
border cuts), and the predicted count.

    python benchmarks/learning.py dense-nuclei [--models nuclei RUN ...] [--work DIR]
        [--out benchmarks/results/dense_nuclei.json]

Prints a table (one row per model and case group) and writes JSON.
"""

from __future__ import annotations

import platform
from pathlib import Path

import harness
import train_builtin


def main() -> None:
    parser = harness.arguments(__doc__, "dense_nuclei", threads=None)
    parser.add_argument("--models", nargs="+", default=["nuclei"])
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache/cellstack-dense")
    args = parser.parse_args()
    folders = [train_builtin.dense_cases(args.work), train_builtin.packed_cases(args.work)]
    results = {"machine": f"{platform.processor() or platform.machine()}", "models": {}}
    print(
        "| model | case | images | nuclei | predicted | recall50 | recall50, cut by the border "
        "| precision50 | score |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for source in args.models:
        rows = results["models"][source] = {
            case: row
            for folder in folders
            for case, row in train_builtin.dense_case_rows(source, folder).items()
        }
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
