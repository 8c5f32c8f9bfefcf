"""LIVECell-sized data: the generator, ``prepare livecell``, the start of training and the
loader, at several numbers of images.

    python benchmarks/scale.py data [--sizes 500 2000 5239] [--base 200]
        [--work DIR] [--steps 6] [--distinct] [--types shsy5y] [--seed 0]

1. *synth*: ``cellstack synth --livecell`` of ``--base`` distinct 704x520 images of
   ``--types`` (default shsy5y, the densest, about 215 cells per image; LIVECell has
   about 300) in a child process: seconds per image and peak RSS, so
   the time for LIVECell's 5,239 images follows.
2. For each size N: a LIVECell folder of N images (the base images, each under new
   names, with their annotations: the json written streamed; with ``--distinct``, N
   distinct images synthesized for that size instead, ``synth --livecell``'s own 70/15/15
   split, so that nothing a distinct image costs can hide behind repeated ones), then in
   child processes:
   ``cellstack prepare livecell`` (seconds, peak RSS, the cache's size on disk), the
   start of training with ``configs/demo.yaml`` (reading the records, the folds and
   every ``auto``: seconds, peak RSS), and the loader's share of a CPU training step
   of the same config with 0 and 2 workers (the time
   a step waits for its batch over the whole step, median of ``--steps`` after one).

Goals (issue 33): peak memory flat in N; start-up under a minute at 5,239 images; the
loader under 10% of a CPU step. Prints a table and writes JSON (default
``benchmarks/results/livecell_scale.json``).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import harness

ROOT = harness.ROOT

# Every step runs in a child process whose own peak RSS is measured; the parent stays
# small, since Linux counts the RSS a child was forked with into its ru_maxrss (a
# parent holding a parsed json would inflate every child's figure).
CHILD = r"""
import json, resource, sys, time
from pathlib import Path
job, args = sys.argv[1], sys.argv[2:]
t0 = time.perf_counter()
out = {}
if job == "synth":
    from cellstack.data.synthetic import synthesize
    synthesize(args[0], int(args[1]), seed=int(args[3]), livecell=True, progress=False,
               cell_types=tuple(args[2].split(",")))
elif job == "prepare":
    from cellstack.cli import main
    assert main(["prepare", "livecell", args[0], "--out", args[1], "--quiet"]) == 0
elif job == "start":
    from cellstack.config import load_config
    from cellstack.data.layouts import load_dataset
    from cellstack.data.splits import split_records
    from cellstack.engine.trainer import resolve_auto
    cfg = load_config(args[1])
    records = load_dataset(args[0])
    train, val, _ = split_records(records, cfg, args[0])
    resolve_auto(cfg, train)
    out["records"] = len(records)
elif job == "replicate":
    sys.path.insert(0, args[3])
    from suites.scale.data import replicate
    out["cells"] = replicate(Path(args[0]), Path(args[1]), int(args[2]))
elif job == "count":
    import ijson
    with open(args[0], "rb") as f:
        out["cells"] = sum(1 for _ in ijson.items(f, "annotations.item"))
elif job == "loader":
    import numpy as np, torch
    from torch.utils.data import DataLoader
    from cellstack.config import load_config
    from cellstack.data.dataset import TrainCrops, collate
    from cellstack.data.layouts import load_dataset
    from cellstack.data.splits import class_names_of, split_records
    from cellstack.engine.trainer import place_for_training, resolve_auto
    from cellstack.modeling.build import build_model
    steps, workers = int(args[2]), int(args[3])
    cfg = load_config(args[1], ["model.backbone.pretrained=false"])
    records = load_dataset(args[0])
    train, _, _ = split_records(records, cfg, args[0])
    cfg, _ = resolve_auto(cfg, train)
    names = class_names_of(records)
    t = cfg.train
    crops = TrainCrops(train, names, crop_size=cfg.data.crop_size, augment=cfg.data.augment,
                       length=(steps + 1) * t.batch_size, seed=0,
                       crop_sampling=cfg.data.crop_sampling, scale=cfg.data.scale)
    loader = DataLoader(crops, batch_size=t.batch_size, num_workers=workers, collate_fn=collate)
    model = place_for_training(build_model(cfg.model, names, cfg.predict), torch.device("cpu"))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    waits, totals = [], []
    it = iter(loader)
    for k in range(steps + 1):
        s0 = time.perf_counter()
        images, targets = next(it)
        s1 = time.perf_counter()
        loss = sum(model(images, targets).values())
        opt.zero_grad(); loss.backward(); opt.step()
        s2 = time.perf_counter()
        if k:
            waits.append(s1 - s0); totals.append(s2 - s0)
    out["wait_s"] = float(np.median(waits)); out["step_s"] = float(np.median(totals))
    out["share"] = float(np.sum(waits) / np.sum(totals))
