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

**Memory.** Images are merged one at a time, and every stage streams over the views
(model x flip), adding each view's outputs to a running sum. A view's FPN features
are kept for the next stage only within ``feature_cache_mb`` (optionally stored as
``feature_dtype``, e.g. float16); beyond it they are computed again when a stage needs
them (the view a stage ends with is always reused by the next). So with the default
budget of 0, the peak holds the models' weights and about one view's features, however
many views there are; a budget that holds every view runs each backbone once per view.

**Weights.** Given ``loaders``, models may arrive as skeletons built on the ``meta``
device (no weights) and are loaded when a stage first needs them. At most
``weights_budget_mb`` of weights stay loaded: the least recently used model is dropped
(back to ``meta``) before another is loaded, and read again from its file when needed.
So an ensemble of dozens of fold runs fits in the memory of a few, at the price of
reading files again; the default (no budget) keeps every model loaded once loaded.

**Cell type.** When some cell type has its own settings or models, a first pass finds
the image's type: the majority label of stages 1-2 run by the ``type_from`` models on
the identity view only (the original used one Mask R-CNN for this); then stages 1-3 run
with that type's models and settings. Models listed only in ``type_from`` take no part
in the merge.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from cellstack.errors import CellstackError
from cellstack.inference.thresholds import majority_type
from cellstack.inference.tta import Flip
from cellstack.inference.views import ViewCache, view_bytes
from cellstack.inference.weights import WeightCache
from cellstack.modeling.anchors import ProposalParams, RPNOutputs, select_proposals
from cellstack.modeling.detector import CellDetector, image_windows
from cellstack.modeling.heads.results import BoxPredictions
from cellstack.modeling.heads.select import BoxParams, select_detections
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


