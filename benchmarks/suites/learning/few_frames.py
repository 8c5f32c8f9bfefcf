"""A handful of frames to train on, a few to score: the small-data case our users have.

Stands in for the real evaluation set we keep apart (7 training frames of 576x210 with
dense, touching 25-30 px cells under oblique light, 3 to score): synthetic images of
one look (``sheet`` by default) at that size, the config trained on ``--train`` frames
from random weights, scored on ``--test`` other frames beside the Otsu baseline.

    python benchmarks/learning.py few-frames [--config configs/demo.yaml] [--cell-types sheet]
        [--set key=value ...] [--variant NAME key=value ...] ...

Each ``--variant NAME overrides...`` adds a row; ``default`` (no overrides) is always
first. Prints a table (score, AP, AP50, how box-shaped the masks are, training
seconds) and writes JSON (default
benchmarks/results/few_frames.json).
"""

from __future__ import annotations

import csv
import tempfile
import time
from pathlib import Path

import harness
import numpy as np
import realdata

from suites.learning import mask_quality


def main() -> None:
    parser = harness.arguments(__doc__, "few_frames", threads=None)
    parser.add_argument("--config", type=Path, default=Path("configs/demo.yaml"))
    parser.add_argument("--cell-types", default="sheet")
    parser.add_argument("--train", type=int, default=7)
    parser.add_argument("--test", type=int, default=3)
    parser.add_argument("--width", type=int, default=576)
    parser.add_argument("--height", type=int, default=210)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--variant",
        nargs="+",
        action="append",
        default=[],
        metavar="NAME [KEY=VALUE ...]",
        help="a named set of config overrides (repeatable)",
    )
    parser.add_argument(
        "--set", nargs="+", default=[], metavar="KEY=VALUE", help="overrides for every row"
    )
    parser.add_argument("--work", type=Path, help="keep data and runs here (default: temp)")
    parser.add_argument(
        "--figure", type=Path, help="write the first scored frame: truth, then each row's cells"
    )
    args = parser.parse_args()

    import tifffile

    from cellstack.config import load_config
    from cellstack.data.dataset import load_sample
    from cellstack.data.layouts import load_predictions
    from cellstack.data.sartorius import read_train_csv, write_train_csv
    from cellstack.data.synthetic import synthesize
    from cellstack.engine.trainer import train
    from cellstack.evaluation.report import evaluate
    from cellstack.inference.predict import predict_folder

    work = args.work or Path(tempfile.mkdtemp(prefix="few_frames_"))
    data = work / "data"
    types = tuple(args.cell_types.split(","))
    n = args.train + args.test
    synthesize(
        data, n, seed=args.seed, shape=(args.height, args.width), cell_types=types, progress=False
    )
    records = read_train_csv(data / "train.csv")
    test_ids = {r.image_id for r in records[args.train :]}
    test = [r for r in records if r.image_id in test_ids]
    with open(data / "train.csv", newline="") as f:
        rows = [row for row in csv.DictReader(f) if row["id"] not in test_ids]
    write_train_csv(data / "few_train.csv", rows)
    images = work / "test_images"
    images.mkdir(exist_ok=True)
    for rec in test:
        target = images / rec.image_path.name
        if not target.exists():
            target.symlink_to(rec.image_path.resolve())

    _, otsu_report = harness.evaluate_otsu(test)
    rows_out = {"otsu": {**otsu_report, "seconds": 0.0}}
    variants = [["default"], *args.variant]
    for name, *overrides in variants:
        cfg = load_config(args.config, [*args.set, *overrides])
        if cfg.model.backbone.pretrained:
            realdata.use_imagenet_package()  # ImageNet weights from the benchmark cache
        run = work / f"run_{name}"
        t0 = time.perf_counter()
        train(cfg, data / "few_train.csv", run, progress=False)
        seconds = time.perf_counter() - t0
        predict_folder(
            run, images, work / f"pred_{name}", device="cpu", progress=False, overwrite=True
        )
        preds = load_predictions(work / f"pred_{name}" / "submission.csv", test)
        report = evaluate(test, preds, progress=False).to_dict()
        shapes = mask_quality.summarise(
            [
                mask_quality.image_stats(
                    load_sample(r)[1],
                    tifffile.imread(work / f"pred_{name}" / "labels" / f"{r.image_id}.tif"),
                )
                for r in test
            ]
        )
        rows_out[name] = {**report, "masks": shapes, "seconds": seconds, "overrides": overrides}
        print(
            f"{name}: score {report['score']:.4f} ({seconds:.0f} s), box edge "
            f"{shapes['box_edge_pred']:.3f} (truth {shapes['box_edge_truth']:.3f}), "
            f"foreground recall {shapes['fg_recall']:.3f}",
            flush=True,
        )

    print(
        f"\n{args.train} training / {args.test} scored frames of {args.width}x{args.height}, "
        f"{args.cell_types}, config {args.config}"
    )
    print("| method | score | AP | AP50 | box edge (truth) | foreground recall | training s |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows_out.items():
        m = r.get("masks")
        shape = (
            f"{m['box_edge_pred']:.3f} ({m['box_edge_truth']:.3f}) | {m['fg_recall']:.3f}"
            if m
            else "- | -"
        )
        print(
            f"| {name} | {r['score']:.4f} | {r['ap']:.4f} | {r['ap50']:.4f} | {shape} "
            f"| {r['seconds']:.0f} |"
        )
    report = {k: {kk: vv for kk, vv in v.items() if kk != "per_image"} for k, v in rows_out.items()}
    harness.write_report(args.out, report)
    if args.figure:
        from cellstack.data.images import write_png
        from cellstack.inference.overlay import outline_overlay

        image, truth = load_sample(test[0])[:2]
        panels = [outline_overlay(image, truth)]
        for name in rows_out:
            if name != "otsu":
                pred = tifffile.imread(work / f"pred_{name}" / "labels" / f"{test[0].image_id}.tif")
                panels.append(outline_overlay(image, pred))
        gap = np.full((4, image.shape[1], 3), 255, np.uint8)
        write_png(args.figure, np.concatenate([p for panel in panels for p in (panel, gap)][:-1]))
        print(f"wrote {args.figure}: truth, then {', '.join(n for n in rows_out if n != 'otsu')}")


if __name__ == "__main__":
    main()
