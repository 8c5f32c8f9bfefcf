"""Several detectors and flips merged at three stages, as the original solution did.

1. **Proposals**: every model's RPN logits and box deltas, un-flipped onto the original
   anchor grid, are averaged per FPN level (over models, and over flips when
   ``rpn_flips``; the original used the identity view only), then decoded and NMS-ed
   once.
2. **Boxes**: every model and flip scores the same proposals with its box head(s)
   (cascades through their stages); class probabilities and un-flipped decoded boxes
   are averaged proposal by proposal, then one class-agnostic NMS selects detections.
3. **Masks**: every model and flip predicts RoI mask probabilities for the selected
   boxes; un-flipped, they are averaged before anything is pasted.

No box-fusion heuristic is needed: every model sees the same proposals, so outputs
align by index.

Per cell type: the image's type is the majority label of a first pass with the default
settings and models; when that type has its own settings or models, stages 1-3 run
again with them (the backbone features are computed once and reused).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torchvision.models.detection.image_list import ImageList

from cellstack.errors import CellstackError
from cellstack.inference.postprocess import majority_type
from cellstack.inference.tta import Flip
from cellstack.modeling.anchors import ProposalParams, RPNOutputs, select_proposals
from cellstack.modeling.detector import CellDetector, image_windows
from cellstack.modeling.heads.base import BoxParams, BoxPredictions, RoIFeatures, select_detections
from cellstack.structures import Instances


@dataclass(frozen=True)
class StageSettings:
    """Proposal and box selection of one cell type (or the default)."""

    proposals: ProposalParams = field(default_factory=ProposalParams)
    boxes: BoxParams = field(default_factory=BoxParams)


# The original's ENSEMBLE_CONFIG_ENS (order shsy5y / astro / cort); max_per_img None.
ORIGINAL_TYPE_SETTINGS = {
    "shsy5y": StageSettings(ProposalParams(5000, 0.7, 0.9, None), BoxParams(0.2, 0.7)),
    "astro": StageSettings(ProposalParams(2000, 0.75, 0.9, None), BoxParams(0.25, 0.9)),
    "cort": StageSettings(ProposalParams(1000, 0.6, 0.95, None), BoxParams(0.5, 0.6)),
}


@dataclass
class View:
    """One model on one flip of the batch (features computed once)."""

    model: int
    flip: Flip
    feats: RoIFeatures
    rpn: RPNOutputs | None  # un-flipped; None when not used for proposals


class Ensemble(nn.Module):
    """Three-stage ensemble of detectors over flips (see the module docstring).

    Args:
        models: detectors with the same classes, strides and anchors.
        flips: views of every image (the identity should be one of them).
        rpn_flips: average proposals over flips too (else identity views only).
        settings: default proposal and box selection.
        type_settings: per cell type (class name) settings.
        type_models: per cell type, indices into ``models`` to use instead of all.

    Calling it on images (list of float[C, H, W] in [0, 1]) in eval mode returns, as a
    single :class:`CellDetector` does, one Instances per image with ``boxes``,
    ``scores``, ``labels`` and ``roi_masks``.
    """

    def __init__(
        self,
        models: Sequence[CellDetector],
        *,
        flips: Sequence[Flip] = (Flip(),),
        rpn_flips: bool = False,
        settings: StageSettings | None = None,
        type_settings: Mapping[str, StageSettings] | None = None,
        type_models: Mapping[str, Sequence[int]] | None = None,
    ) -> None:
        super().__init__()
        if not models:
            raise CellstackError("an ensemble needs at least one model")
        check_compatible(models)
        if not flips:
            raise CellstackError("an ensemble needs at least one flip (use 'none')")
        self.models = nn.ModuleList(models)
        self.flips = tuple(flips)
        self.rpn_flips = rpn_flips
        first = models[0]
        self.settings = settings or StageSettings(first.proposal_params, first.box_params)
        self.type_settings = dict(type_settings or {})
        self.type_models = {k: tuple(v) for k, v in (type_models or {}).items()}
        names = set(self.class_names)
        for key in (*self.type_settings, *self.type_models):
            if key not in names:
                raise CellstackError(
                    f"ensemble settings for cell type {key!r}, but the models' classes are "
                    f"{', '.join(self.class_names)}"
                )
        for key, ids in self.type_models.items():
            if not ids or any(not 0 <= i < len(models) for i in ids):
                raise CellstackError(f"cell type {key!r}: model indices {list(ids)} out of range")

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.models[0].class_names

    @torch.no_grad()
    def forward(self, images: Sequence[torch.Tensor]) -> list[Instances]:
        if self.training:
            raise CellstackError("an ensemble only predicts; call .eval() first")
        image_list = self.models[0].preprocess(images)
        size = tuple(image_list.tensors.shape[-2:])
        views, anchors = self.views(image_list)
        out = []
        for b, window in enumerate(image_windows(image_list)):
            all_models = tuple(range(len(self.models)))
            boxes, scores, labels = self.merge_boxes(
                views, anchors, b, window, size, all_models, self.settings
            )
            cell_type = majority_type(labels, self.class_names)
            models = self.type_models.get(cell_type, all_models)
            if cell_type in self.type_settings or cell_type in self.type_models:
                settings = self.type_settings.get(cell_type, self.settings)
                boxes, scores, labels = self.merge_boxes(
                    views, anchors, b, window, size, models, settings
                )
            masks = self.merge_masks(views, b, size, models, boxes, labels)
            out.append(
                Instances(
                    (int(window[3]), int(window[2])),
                    boxes=boxes,
                    scores=scores,
                    labels=labels,
                    roi_masks=masks,
                )
            )
        return out

    # ------------------------------------------------------------------ stages
    def views(self, image_list: ImageList) -> tuple[list[View], list[torch.Tensor]]:
        """Features (and un-flipped RPN outputs) of every model x flip of a padded
        batch, and the per-level anchors of the batch."""
        views, anchors = [], None
        for m, model in enumerate(self.models):
            for flip in self.flips:
                flipped = ImageList(flip.maps(image_list.tensors), image_list.image_sizes)
                feats = model.features(flipped)
                use_rpn = self.rpn_flips or flip.identity or not any(f.identity for f in self.flips)
                rpn = flip.rpn(model.rpn_outputs(feats)) if use_rpn else None
                if anchors is None:
                    anchors = model.level_anchors(image_list, feats)
                views.append(View(m, flip, model.roi_heads.prepare(model.roi_levels(feats)), rpn))
        return views, anchors

    def merge_boxes(
        self,
        views: list[View],
        anchors: list[torch.Tensor],
        b: int,
        window: tuple[float, float, float, float],
        size: tuple[int, int],
        models: tuple[int, ...],
        settings: StageSettings,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Stages 1 and 2 for image ``b``: ``(boxes, scores, labels)`` after box NMS."""
        used = [v for v in views if v.model in models]
        rpn = [v.rpn for v in used if v.rpn is not None]
        mean = RPNOutputs(
            [_mean([r.objectness[lvl][b : b + 1] for r in rpn]) for lvl in range(len(anchors))],
            [_mean([r.deltas[lvl][b : b + 1] for r in rpn]) for lvl in range(len(anchors))],
        )
        coder = self.models[models[0]].rpn.box_coder
        (proposals,) = select_proposals(mean, anchors, coder, [window], settings.proposals)
        probs, boxes = [], []
        for v in used:
            heads = self.models[v.model].roi_heads
            (pred,) = heads.predict_boxes(
                v.feats.image(b),
                [v.flip.boxes(proposals, size)],
                [v.flip.window(window, size)],
            )
            probs.append(pred.probs)
            boxes.append(v.flip.boxes(pred.boxes, size))
        merged = BoxPredictions(proposals, _mean(probs), _mean(boxes))
        return select_detections(merged, settings.boxes)

    def merge_masks(
        self,
        views: list[View],
        b: int,
        size: tuple[int, int],
        models: tuple[int, ...],
        boxes: torch.Tensor,
        labels: torch.Tensor,
    ) -> torch.Tensor:
        """Stage 3 for image ``b``: RoI mask probabilities float[N, M, M], averaged."""
        masks = []
        for v in views:
            if v.model not in models:
                continue
            heads = self.models[v.model].roi_heads
            (m,) = heads.predict_masks(v.feats.image(b), [v.flip.boxes(boxes, size)], [labels])
            masks.append(v.flip.maps(m))
        return _mean(masks)


def _mean(tensors: list[torch.Tensor]) -> torch.Tensor:
    return tensors[0] if len(tensors) == 1 else torch.stack(tensors).mean(0)


def check_compatible(models: Sequence[CellDetector]) -> None:
    """Models must share classes, FPN strides and anchors to merge proposals."""
    first = models[0]
    ref = _anchor_signature(first)
    for i, m in enumerate(models[1:], start=1):
        if m.class_names != first.class_names:
            raise CellstackError(
                f"ensemble model {i} has classes {', '.join(m.class_names)}, model 0 has "
                f"{', '.join(first.class_names)}"
            )
        sig = _anchor_signature(m)
        if sig != ref:
            raise CellstackError(
                f"ensemble model {i} has anchors/levels {sig}, model 0 has {ref}: proposals "
                "can only be averaged over models with the same anchors and FPN strides"
            )


def _anchor_signature(model: CellDetector) -> dict:
    gen = model.rpn.anchor_generator
    return {
        "strides": tuple(model.backbone.strides),
        "sizes": tuple(tuple(s) for s in gen.sizes),
        "aspect_ratios": tuple(tuple(a) for a in gen.aspect_ratios),
    }