class Ensemble(nn.Module):
    """Three-stage ensemble of detectors over flips (see the module docstring).

    Args:
        models: detectors with the same classes, strides and anchors.
        flips: views of every image (the identity should be one of them).
        rpn_flips: average proposals over flips too (else identity views only).
        settings: default proposal and box selection.
        type_settings: per cell type (class name) settings.
        type_models: per cell type, indices into ``models`` to use instead of the
            default ones.
        default_models: indices of the models that merge images whose type has no
            ``type_models`` entry (default: all but those only in ``type_from``).
        type_from: indices of the models whose identity view decides the cell type
            (default: the first model); used only when a type has its own settings
            or models.
        feature_cache_mb: features of views kept between stages, in MB (0: only the
            view in hand; ``inf``: every view, the fastest and the largest).
        feature_dtype: store kept features as this dtype (e.g. ``torch.float16``).
        loaders: per model, a function that loads its weights into it (with
            ``assign=True``, so a ``meta`` skeleton works); None: the models are
            loaded and stay so.
        weights_budget_mb: with ``loaders``, the most weights kept loaded at once, in
            MB (a model larger than it is still loaded, alone).

    Calling it on images (list of float[C, H, W] in [0, 1]) in eval mode returns, as a
    single :class:`CellDetector` does, one Instances per image with ``boxes``,
    ``scores``, ``classes`` and ``roi_masks``.

    Attributes:
        show_views: show a progress bar over each image's view passes (a view through
            one stage), for ensembles whose one image takes minutes; set for a call by
            :meth:`~cellstack.inference.segmenter.Segmenter.iter_many` with its bar.
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
        default_models: Sequence[int] | None = None,
        type_from: Sequence[int] = (0,),
        feature_cache_mb: float = 0.0,
        feature_dtype: torch.dtype | None = None,
        loaders: Sequence[Callable[[CellDetector], None]] | None = None,
        weights_budget_mb: float = math.inf,
    ) -> None:
        super().__init__()
        if not models:
            raise CellstackError("an ensemble needs at least one model")
        check_compatible(models)
        if not flips:
            raise CellstackError("an ensemble needs at least one flip (use 'none')")
        if not feature_cache_mb >= 0:
            raise CellstackError(f"feature_cache_mb must be >= 0, got {feature_cache_mb}")
        self.models = nn.ModuleList(models)
        self.flips = tuple(flips)
        self.rpn_flips = rpn_flips
        first = models[0]
        self.settings = settings or StageSettings(first.proposal_params, first.box_params)
        self.type_settings = dict(type_settings or {})
        self.type_models = {k: tuple(v) for k, v in (type_models or {}).items()}
        self.type_from = tuple(type_from)
        self.default_models = tuple(
            range(len(models)) if default_models is None else default_models
        )
        self.feature_cache_mb = float(feature_cache_mb)
        self.feature_dtype = feature_dtype
        self.show_views = False
        self.weights = WeightCache(self.models, loaders, weights_budget_mb)
        names = set(self.class_names)
        for key in (*self.type_settings, *self.type_models):
            if key not in names:
                raise CellstackError(
                    f"ensemble settings for cell type {key!r}, but the models' classes are "
                    f"{', '.join(self.class_names)}"
                )
        groups = {**self.type_models, "type_from": self.type_from, "default": self.default_models}
        for key, ids in groups.items():
            if not ids or any(not 0 <= i < len(models) for i in ids):
                raise CellstackError(f"{key}: model indices {list(ids)} out of range")

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.models[0].class_names

    def member(self, index: int) -> CellDetector:
        """Model ``index``, its weights loaded (:meth:`WeightCache.member`)."""
        return self.weights.member(index)

    @property
    def loads(self) -> int:
        """Weight loads so far (how often files were read)."""
        return self.weights.loads

    def _apply(self, fn, recurse: bool = True):
        self.weights.apply(fn, recurse)
        return self

    @property
    def typed(self) -> bool:
        """Whether some cell type has its own settings or models (a type pass runs)."""
        return bool(self.type_settings or self.type_models)

    def identity_flip(self) -> int:
        """The index of the identity view (the first flip when there is none)."""
        return next((i for i, f in enumerate(self.flips) if f.identity), 0)

    def rpn_views(self, models: Sequence[int]) -> list[tuple[int, int]]:
        """The views whose RPN outputs are averaged into proposals."""
        has_identity = any(f.identity for f in self.flips)
        return [
            (m, i)
            for m in models
            for i, f in enumerate(self.flips)
            if self.rpn_flips or f.identity or not has_identity
        ]

    def plan(self, image_size: tuple[int, int] = (520, 704)) -> str:
        """What merging one image of ``image_size`` (H, W) holds: models per stage,
        views, kept features and an estimate of the peak, for ``predict --dry-run``.

        Estimated peak: every model's weights, plus the FPN features of the views kept
        within ``feature_cache_mb`` and of the two views in hand (the one a stage uses,
        the next being computed); the backbone's transient activations and the mask
        head's chunk come on top.
        """
        mb = 2**20
        weights = self.weights.sizes
        view = [view_bytes(m, image_size) for m in self.models]
        dtype = self.feature_dtype or torch.float32
        lines = [
            f"ensemble of {len(self.models)} model(s) x {len(self.flips)} flip(s) "
            f"({', '.join(f.name for f in self.flips)}), one {image_size[1]}x{image_size[0]} image:"
        ]
        passes = []
        if self.typed:
            passes.append(("type pass (identity view)", self.type_from, [self.identity_flip()]))
        groups = {"default": self.default_models, **self.type_models}
        for name, ids in groups.items():
            passes.append((f"merge, {name} images", ids, range(len(self.flips))))
        worst = 0.0
        for name, ids, flips in passes:
            keys = [(m, f) for m in ids for f in flips]
            per_view = [view[m] * dtype.itemsize / 4 for m, _ in keys]
            kept = 0.0
            n_kept = 0
            for b in per_view:
                if kept + b <= self.feature_cache_mb * mb:
                    kept += b
                    n_kept += 1
            held = kept + 2 * max(view[m] for m in ids)
            worst = max(worst, held)
            rpn = len(self.rpn_views(sorted(set(ids)))) if "type" not in name else len(keys)
            lines.append(
                f"  {name}: models {list(ids)}, {len(keys)} views (proposals from {rpn}); "
                f"features {max(view[m] for m in ids) / mb:.0f} MB per view, {n_kept} kept "
                f"({kept / mb:.0f} MB)"
            )
        total_w = sum(weights)
        if self.weights.loaders is None or total_w <= self.weights.budget_mb * mb:
            held_w = total_w
            lines.append(f"  weights: {total_w / mb:.0f} MB ({len(self.models)} models loaded)")
        else:
            held_w = max(self.weights.budget_mb * mb, max(weights))
            lines.append(
                f"  weights: {total_w / mb:.0f} MB in {len(self.models)} models, at most "
                f"{held_w / mb:.0f} MB loaded at once (weights_budget_mb; the least recently "
                "used model is dropped and read from its file again when needed)"
            )
        lines.append(
            f"  estimated peak: {(held_w + worst) / mb:.0f} MB (weights + features held; "
            "backbone activations of the view being computed come on top)"
        )
        return "\n".join(lines)

    @torch.no_grad()
    def forward(self, images: Sequence[torch.Tensor]) -> list[Instances]:
        if self.training:
            raise CellstackError("an ensemble only predicts; call .eval() first")
        return [self._one(image) for image in images]

    def _one(self, image: torch.Tensor) -> Instances:
        """All stages for one image, its views' features within the cache budget."""
        from tqdm import tqdm

        image_list = self.models[0].preprocess([image])
        size = tuple(image_list.tensors.shape[-2:])
        (window,) = image_windows(image_list)
        models, settings = self.default_models, self.settings
        type_keys = [(m, self.identity_flip()) for m in self.type_from] if self.typed else []
        type_passes = self._passes(type_keys, masks=False)
        # The bar's total is set again once the type pass has chosen the models.
        bar = tqdm(
            total=type_passes + self._passes(self._views_of(models)),
            desc="views",
            unit="view",
            leave=False,
            disable=not self.show_views,
        )
        views = ViewCache(
            self.member,
            self.flips,
            image_list,
            self.feature_cache_mb * 2**20,
            self.feature_dtype,
            on_view=bar.update,
        )
        with bar:
            if type_keys:
                _, _, classes = self.merge_boxes(views, type_keys, window, size, self.settings)
                cell_type = majority_type(classes, self.class_names)
                models = self.type_models.get(cell_type, self.default_models)
                settings = self.type_settings.get(cell_type, self.settings)
            every = self._views_of(models)
            bar.total = type_passes + self._passes(every)
            boxes, scores, classes = self.merge_boxes(views, every, window, size, settings)
            masks = self.merge_masks(views, every, size, boxes, classes)
        return Instances(
            (int(window[3]), int(window[2])),
            boxes=boxes,
            scores=scores,
            classes=classes,
            roi_masks=masks,
        )

    def rpn_keys(self, keys: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """Those of the views ``keys`` whose RPN outputs make the proposals."""
        models = sorted({m for m, _ in keys})
        return [k for k in self.rpn_views(models) if k in keys] or keys[:1]

    def _views_of(self, models: Sequence[int]) -> list[tuple[int, int]]:
        """Every view ``(model, flip)`` of ``models``."""
        return [(m, f) for m in models for f in range(len(self.flips))]

    def _passes(self, keys: list[tuple[int, int]], masks: bool = True) -> int:
        """View passes of merging ``keys``: proposals, boxes and (unless the type pass,
        which stops after boxes) masks."""
        return len(self.rpn_keys(keys)) + len(keys) * (2 if masks else 1)

    # ------------------------------------------------------------------ stages
    def merge_boxes(
        self,
        views: ViewCache,
        keys: list[tuple[int, int]],
        window: tuple[float, float, float, float],
        size: tuple[int, int],
        settings: StageSettings,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Stages 1 and 2 over the views ``keys``: ``(boxes, scores, classes)`` after
        box NMS. Proposals come from those of ``keys`` that :meth:`rpn_views` names."""
        models = sorted({m for m, _ in keys})
        rpn_keys = self.rpn_keys(keys)
        objectness = deltas = anchors = None
        for key in views.first_last(rpn_keys):
            raw = views.raw(key)
            model = self.member(key[0])
            out = self.flips[key[1]].rpn(model.rpn_outputs(raw))
            if anchors is None:
                anchors = model.level_anchors(views.image_list, raw)
                objectness, deltas = list(out.objectness), list(out.deltas)
            else:
                objectness = [a + b for a, b in zip(objectness, out.objectness, strict=True)]
                deltas = [a + b for a, b in zip(deltas, out.deltas, strict=True)]
            views.offer(key, raw)
            del raw, out
        n = len(rpn_keys)
        mean = RPNOutputs([o / n for o in objectness], [d / n for d in deltas])
        coder = self.models[models[0]].rpn.box_coder  # holds no weights
        (proposals,) = select_proposals(mean, anchors, coder, [window], settings.proposals)
        probs = boxes = None
        # Stages alternate direction, so each starts with the models the last one ended
        # with (still loaded within the weight budget).
        for key in views.first_last(list(reversed(keys))):
            flip = self.flips[key[1]]
            (pred,) = self.member(key[0]).roi_heads.predict_boxes(
                views.roi(key), [flip.boxes(proposals, size)], [flip.window(window, size)]
            )
            unflipped = flip.boxes(pred.boxes, size)
            probs = pred.probs if probs is None else probs + pred.probs
            boxes = unflipped if boxes is None else boxes + unflipped
        merged = BoxPredictions(proposals, probs / len(keys), boxes / len(keys))
        return select_detections(merged, settings.boxes, window)

    def merge_masks(
        self,
        views: ViewCache,
        keys: list[tuple[int, int]],
        size: tuple[int, int],
        boxes: torch.Tensor,
        classes: torch.Tensor,
    ) -> torch.Tensor:
        """Stage 3 over the views ``keys``: RoI mask probabilities float[N, M, M],
        averaged."""
        total = None
        for key in views.first_last(keys):
            flip = self.flips[key[1]]
            heads = self.member(key[0]).roi_heads
            (m,) = heads.predict_masks(views.roi(key), [flip.boxes(boxes, size)], [classes])
            m = flip.maps(m)
            total = m if total is None else total + m
        return total / len(keys)


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
