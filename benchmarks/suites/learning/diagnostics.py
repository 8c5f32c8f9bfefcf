"""Why the detector learns slowly: where a training step's time goes, and what the
model has learnt along the way (numbers for ``docs/learning.md``).

1. Profile: seconds per part of a training step (data, backbone+FPN, RPN, RoI heads,
   backward, optimizer) averaged over steps, and iterations per CPU minute.
2. Learning curves: the run is trained in chunks with the real trainer (``stop_after``
   then ``--resume``, which continues exactly); after each chunk, on the held-out demo
   images: RPN proposal recall of the true cells at IoU 0.5 / 0.7 (top 1000 proposals),
   positives per image (proposals at IoU >= 0.5 with a cell, what the box head learns
   from), and calibration (the fraction of detections that match a cell at IoU 0.5,
   per score bin, for the class score and the objectness score).

    python benchmarks/learning.py diagnostics [--iterations 400 --chunks 4] [overrides]

Prints tables and writes JSON (default benchmarks/results/learning_diagnostics.json).
"""

from __future__ import annotations

import itertools
import tempfile
import time
from pathlib import Path

import harness
import numpy as np
import torch


def profile(cfg, records, class_names, steps: int) -> dict[str, float]:
    """Mean seconds of each part of a training step."""
    from cellstack.data.dataset import TrainCrops, collate
    from cellstack.engine.schedule import combine_losses, loss_weights
    from cellstack.modeling.build import build_model

    torch.manual_seed(0)
    model = build_model(cfg.model, class_names, cfg.predict).train()
    optim = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr)
    data = TrainCrops(
        records,
        class_names,
        crop_size=cfg.data.crop_size,
        augment=cfg.data.augment,
        length=10**6,
        seed=0,
        crop_sampling=cfg.data.crop_sampling,
    )
    parts: dict[str, list[float]] = {}

    def tick(name: str, t0: float) -> float:
        t1 = time.perf_counter()
        parts.setdefault(name, []).append(t1 - t0)
        return t1

    b = cfg.train.batch_size
    for step in range(steps + 1):  # step 0 warms up
        t = time.perf_counter()
        images, targets = collate([data[step * b + j] for j in range(b)])
        t = tick("data", t)
        image_list = model.preprocess(images)
        feats = model.features(image_list)
        t = tick("backbone+fpn", t)
        proposals, rpn_losses = model.rpn(image_list, feats, [dict(x) for x in targets])
        t = tick("rpn", t)
        head = model.roi_heads.losses(
            model.roi_heads.prepare(model.roi_levels(feats)),
            [p.detach() for p in proposals],
            targets,
            image_list.image_sizes,
        )
        t = tick("roi heads", t)
        losses = {
            "rpn_cls": rpn_losses["loss_objectness"],
            "rpn_box": rpn_losses["loss_rpn_box_reg"],
            **head.named(),
        }
        loss = combine_losses(losses, loss_weights(0.0, cfg.train.loss_decay))
        optim.zero_grad()
        loss.backward()
        t = tick("backward", t)
        optim.step()
        tick("optimizer", t)
        if step == 0:
            parts.clear()
    means = {k: float(np.mean(v)) for k, v in parts.items()}
    means["total"] = sum(means.values())
    means["iterations_per_min"] = 60 / means["total"]
    return means


