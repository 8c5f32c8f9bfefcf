"""Dense tiles: do large tiles lose cells to a fixed proposal budget?

    python benchmarks/learning.py dense-tiles [--model cells] [--size 2048] [--look shsy5y]
        [--tiles 1024 512] [--seed 0]

One ``--size`` x ``--size`` synthetic image of ``--look`` (cells drawn at the
generator's density, so a large image holds hundreds to thousands), segmented by the
built-in ``--model`` with each ``--tiles`` size (``predict.tile_size``; the overlap
stays the config's). Reported per tile size: the cells found, the truth's count, the
competition score against the truth, the proposal budget per tile that the model used
and the wall time. Before issue 30 a 1024 px tile kept at most 1000 proposals whatever
it held, so the whole image found fewer cells than 512 px blocks of it.

Prints a table and writes JSON (default ``benchmarks/results/dense_tiles.json``).
"""

from __future__ import annotations

import time

import harness
import numpy as np

import cellstack
from cellstack.data.synthetic import generate_image
from cellstack.evaluation.metric import score_image


def main() -> None:
    ap = harness.arguments(__doc__, "dense_tiles", threads=None)
    ap.add_argument("--model", default="cells")
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--look", default="shsy5y")
    ap.add_argument("--tiles", type=int, nargs="+", default=[1024, 512])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    sample = generate_image(np.random.default_rng(args.seed), args.look, (args.size, args.size))
    truth = sample.labels
    n_true = int(truth.max())
    rows = []
    for tile in args.tiles:
        seg = cellstack.Segmenter.load(
            args.model, device="cpu", overrides=[f"predict.tile_size={tile}"]
        )
        budget = seg.source.model.proposal_params.budget(tile * tile)
        t0 = time.perf_counter()
        result = seg(sample.image)
        seconds = time.perf_counter() - t0
        rows.append(
            {
                "tile": tile,
                "found": len(result),
                "truth": n_true,
                "score": round(float(score_image(truth, result.labels).score), 4),
                "proposals_per_tile": budget[1],
                "seconds": round(seconds, 1),
            }
        )
        print(rows[-1], flush=True)
    print(f"\n{args.model} on a {args.size}x{args.size} {args.look} image ({n_true} cells)")
    print(f"{'tile':>6} {'found':>6} {'score':>7} {'proposals/tile':>15} {'s':>7}")
    for r in rows:
        print(
            f"{r['tile']:>6} {r['found']:>6} {r['score']:>7.4f} "
            f"{r['proposals_per_tile']:>15} {r['seconds']:>7.1f}"
        )
    report = {"model": args.model, "size": args.size, "look": args.look, "rows": rows}
    harness.write_report(args.out, report)


if __name__ == "__main__":
    main()
