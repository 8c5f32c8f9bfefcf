"""What ``predict`` and ``tune`` run: a training run folder, or an ensemble YAML.

An ensemble YAML lists runs (paths relative to the YAML) and how to merge them::

    models: [runs/cascade_r50, runs/htc_r50, runs/maskrcnn_r50]   # runs or CV folders
    flips: [none, h, v, hv]     # test-time flips (default: none)
    rpn_flips: false            # average proposals over flips too (the original: no)
    type_settings: original     # per-type proposal/box settings: "original" (the
                                # original's for shsy5y/astro/cort), none, or a mapping
                                # {type: {proposals: {...}, boxes: {...}}}
    type_models:                # optional: a subset of the runs for a cell type
      astro: [runs/cascade_r50, runs/htc_r50]
    type_from: [runs/maskrcnn_r50]  # whose identity view decides the type (default:
                                # the first model); used when types have own settings
    feature_cache_mb: 0         # features kept between stages (0: memory stays flat)
    feature_dtype: float32      # or float16 / bfloat16 for kept features
    weights_budget_mb: .inf     # weights loaded at once; a number loads runs when
                                # needed and drops the least recently used
    postprocess:                # optional thresholds (default and per_type)
      default: {score_thresh: 0.3}
      per_type: {astro: {convex_refill: true}}

A CV folder (``cellstack cv``) stands for all its fold runs, as the original loaded
every fold of every model. ``thresholds.yaml`` next to the YAML (or inside a run
folder), as written by ``cellstack tune``, takes precedence over ``postprocess``; a
``predict.key=value`` override then changes that one key alone.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from cellstack.config import (
    Config,
    EnsembleConfig,
    StageSpec,
    ThresholdsSpec,
    build_typed,
    config_from_dict,
    config_to_dict,
    load_yaml,
    unresolved,
)
from cellstack.errors import CellstackError
from cellstack.inference.cvfolder import CVFolder
from cellstack.inference.thresholds import (
    THRESHOLDS,
    Thresholds,
    check_cell_types,
    read_thresholds,
    resolve_thresholds,
)


@dataclass
class Source:
    """A loaded model or ensemble, ready for :class:`~cellstack.inference.predictor.
    Predictor`.

    Attributes:
        model: CellDetector or Ensemble (eval mode, on CPU).
        class_names: the cell types.
        cfg: the (first) run's config, with overrides; its ``predict`` section sets the
            batch size and tiling.
        thresholds: post-processing thresholds per cell type.
        thresholds_path: where ``tune`` writes thresholds for this source (None for a
            model in memory).
        diameter: median diameter (px) of the objects the (first) run trained on, from
            its ``data_stats.json``; None for runs that did not record it.
        largest: the 95th percentile of those objects' longer box side (px), or None:
            what a block overlap must hold (:mod:`cellstack.distributed.blocks`).
        area_p1: the first percentile of those objects' areas (px), or None: where the
            minimum sizes tuning searches start (:meth:`~cellstack.inference.tune.
            TuneGrid.for_objects`).
    """

    model: torch.nn.Module
    class_names: tuple[str, ...]
    cfg: Config
    thresholds: Thresholds
    thresholds_path: Path | None
    diameter: float | None = None
    largest: float | None = None
    area_p1: float | None = None

    @classmethod
    def of_model(
        cls, model: torch.nn.Module, cfg: Config, thresholds: Thresholds | None = None
    ) -> Source:
        """A model in memory (e.g. being trained), with its config's thresholds unless
        ``thresholds`` are given; it has no folder to write thresholds to."""
        thresholds = thresholds or resolve_thresholds(cfg)
        return cls(model, tuple(model.class_names), cfg, thresholds, None)


def load_source(
    path: str | Path, overrides: tuple[str, ...] = (), *, allow_unfinished: bool = False
) -> Source:
    """Load a run folder or an ensemble YAML (see the module docstring).

    ``allow_unfinished``: a run without ``model.pt`` predicts with its latest
    checkpoint (with a warning) instead of being refused.
    """
    from cellstack.modeling.builtin import builtin_names, resolve_run

    path = resolve_run(path)
    if path.suffix == ".onnx":  # said before anything else: the runtime it needs
        from cellstack.inference.onnx import require_onnxruntime

        require_onnxruntime()
    if not path.exists():
        raise CellstackError(
            f"{path}: run folder not found (expected a run folder, CV folder, ensemble YAML "
            f"or a built-in model: {', '.join(builtin_names()) or 'none installed'})"
        )
    if path.is_file() and path.suffix in (".yaml", ".yml"):
        return _load_ensemble(path, overrides, allow_unfinished)
    if path.is_file() and path.suffix == ".onnx":
        return _load_onnx(path, overrides)
    cv = CVFolder.find(path)
    if cv is not None:  # its folds, as one ensemble
        if cv.ensemble_path.is_file():
            return _load_ensemble(cv.ensemble_path, overrides, allow_unfinished)
        # Interrupted before its ensemble.yaml: refused, or the trained folds.
        runs = cv.runs(allow_unfinished=allow_unfinished)
        spec = {"models": [str(r) for r in runs], "type_settings": "none"}
        return _load_ensemble(cv.ensemble_path, overrides, allow_unfinished, spec)
    model, cfg, stats = _load_run(path, overrides, allow_unfinished)
    thresholds = resolve_thresholds(cfg, overrides, tuned=path / THRESHOLDS)
    check_cell_types(thresholds.per_type, model.class_names, path / THRESHOLDS)
    return Source(
        model, model.class_names, cfg, thresholds, path / THRESHOLDS, **trained_sizes(stats, path)
    )


def trained_sizes(stats: dict | None, run: Path) -> dict[str, float | None]:
    """``diameter`` (median), ``largest`` (95th percentile of the longer box side) and
    ``area_p1`` (first percentile of the areas) of the objects a run trained on, in
    pixels, from its ``data_stats.json`` as read
    (:func:`~cellstack.modeling.runfolder.read_data_stats`: ``stats``, None for no
    file); None where not recorded.

    Raises:
        CellstackError: a value is recorded but is no positive finite number (0, NaN,
            text: a file edited by hand), naming the run's file and the key.
    """
    stats = stats or {}

    def number(key: str) -> float | None:
        value = stats.get(key)
        if value is None:
            return None
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value <= 0
        ):
            raise CellstackError(
                f"{run / 'data_stats.json'}: {key} is {value!r}, not a positive size in "
                "pixels; restore the file (training writes it) or delete it and give "
                "scale instead of diameter"
            )
        return float(value)

    return {
        "diameter": number("diameter_median"),
        "largest": number("box_p95"),
        "area_p1": number("area_p1"),
    }


def _load_run(
    run: Path, overrides: tuple[str, ...], allow_unfinished: bool = False, lazy: bool = False
):
    """``(model, config, data_stats)`` of a run folder, already resolved (its files
    read once); ``lazy``: the model is a skeleton on the ``meta`` device (no weights
    read) and :func:`_weights_loader` fills it later."""
    from cellstack.modeling.build import build_trained
    from cellstack.modeling.runfolder import load_weights, read_data_stats, read_run

    cfg, class_names, state = read_run(run, allow_unfinished=allow_unfinished, mmap=lazy)
    stats = read_data_stats(run)
    if overrides:
        cfg = config_from_dict(config_to_dict(cfg), overrides)
        left = unresolved(cfg)
        if left:
            raise CellstackError(
                f"{left[0]}=auto: 'auto' is derived from the training data when training "
                "starts; give a number to predict with"
            )
    if lazy:
        with torch.device("meta"):
            return build_trained(cfg, class_names, stats).eval(), cfg, stats
    try:
        model = build_trained(cfg, class_names, stats)
        load_weights(model, state, run)
    except CellstackError as exc:
        changed = [o for o in overrides if o.strip().startswith("model.")]
        if not changed:
            raise
        # The weights fixed the architecture when they were trained: name what changed it.
        raise CellstackError(
            f"{', '.join(changed)}: {run}'s weights do not fit the model this override "
            "describes (a trained model's architecture is fixed by its weights; when "
            "predicting, override predict.* settings)"
        ) from exc
    return model.eval(), cfg, stats


def _load_onnx(path: Path, overrides: tuple[str, ...]) -> Source:
    """An exported model (:mod:`~cellstack.inference.onnx`): its networks in
    onnxruntime, the rest of the detector built from the config in its metadata."""
    from cellstack.inference.onnx import OrtGraph, attach, read_metadata
    from cellstack.modeling.build import build_trained
    from cellstack.modeling.runfolder import check_class_names

    changed = [o for o in overrides if not o.strip().startswith("predict.")]
    if changed:
        raise CellstackError(
            f"{changed[0]}: an exported model's architecture is fixed; override predict.* "
            "settings only"
        )
    graph = OrtGraph(path)
    meta = read_metadata(graph)
    try:
        cfg = config_from_dict(meta["config"], overrides)
        names = check_class_names(meta["class_names"], "class_names")
        stats = meta["data_stats"] or None
        model = build_trained(cfg, names, stats)
        tuned = Thresholds.from_dict(meta["thresholds"], f"{path} (its thresholds)")
    except CellstackError as exc:
        raise CellstackError(f"{path}: metadata: {exc}") from None
    thresholds = resolve_thresholds(cfg, overrides, tuned=tuned)
    check_cell_types(thresholds.per_type, names, path)
    model = attach(model, graph).eval()
    return Source(model, tuple(names), cfg, thresholds, None, **trained_sizes(stats, path))


def _weights_loader(run: Path, allow_unfinished: bool):
    """A function that reads ``run``'s weights into its model (see ``Ensemble``)."""
    from cellstack.modeling.runfolder import load_weights, read_run

    def load(model: torch.nn.Module) -> None:
        _, _, state = read_run(run, allow_unfinished=allow_unfinished)
        load_weights(model, state, run, assign=True)

    return load