@torch.no_grad()
def learning_state(run: Path, records) -> dict[str, object]:
    """Recall, positives and calibration of a run's latest checkpoint on ``records``."""
    from torchvision.ops import box_iou

    from cellstack.data.dataset import boxes_from_masks, instances_from_labels, load_sample
    from cellstack.modeling.build import build_model
    from cellstack.modeling.detector import image_windows
    from cellstack.modeling.diagnostics import proposal_recall
    from cellstack.modeling.heads.base import BoxParams
    from cellstack.modeling.runfolder import load_run

    cfg, names, state = load_run(run, allow_unfinished=True)
    model = build_model(cfg.model, names, cfg.predict)
    model.load_state_dict(state)
    model.eval()
    recall = {0.5: [], 0.7: []}
    positives, hits = [], {"class": [], "objectness": []}
    for rec in records:
        image, labels = load_sample(rec)
        _, masks = instances_from_labels(labels)
        gt = torch.from_numpy(boxes_from_masks(masks))
        tensor = torch.from_numpy(image.astype(np.float32) / 255)[None]
        r = proposal_recall(model, [tensor], [gt], ious=(0.5, 0.7), top_n=1000)
        for k in recall:
            recall[k].append(r[k] * len(gt))
        image_list = model.preprocess([tensor])
        feats = model.features(image_list)
        windows = image_windows(image_list)
        props = model.propose(image_list, feats)
        if len(gt):
            positives.append(int((box_iou(props[0], gt).max(dim=1).values >= 0.5).sum()))
        roi = model.roi_heads.prepare(model.roi_levels(feats))
        for mode in hits:
            params = BoxParams(0.05, model.box_params.nms_iou, 1000, mode)
            (inst,) = model.detect(roi, props, windows, params)
            if len(inst) == 0:
                continue
            matched = (
                box_iou(inst.boxes, gt).max(dim=1).values >= 0.5
                if len(gt)
                else torch.zeros(len(inst), dtype=torch.bool)
            )
            hits[mode] += list(zip(inst.scores.tolist(), matched.tolist(), strict=True))
    n_gt = sum(len(instances_from_labels(load_sample(r)[1])[0]) for r in records)
    bins = [0.05, 0.3, 0.5, 0.7, 0.9, 1.01]
    calibration = {}
    for mode, pairs in hits.items():
        s = np.array([p[0] for p in pairs])
        m = np.array([p[1] for p in pairs], dtype=bool)
        calibration[mode] = {
            f"{lo:.2f}-{min(hi, 1.0):.2f}": (
                f"{m[(s >= lo) & (s < hi)].mean():.2f} of {int(((s >= lo) & (s < hi)).sum())}"
                if ((s >= lo) & (s < hi)).any()
                else "-"
            )
            for lo, hi in itertools.pairwise(bins)
        }
    return {
        "recall@0.5": sum(recall[0.5]) / n_gt,
        "recall@0.7": sum(recall[0.7]) / n_gt,
        "positives_per_image": float(np.mean(positives)) if positives else 0.0,
        "calibration": calibration,
    }


def main() -> None:
    parser = harness.arguments(__doc__, "learning_diagnostics", threads=None)
    parser.add_argument("--iterations", type=int, default=400)
    parser.add_argument("--chunks", type=int, default=4)
    parser.add_argument("--profile-steps", type=int, default=5)
    parser.add_argument("--work", type=Path)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    from cellstack.config import load_config
    from cellstack.data.layouts import load_dataset
    from cellstack.data.splits import class_names_of
    from cellstack.data.stats import derive, measure
    from cellstack.demo import demo_config_path, run_demo
    from cellstack.engine.trainer import train

    work = args.work or Path(tempfile.mkdtemp(prefix="diag_"))
    # The demo's data and split (training rows in demo_train.csv, the rest held out).
    run_demo(work / "prep", progress=False, overrides=("train.iterations=1",))
    data = work / "prep" / "data"
    train_records = load_dataset(data / "demo_train.csv")
    train_ids = {r.image_id for r in train_records}
    held_out = [r for r in load_dataset(data / "train.csv") if r.image_id not in train_ids]
    cfg = load_config(
        demo_config_path(),
        [*args.overrides, f"train.iterations={args.iterations}", "train.auto_thresholds=false"],
    )
    resolved, _ = derive(cfg, measure(train_records))
    names = class_names_of(train_records)
    prof = profile(resolved, train_records, names, args.profile_steps)
    print("| part | s/step |\n|---|---|")
    for k, v in prof.items():
        print(f"| {k} | {v:.3f} |")

    run = work / "run"
    curve = []
    per_chunk = args.iterations // args.chunks
    for chunk in range(args.chunks):
        if chunk == 0:
            train(cfg, data / "demo_train.csv", run, stop_after=per_chunk, progress=False)
        elif chunk < args.chunks - 1:
            train(
                cfg, data / "demo_train.csv", run, resume=True, stop_after=per_chunk, progress=False
            )
        else:
            train(cfg, data / "demo_train.csv", run, resume=True, progress=False)
        state = learning_state(run, held_out)
        state["iteration"] = (chunk + 1) * per_chunk if chunk < args.chunks - 1 else args.iterations
        curve.append(state)
        print(
            f"iteration {state['iteration']}: recall@0.5 {state['recall@0.5']:.3f}, "
            f"recall@0.7 {state['recall@0.7']:.3f}, positives/image "
            f"{state['positives_per_image']:.1f}",
            flush=True,
        )
    print("\ncalibration at the end (fraction of detections matching a cell, per score bin):")
    for mode, bins in curve[-1]["calibration"].items():
        print(f"  {mode}: " + ", ".join(f"{k}: {v}" for k, v in bins.items()))
    harness.write_report(args.out, {"overrides": args.overrides, "profile": prof, "curve": curve})
    print(f"losses per iteration: {run / 'log.csv'}")


if __name__ == "__main__":
    main()
