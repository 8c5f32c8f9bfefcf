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
    postprocess:                # optional thresholds (default and per_type)
      default: {score_thresh: 0.3}
      per_type: {astro: {convex_refill: true}}

A CV folder (``cellstack cv``) stands for all its fold runs, as the original loaded
every fold of every model. ``thresholds.yaml`` next to the YAML (or inside a run
folder), as written by ``cellstack tune``, takes precedence over ``postprocess``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch

from cellstack.config import Config, config_from_dict, config_to_dict
from cellstack.errors import CellstackError
from cellstack.inference.postprocess import Thresholds

THRESHOLDS = "thresholds.yaml"


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
        thresholds_path: where ``tune`` writes thresholds for this source.
    """

    model: torch.nn.Module
    class_names: tuple[str, ...]
    cfg: Config
    thresholds: Thresholds
    thresholds_path: Path


def load_source(path: str | Path, overrides: tuple[str, ...] = ()) -> Source:
    """Load a run folder or an ensemble YAML (see the module docstring)."""
    path = Path(path)
    if path.is_file() and path.suffix in (".yaml", ".yml"):
        return _load_ensemble(path, overrides)
    if path.is_dir() and (path / "ensemble.yaml").is_file() and not (path / "model.pt").is_file():
        return _load_ensemble(path / "ensemble.yaml", overrides)  # a CV folder: its folds
    model, cfg = _load_run(path, overrides)
    return Source(model, model.class_names, cfg, folder_thresholds(path, cfg), path / THRESHOLDS)


def folder_thresholds(folder: Path, cfg: Config) -> Thresholds:
    """A run's or CV's thresholds: its ``thresholds.yaml`` (``cellstack tune``) when
    present, else the post-processing of its config."""
    from cellstack.inference.run import params_from

    if (folder / THRESHOLDS).is_file():
        return read_thresholds(folder / THRESHOLDS)
    return Thresholds(params_from(cfg.predict))


def _load_run(run: Path, overrides: tuple[str, ...]):
    from cellstack.engine.checkpoint import load_run
    from cellstack.modeling.build import build_model

    cfg, class_names, state = load_run(run)
    if overrides:
        cfg = config_from_dict(config_to_dict(cfg), overrides)
    model = build_model(cfg.model, class_names, cfg.predict)
    model.load_state_dict(state)
    return model.eval(), cfg


def read_thresholds(path: Path) -> Thresholds:
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise CellstackError(f"{path}: not valid YAML ({e})") from e
    return Thresholds.from_dict(data, str(path))


def write_thresholds(path: Path, thresholds: Thresholds, comment: str = "") -> None:
    import yaml

    from cellstack.fileio import atomic_write

    with atomic_write(path) as f:
        if comment:
            f.write("".join(f"# {line}\n" for line in comment.splitlines()))
        yaml.safe_dump(thresholds.to_dict(), f, sort_keys=False)


_ENSEMBLE_KEYS = {"models", "flips", "rpn_flips", "type_settings", "type_models", "postprocess"}


def _load_ensemble(path: Path, overrides: tuple[str, ...]) -> Source:
    import yaml

    from cellstack.inference.ensemble import ORIGINAL_TYPE_SETTINGS, Ensemble
    from cellstack.inference.run import params_from
    from cellstack.inference.tta import parse_flips

    try:
        spec = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise CellstackError(f"{path}: not valid YAML ({e})") from e
    if not isinstance(spec, dict):
        raise CellstackError(f"{path}: expected a mapping with 'models'")
    bad = sorted(set(spec) - _ENSEMBLE_KEYS)
    if bad:
        raise CellstackError(
            f"{path}: unknown key {bad[0]} (known: {', '.join(sorted(_ENSEMBLE_KEYS))})"
        )
    runs = spec.get("models") or []
    if not runs:
        raise CellstackError(f"{path}: 'models' must list at least one run folder")
    base = path.parent
    resolved = [run for r in runs for run in _runs_of(base / r)]
    loaded = [_load_run(r, overrides) for r in resolved]
    models = [m for m, _ in loaded]
    cfg = loaded[0][1]
    names = models[0].class_names

    ts = spec.get("type_settings", "original")
    if ts in ("original", None, "none"):
        type_settings = (
            {k: v for k, v in ORIGINAL_TYPE_SETTINGS.items() if k in names}
            if ts == "original"
            else {}
        )
    elif isinstance(ts, dict):
        type_settings = {
            k: _stage_settings(v, models[0], f"{path}: type_settings.{k}") for k, v in ts.items()
        }
    else:
        raise CellstackError(f"{path}: type_settings must be 'original', 'none' or a mapping")
    type_models = {}
    for cell_type, subset in (spec.get("type_models") or {}).items():
        idx = []
        for r in subset:
            for full in _runs_of(base / r):
                if full not in resolved:
                    raise CellstackError(
                        f"{path}: type_models.{cell_type}: {r} is not one of 'models'"
                    )
                idx.append(resolved.index(full))
        type_models[cell_type] = idx
    ensemble = Ensemble(
        models,
        flips=parse_flips(spec.get("flips") or ["none"]),
        rpn_flips=bool(spec.get("rpn_flips", False)),
        type_settings=type_settings,
        type_models=type_models,
    ).eval()
    thresholds = Thresholds(params_from(cfg.predict))
    if spec.get("postprocess"):
        post = spec["postprocess"]
        default = {**thresholds.to_dict()["default"], **(post.get("default") or {})}
        thresholds = Thresholds.from_dict({**post, "default": default}, str(path))
    tpath = base / THRESHOLDS
    if tpath.is_file():
        thresholds = read_thresholds(tpath)
    return Source(ensemble, names, cfg, thresholds, tpath)


def _runs_of(path: Path) -> list[Path]:
    """A run folder itself, or every fold run of a CV folder (resolved paths)."""
    path = path.resolve()
    folds = sorted(path.glob("fold*/model.pt")) if (path / "folds.csv").is_file() else []
    if folds and not (path / "model.pt").is_file():
        return [f.parent for f in folds]
    return [path]


def _stage_settings(data: dict, model, where: str):
    from cellstack.inference.ensemble import StageSettings

    out = StageSettings(model.proposal_params, model.box_params)
    for part in ("proposals", "boxes"):
        values = (data or {}).get(part) or {}
        current = getattr(out, part)
        known = {f.name for f in fields(current)}
        bad = sorted(set(values) - known)
        if bad:
            raise CellstackError(
                f"{where}.{part}: unknown key {bad[0]} (known: {', '.join(sorted(known))})"
            )
        out = replace(out, **{part: replace(current, **values)})
    return out