def _load_ensemble(
    path: Path, overrides: tuple[str, ...], allow_unfinished: bool, data: dict | None = None
) -> Source:
    """The ensemble of the YAML at ``path``, or of ``data`` (its contents) when given."""
    from cellstack.inference.ensemble import ORIGINAL_TYPE_SETTINGS, Ensemble
    from cellstack.inference.tta import parse_flips

    if data is None:
        data = load_yaml(path, "ensemble file")
    if not isinstance(data, dict):
        raise CellstackError(f"{path}: expected a mapping with 'models'")
    spec = build_typed(EnsembleConfig, data, str(path))
    base = path.parent
    try:
        flips = parse_flips(list(spec.flips))
    except CellstackError as exc:
        raise CellstackError(f"{path}: flips: {exc}") from None
    # Thresholds are checked before any model loads: a typo fails in a second.
    post = spec.postprocess if spec.postprocess != ThresholdsSpec() else None
    if post is not None:
        Thresholds.from_dict(asdict(post), f"{path}: postprocess")
    tpath = base / THRESHOLDS
    tuned = read_thresholds(tpath) if tpath.is_file() else None
    resolved = [run for r in spec.models for run in _runs_of(r, base, allow_unfinished)]
    merged = len(resolved)  # runs in `models`; type_from may add runs that only type
    type_from = []
    for r in spec.type_from or spec.models[:1]:
        for full in _runs_of(r, base, allow_unfinished):
            if full not in resolved:
                resolved.append(full)
            type_from.append(resolved.index(full))
    # A member's own tuned thresholds are checked like the ensemble's; the first
    # member's are where the ensemble's post-processing starts from (a tuned folder
    # counts as its thresholds.yaml, as it would alone).
    member_tuned = [
        read_thresholds(r / THRESHOLDS) if (r / THRESHOLDS).is_file() else None for r in resolved
    ]
    # With a weight budget, runs are skeletons until a stage needs them.
    lazy = math.isfinite(spec.weights_budget_mb)
    loaded = [_load_run(r, overrides, allow_unfinished, lazy) for r in resolved]
    models = [m for m, _, _ in loaded]
    cfg = loaded[0][1]
    names = models[0].class_names

    ts = spec.type_settings
    if ts == "original":
        type_settings = {k: v for k, v in ORIGINAL_TYPE_SETTINGS.items() if k in names}
    elif ts == "none":
        type_settings = {}
    else:
        type_settings = {
            k: _stage_settings(v, models[0], f"{path}: type_settings.{k}") for k, v in ts.items()
        }
    type_models = {}
    for cell_type, subset in spec.type_models.items():
        idx = []
        for r in subset:
            for full in _runs_of(r, base, allow_unfinished):
                if full not in resolved[:merged]:
                    raise CellstackError(
                        f"{path}: type_models.{cell_type}: {r} is not one of 'models'"
                    )
                idx.append(resolved.index(full))
        type_models[cell_type] = idx
    ensemble = Ensemble(
        models,
        flips=flips,
        rpn_flips=spec.rpn_flips,
        type_settings=type_settings,
        type_models=type_models,
        default_models=range(merged),
        type_from=type_from,
        feature_cache_mb=spec.feature_cache_mb,
        feature_dtype=None
        if spec.feature_dtype == "float32"
        else getattr(torch, spec.feature_dtype),
        loaders=[_weights_loader(r, allow_unfinished) for r in resolved] if lazy else None,
        weights_budget_mb=spec.weights_budget_mb,
    ).eval()
    if post is not None:
        check_cell_types(post.per_type, names, f"{path}: postprocess")
    if tuned is not None:
        check_cell_types(tuned.per_type, names, tpath)
    for run, own in zip(resolved, member_tuned, strict=True):
        if own is not None:
            check_cell_types(own.per_type, names, run / THRESHOLDS)
    thresholds = resolve_thresholds(
        cfg,
        overrides,
        post=post,
        post_source=f"{path}: postprocess",
        tuned=tuned,
        base=member_tuned[0],
    )
    sizes = trained_sizes(loaded[0][2], resolved[0])
    return Source(ensemble, names, cfg, thresholds, tpath, **sizes)


def _runs_of(spec: str, base: Path, allow_unfinished: bool) -> list[Path]:
    """The run ``spec`` (relative to ``base``, or a built-in's name) itself, or every
    fold run of a CV folder (resolved paths)."""
    from cellstack.modeling.builtin import resolve_run

    path = resolve_run(spec, base)
    cv = CVFolder.find(path)
    return cv.runs(allow_unfinished=allow_unfinished) if cv else [path.resolve()]


def _stage_settings(spec: StageSpec, model, where: str):
    """One cell type's proposal and box selection: the model's own, with the YAML's
    keys on top (typed and checked as the model's)."""
    from cellstack.inference.ensemble import StageSettings

    out = StageSettings(model.proposal_params, model.box_params)
    for part in ("proposals", "boxes"):
        values = getattr(spec, part)
        current = getattr(out, part)
        typed = build_typed(type(current), {**asdict(current), **values}, f"{where}.{part}")
        out = replace(out, **{part: typed})
    return out
