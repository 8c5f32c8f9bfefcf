"""Mask R-CNN vs Cascade Mask R-CNN vs HTC on the same synthetic split and budget.

Every arch uses ``configs/demo.yaml`` (resnet18 from random init, FPN 64, small heads)
with only ``model.arch`` changed, trains for the same number of iterations on the same
images with the same seed, and predicts the same held-out fold (grouped by sample).
Printed per arch: competition score, COCO mask AP and AP50, the score at the strict IoU
thresholds (0.80-0.95, where the cascades' tighter boxes should show), train seconds
per iteration (median over the logged windows) and predict seconds per image (model +
post-processing, batch 1 after a warm-up image).

    python benchmarks/learning.py arch --iterations 400 --images 32 [--device cuda]

Prints a table and writes JSON (default benchmarks/results/arch_compare.json).
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
import time
from pathlib import Path

import harness

ARCHS = ("maskrcnn", "cascade", "htc")
STRICT = ("0.80", "0.85", "0.90", "0.95")


def seconds_per_iteration(log: Path) -> float:
    """Median seconds per iteration over the logged windows of a run's log.csv (robust
    to start-up and to a window slowed by other work on the machine)."""
    import csv
    import statistics

    with open(log, newline="") as f:
        rows = [
            (int(r["iteration"]), float(r["seconds"])) for r in csv.DictReader(f) if r["seconds"]
        ]
    steps = [(s1 - s0) / (i1 - i0) for (i0, s0), (i1, s1) in itertools.pairwise(rows) if i1 > i0]
    return statistics.median(steps)


def main() -> None:
    parser = harness.arguments(__doc__, "arch_compare", threads=None)
    parser.add_argument("--iterations", type=int, default=400)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--archs", nargs="+", default=list(ARCHS), choices=ARCHS)
    parser.add_argument("--work", type=Path, help="keep data and runs here (default: temp)")
    parser.add_argument(
        "--reuse", action="store_true", help="skip training where WORK/run_ARCH is complete"
    )
    parser.add_argument("overrides", nargs="*", help="extra config overrides for every arch")
    args = parser.parse_args()

    import torch

    from cellstack.config import load_config
    from cellstack.data.folds import grouped_stratified_folds, write_folds_csv
    from cellstack.data.layouts import load_predictions
    from cellstack.data.sartorius import read_train_csv
    from cellstack.data.synthetic import synthesize
    from cellstack.ddp import pick_device
    from cellstack.demo import demo_config_path
    from cellstack.engine.trainer import train
    from cellstack.evaluation.report import evaluate
    from cellstack.inference.predict import PredictOptions, predict_folder

    work = args.work or Path(tempfile.mkdtemp(prefix="arch_compare_"))
    data = work / "data"
    if not (data / "train.csv").is_file():
        synthesize(data, args.images, seed=args.seed, progress=False)
    records = read_train_csv(data / "train.csv")
    folds = grouped_stratified_folds(records, 4, seed=args.seed)
    write_folds_csv(data / "folds.csv", records, folds)
    held_out = [r for r in records if folds[r.image_id] == 0]
    held_dir = work / "held_out"
    held_dir.mkdir(parents=True, exist_ok=True)
    for rec in held_out:
        link = held_dir / rec.image_path.name
        if not link.exists():
            link.symlink_to(rec.image_path.resolve())
    device = pick_device(args.device)

    rows = []
    for arch in args.archs:
        cfg = load_config(
            demo_config_path(),
            [
                f"model.arch={arch}",
                f"train.iterations={args.iterations}",
                f"train.checkpoint_every={args.iterations}",
                f"train.eval_every={10 * args.iterations}",
                f"train.seed={args.seed}",
                f"train.device={device}",
                "data.fold=0",
                "data.folds=4",
                *args.overrides,
            ],
        )
        run = work / f"run_{arch}"
        if not (args.reuse and (run / "model.pt").is_file()):
            shutil.rmtree(run, ignore_errors=True)
            print(f"training {arch} for {args.iterations} iterations on {device}", flush=True)
            train(cfg, data, run, progress=True)
        train_s = seconds_per_iteration(run / "log.csv")
        # One warm-up image, then the held-out set at batch 1.
        predict_folder(
            run,
            held_out[0].image_path,
            work / "warmup",
            device=str(device),
            progress=False,
            options=PredictOptions(overrides=("predict.batch_size=1",)),
        )
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        pred_dir = work / f"pred_{arch}"
        predict_folder(
            run,
            held_dir,
            pred_dir,
            PredictOptions(overrides=("predict.batch_size=1",)),
            device=str(device),
        )
        predict_s = (time.perf_counter() - t0) / len(held_out)
        report = evaluate(held_out, load_predictions(pred_dir / "submission.csv", held_out))
        strict = sum(report.per_threshold[t] for t in STRICT) / len(STRICT)
        rows.append(
            {
                "arch": arch,
                "score": report.score,
                "ap": report.ap,
                "ap50": report.ap50,
                "score_iou_0.80_0.95": strict,
                "per_threshold": report.per_threshold,
                "per_cell_type": report.per_cell_type,
                "train_s_per_iter": train_s,
                "predict_s_per_image": predict_s,
            }
        )

    print(
        f"\n{len(held_out)} held-out synthetic images, {args.iterations} iterations each, "
        f"{device}, configs/demo.yaml (resnet18, random init)"
    )
    header = (
        f"{'arch':<10}{'score':>8}{'AP':>8}{'AP50':>8}{'IoU.8-.95':>11}"
        f"{'train s/it':>12}{'pred s/img':>12}"
    )
    print(header)
    for r in rows:
        print(
            f"{r['arch']:<10}{r['score']:>8.4f}{r['ap']:>8.4f}{r['ap50']:>8.4f}"
            f"{r['score_iou_0.80_0.95']:>11.4f}{r['train_s_per_iter']:>12.3f}"
            f"{r['predict_s_per_image']:>12.3f}"
        )
    meta = {
        "iterations": args.iterations,
        "images": args.images,
        "held_out": len(held_out),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "overrides": args.overrides,
    }
    harness.write_report(args.out, {"meta": meta, "rows": rows})


if __name__ == "__main__":
    main()
