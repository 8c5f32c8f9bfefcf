"""Single model vs flip TTA vs our three-stage ensemble vs weighted boxes fusion.

On held-out annotated images (one fold of DATA/folds.csv), with trained runs (e.g. the
three runs benchmarks/learning.py arch leaves in its --work folder):

- ``single ARCH``: each run alone (the best is marked);
- ``best + 4 flips``: the best run with flips none/h/v/hv, merged at three stages;
- ``ours NxF``: every run x 4 flips, merged at three stages, proposals averaged over
  models only (the original) and over models and flips (``rpn_flips``);
- ``ours NxF, original per-type``: as above with the original's per-type RPN/box
  settings (shsy5y/astro/cort);
- ``WBF NxF``: every run x flip predicts on its own (its own proposals and boxes, un-
  flipped); the boxes are fused by weighted boxes fusion (``ensemble-boxes``), then the
  masks of every run x flip on the fused boxes are averaged (our stage 3).

All share the post-processing thresholds of the first run's config. Prints score, AP,
AP50 and s/image (batch 1, after one warm-up image) and writes JSON (default
benchmarks/results/ensemble_compare.json). Needs ``pip install ensemble-boxes``.

    python benchmarks/learning.py ensembles DATA --fold 0 --runs RUN1 RUN2 RUN3
"""

from __future__ import annotations

import time
from pathlib import Path

import harness
import numpy as np
import torch
from torch import nn


class WBFEnsemble(nn.Module):
    """Each model x flip detects alone; boxes fused by WBF; masks averaged on them."""

    def __init__(self, ensemble, iou_thr: float = 0.55) -> None:
        super().__init__()
        self.ensemble = ensemble
        self.iou_thr = iou_thr
        self.class_names = ensemble.class_names

    @torch.no_grad()
    def forward(self, images):
        return [self._one(image) for image in images]

    def _one(self, image):
        from ensemble_boxes import weighted_boxes_fusion

        from cellstack.inference.views import ViewCache
        from cellstack.modeling.detector import image_windows
        from cellstack.structures import Instances

        ens = self.ensemble
        image_list = ens.models[0].preprocess([image])
        size = tuple(image_list.tensors.shape[-2:])
        (window,) = image_windows(image_list)
        h, w = window[3], window[2]
        views = ViewCache(ens.member, ens.flips, image_list, 0.0, ens.feature_dtype)
        every = [(m, i) for m in range(len(ens.models)) for i in range(len(ens.flips))]
        norm = torch.tensor([w, h, w, h])
        boxes_l, scores_l, classes_l = [], [], []
        for key in every:  # one view alone: its own proposals and boxes, un-flipped
            bx, sc, cl = ens.merge_boxes(views, [key], window, size, ens.settings)
            boxes_l.append((bx / norm).clamp(0, 1).numpy())
            scores_l.append(sc.numpy())
            classes_l.append(cl.numpy())
        fb, fs, fl = weighted_boxes_fusion(
            boxes_l, scores_l, classes_l, iou_thr=self.iou_thr, skip_box_thr=0.0
        )
        boxes = torch.from_numpy(fb * np.array([w, h, w, h])).float()
        classes = torch.from_numpy(fl).long()
        masks = ens.merge_masks(views, every, size, boxes, classes)
        return Instances(
            (int(h), int(w)),
            boxes=boxes,
            scores=torch.from_numpy(fs).float(),
            classes=classes,
            roi_masks=masks,
        )


def main() -> None:
    parser = harness.arguments(__doc__, "ensemble_compare", threads=None)
    parser.add_argument("data", type=Path, help="annotated data with folds.csv")
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--runs", type=Path, nargs="+", required=True)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    from cellstack.data.dataset import load_sample
    from cellstack.data.folds import read_folds_csv
    from cellstack.data.layouts import load_dataset
    from cellstack.data.masks import pixels_to_sparse
    from cellstack.evaluation.report import evaluate
    from cellstack.inference.ensemble import ORIGINAL_TYPE_SETTINGS, Ensemble
    from cellstack.inference.postprocess import PostprocessParams
    from cellstack.inference.predictor import Predictor
    from cellstack.inference.sources import load_source
    from cellstack.inference.thresholds import Thresholds
    from cellstack.inference.tta import FLIPS

    folds = read_folds_csv(args.data / "folds.csv")
    records = [r for r in load_dataset(args.data) if folds.get(r.image_id) == args.fold]
    images = [load_sample(r)[0] for r in records]
    sources = [load_source(r) for r in args.runs]
    models = [s.model for s in sources]
    names = [f"{s.cfg.model.arch}" for s in sources]
    thresholds = Thresholds(PostprocessParams.of(sources[0].cfg.predict))
    flips = tuple(FLIPS.values())

    def run(model) -> tuple[dict, float]:
        predictor = Predictor(model, thresholds, device=args.device, batch_size=1)
        predictor(images[:1])  # warm-up
        t0 = time.perf_counter()
        preds = {}
        for rec, image in zip(records, images, strict=True):
            (cells,) = predictor([image])
            preds[rec.image_id] = pixels_to_sparse(cells.pixels, cells.image_size)
        seconds = (time.perf_counter() - t0) / len(images)
        report = evaluate(records, preds)
        return {"score": report.score, "ap": report.ap, "ap50": report.ap50}, seconds

    rows = []

    def add(name: str, model) -> dict:
        print(f"running {name}", flush=True)
        metrics, seconds = run(model)
        row = {"method": name, **metrics, "s_per_image": seconds}
        rows.append(row)
        return row

    singles = [add(f"single {n}", Ensemble([m]).eval()) for n, m in zip(names, models, strict=True)]
    best = max(range(len(models)), key=lambda i: singles[i]["score"])
    singles[best]["method"] += " (best)"
    add(f"best ({names[best]}) + 4 flips", Ensemble([models[best]], flips=flips).eval())
    n = f"{len(models)}x4"
    add(f"ours {n}, proposals over models", Ensemble(models, flips=flips).eval())
    add(
        f"ours {n}, proposals over models+flips",
        Ensemble(models, flips=flips, rpn_flips=True).eval(),
    )
    typed = {k: v for k, v in ORIGINAL_TYPE_SETTINGS.items() if k in models[0].class_names}
    add(
        f"ours {n}, original per-type settings",
        Ensemble(models, flips=flips, type_settings=typed).eval(),
    )
    add(
        f"WBF {n} + mask averaging",
        WBFEnsemble(Ensemble(models, flips=flips, rpn_flips=True)).eval(),
    )

    print(f"\n{len(records)} held-out images (fold {args.fold}), {args.device}")
    print(f"{'method':<44}{'score':>8}{'AP':>8}{'AP50':>8}{'s/img':>8}")
    for r in rows:
        print(
            f"{r['method']:<44}{r['score']:>8.4f}{r['ap']:>8.4f}{r['ap50']:>8.4f}{r['s_per_image']:>8.2f}"
        )
    meta = {"runs": [str(r) for r in args.runs], "fold": args.fold, "images": len(records)}
    harness.write_report(args.out, {"meta": meta, "rows": rows})


if __name__ == "__main__":
    main()
