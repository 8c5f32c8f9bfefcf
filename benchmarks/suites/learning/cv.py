"""docs/training.md's recipe end to end on synthetic data, with and without pretraining.

1. ``synth --livecell`` (seed 1) stands in for LIVECell and is prepared with
   ``cellstack prepare livecell``; another synthetic set (seed 2) stands in for the
   competition data and is prepared with ``cellstack prepare sartorius --fill-holes``.
2. Pretrain on the "LIVECell" train+test splits, validating on its val split.
3. ``cellstack cv`` on the "competition" data twice with the same config and budget:
   from that pretrained run (``init.from``) and from random init.
4. ``cellstack tune`` on each CV's out-of-fold predictions, then re-score.

Prints the CV tables (per fold and per cell type, before and after tuning) and
seconds per training iteration, and writes JSON (default
benchmarks/results/cv_workflow.json).

    python benchmarks/learning.py cv --iterations 150 --folds 3 [--device cuda]
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import harness


def seconds_per_iteration(run: Path) -> float:
    import csv
    import itertools

    with open(run / "log.csv", newline="") as f:
        rows = [(int(r["iteration"]), float(r["seconds"])) for r in csv.DictReader(f)]
    return statistics.median(
        (s1 - s0) / (i1 - i0) for (i0, s0), (i1, s1) in itertools.pairwise(rows) if i1 > i0
    )


def main() -> None:
    parser = harness.arguments(__doc__, "cv_workflow", threads=None)
    parser.add_argument("--work", type=Path, default=Path("benchmarks/results/cv_workflow"))
    parser.add_argument("--images", type=int, default=24, help="competition-like images")
    parser.add_argument("--pretrain-images", type=int, default=30)
    parser.add_argument("--iterations", type=int, default=150, help="per fold and pretraining")
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    from cellstack.config import load_config
    from cellstack.data.livecell import prepare_livecell
    from cellstack.data.sartorius import prepare_sartorius
    from cellstack.data.synthetic import synthesize
    from cellstack.engine.cv import rescore, run_cv
    from cellstack.engine.trainer import train
    from cellstack.inference.calibration import run_tune

    w = args.work
    base = [
        f"train.iterations={args.iterations}",
        f"train.device={args.device}",
        f"train.eval_every={args.iterations}",
        "train.log_every=10",
    ]
    if not (w / "livecell_src").is_dir():
        synthesize(w / "livecell_src", args.pretrain_images, seed=1, livecell=True)
        synthesize(w / "competition", args.images, seed=2)
    t0 = time.perf_counter()
    lc = prepare_livecell(w / "livecell_src" / "livecell", w / "livecell", progress=False)
    comp = prepare_sartorius(w / "competition", holes=True, progress=False)
    prep_s = time.perf_counter() - t0
    print(lc.summary(), comp.summary(), sep="\n")

    pre = w / "pretrain"
    if not (pre / "model.pt").is_file():
        cfg = load_config(
            "configs/demo.yaml", [*base, "data.splits=[train, test]", "data.val_split=val"]
        )
        train(cfg, w / "livecell", pre)
    results = {"prepare_seconds": prep_s, "pretrain_s_per_it": seconds_per_iteration(pre)}
    for name, extra in (("pretrained", [f"init.from={pre.resolve()}"]), ("scratch", [])):
        out = w / f"cv_{name}"
        cfg = load_config("configs/demo.yaml", [*base, *extra])
        before = run_cv(cfg, comp.out, out, folds=args.folds, device=args.device)
        tune_result, _ = run_tune(out, None, progress=False)
        after = rescore(out, progress=False)
        results[name] = {
            "before_tune": before.rows,
            "after_tune": after.rows,
            "tune": tune_result.table(),
            "train_s_per_it": statistics.median(
                seconds_per_iteration(out / f"fold{k}") for k in range(args.folds)
            ),
        }
        print(f"\n## CV {name} (thresholds of configs/demo.yaml)\n{before.table()}")
        print(f"\n## CV {name} after `cellstack tune` on the OOF predictions\n{after.table()}")
    for rows in results.values():
        if isinstance(rows, dict):
            for part in ("before_tune", "after_tune"):
                for row in rows[part].values():
                    row.pop("per_image", None)
    harness.write_report(args.out, results)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