out["seconds"] = time.perf_counter() - t0
out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
"""


def child(job: str, *args: object) -> dict:
    """Run ``job`` of :data:`CHILD` in its own process (its own peak memory)."""
    return harness.child([sys.executable, "-c", CHILD, job, *args])


def replicate(base: Path, out: Path, n: int) -> int:
    """A LIVECell folder of ``n`` images at ``out``: the base folder's train, val and
    test images cycled under new names (links to the same files), their annotations
    copied, streamed into one train json; the base val and test jsons as they are.
    Returns the number of cells."""
    from cellstack.data.coco import write_coco_instances

    (out / "images").mkdir(parents=True)
    entries = []  # (image entry, annotations) of the base images
    categories: list[str] = []
    for split in ("train", "val", "test"):
        coco = json.loads((base / f"livecell_coco_{split}.json").read_text())
        categories = [c["name"] for c in sorted(coco["categories"], key=lambda c: c["id"])]
        by_image: dict[int, list] = {}
        for ann in coco["annotations"]:
            by_image.setdefault(ann["image_id"], []).append(
                {k: v for k, v in ann.items() if k not in ("id", "image_id")}
            )
        entries += [(img, by_image.get(img["id"], [])) for img in coco["images"]]
        if split != "train":
            shutil.copy(base / f"livecell_coco_{split}.json", out)
            for img in coco["images"]:
                os.symlink(base / "images" / img["file_name"], out / "images" / img["file_name"])
    images, cells = [], 0
    for k in range(n):
        img, anns = entries[k % len(entries)]
        stem = Path(img["file_name"]).stem
        name = f"{stem}_copy{k}.tif"
        os.symlink(base / "images" / img["file_name"], out / "images" / name)
        images.append({**img, "id": k + 1, "file_name": name})
        cells += len(anns)

    def annotations():
        for k in range(n):
            yield entries[k % len(entries)][1]

    write_coco_instances(out / "livecell_coco_train.json", images, annotations(), categories)
    return cells


def folder_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def main() -> None:
    parser = harness.arguments(__doc__, "livecell_scale", threads=None)
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 2000, 5239])
    parser.add_argument("--base", type=int, default=200, help="distinct synthetic images")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--types", default="shsy5y", help="synthetic cell types, comma-separated")
    parser.add_argument("--seed", type=int, default=0, help="the synthetic images' seed")
    parser.add_argument(
        "--distinct", action="store_true", help="N distinct images per size, not repeated ones"
    )
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="cellstack-livecell-"))
    synth = work / "synth"
    if not (synth / "livecell" / "livecell_coco_test.json").is_file():
        shutil.rmtree(synth, ignore_errors=True)
        row = child("synth", synth, args.base, args.types, args.seed)
        report = {"synth": {**row, "s_per_image": row["seconds"] / args.base}}
    else:
        report = {"synth": json.loads((work / "synth.json").read_text())}
    (work / "synth.json").write_text(json.dumps(report["synth"]))
    s = report["synth"]
    print(
        f"synth --livecell: {s['s_per_image']:.3f} s/image (5,239 images: "
        f"{5239 * s['s_per_image'] / 60:.0f} min), peak {s['peak_rss_mb']:.0f} MB"
    )
    demo_cfg = ROOT / "configs/demo.yaml"
    report["sizes"] = {}
    for n in args.sizes:
        src, out = work / f"livecell_{n}", work / f"prepared_{n}"
        shutil.rmtree(src, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)
        if args.distinct:
            child("synth", src, n, args.types, args.seed)
            src = src / "livecell"
            cells = child("count", src / "livecell_coco_train.json")["cells"]
        else:
            here = harness.BENCH
            cells = child("replicate", synth / "livecell", src, n, here)["cells"]
        prep = child("prepare", src, out)
        row = {
            "images": n,
            "train_cells": cells,
            "prepare_s": prep["seconds"],
            "prepare_peak_mb": prep["peak_rss_mb"],
            "cache_mb": folder_mb(out),
        }
        start = child("start", out, demo_cfg)
        row.update(start_s=start["seconds"], start_peak_mb=start["peak_rss_mb"])
        for workers in (0, 2):
            load = child("loader", out, demo_cfg, args.steps, workers)
            row[f"loader_share_w{workers}"] = load["share"]
            row[f"step_s_w{workers}"] = load["step_s"]
        report["sizes"][n] = row
        print(json.dumps(row), flush=True)
    print(
        f"\n{'images':>7}{'cells':>9}{'prep s':>8}{'prep MB':>9}{'cache MB':>10}"
        f"{'start s':>9}{'start MB':>10}{'load 0w':>9}{'load 2w':>9}{'step s':>8}"
    )
    for n, r in report["sizes"].items():
        print(
            f"{n:>7}{r['train_cells']:>9}{r['prepare_s']:>8.1f}{r['prepare_peak_mb']:>9.0f}"
            f"{r['cache_mb']:>10.0f}{r['start_s']:>9.1f}{r['start_peak_mb']:>10.0f}"
            f"{r['loader_share_w0']:>9.1%}{r['loader_share_w2']:>9.1%}{r['step_s_w0']:>8.2f}"
        )

    harness.write_report(args.out, {"args": vars(args), **report})


if __name__ == "__main__":
    main()
