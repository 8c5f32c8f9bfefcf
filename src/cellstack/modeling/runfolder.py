"""Model files: ``model.pt`` and ``checkpoint.pt`` in a run folder.

A run folder holds ``config.yaml`` (the resolved config), ``checkpoint.pt`` (everything
needed to resume exactly: model, optimizer, scheduler, AMP scaler, RNG states,
iteration), ``model.pt`` (final weights, class names, config, the training objects'
statistics and the versions that trained it: what ``predict`` loads), ``log.csv`` and
``training.png``. Every file is written atomically, so a kill at any moment leaves the
previous complete checkpoint in place, and every file is loaded with
``weights_only=True``: loading never runs code.

Training (:mod:`cellstack.engine`) writes these files and inference reads them, so the
format lives here, below both.
"""

from __future__ import annotations

from pathlib import Path

import torch

from cellstack.config import Config, config_from_dict, config_to_dict
from cellstack.errors import CellstackError, quote
from cellstack.fileio import atomic_path

CHECKPOINT = "checkpoint.pt"
FINAL = "model.pt"


def versions() -> dict[str, str]:
    """The versions of cellstack and of the libraries that shape its weights."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("cellstack", "torch", "torchvision", "timm"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "unknown"
    return out


def save(obj: dict, path: Path) -> None:
    """``torch.save`` through a temporary file and an atomic rename.

    torch writes into a file object of ours: given a file name, its own writer reports a
    full disk as "unexpected pos ..." instead of the OS's error, which the atomic rename
    turns into the one-line "no space left" naming ``path``."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)


def load(path: Path, *, mmap: bool = False) -> dict:
    """Load a checkpoint written by cellstack, with a clear error when it is not one.

    Only tensors and plain values (dicts, lists, strings, numbers) are accepted
    (``weights_only=True``): a file that needs any other Python object to load could
    run code, and is refused without running it. ``mmap``: map the tensors from the
    file instead of reading them (cheap when only the config and names are needed).
    """
    import pickle

    path = Path(path)
    if not path.is_file():
        raise CellstackError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()
        detail = next((line for line in first if "GLOBAL" in line or "global" in line), "")
        if not detail:  # not a pickle of foreign objects: damaged bytes
            raise CellstackError(
                f"{path}: cannot read checkpoint, the file is corrupt or truncated "
                f"({quote(first[0], 80) if first else 'unpickling failed'})"
            ) from None
        raise CellstackError(
            f"{path}: refused, the file holds Python objects other than tensors and plain "
            f"values, which could run code when loaded ({detail.strip()}); "
            "cellstack loads only its own checkpoints"
        ) from None
    except Exception as exc:
        raise CellstackError(
            f"{path}: cannot read checkpoint ({type(exc).__name__}: {quote(str(exc))})"
        ) from None
    if not isinstance(state, dict):
        raise CellstackError(f"{path}: not a cellstack checkpoint (holds {type(state).__name__})")
    return state


def load_run(
    run: str | Path, *, allow_unfinished: bool = False, mmap: bool = False
) -> tuple[Config, list[str], dict]:
    """:func:`read_run` of the folder ``run`` names (resolved by
    :func:`~cellstack.modeling.builtin.resolve_run`: a path or a built-in's name)."""
    from cellstack.modeling.builtin import resolve_run

    return read_run(resolve_run(run, quiet=True), allow_unfinished=allow_unfinished, mmap=mmap)


def read_run(
    run: Path, *, allow_unfinished: bool = False, mmap: bool = False
) -> tuple[Config, list[str], dict]:
    """``(config, class_names, model_state)`` of a run folder or a built-in model's
    folder, already resolved (``mmap``: see :func:`load`).

    A finished run's ``model.pt`` is used. A run that has only ``checkpoint.pt``
    (training was stopped or is still going) is refused unless ``allow_unfinished``,
    and then used with a warning that says how far it got. A built-in's weights come
    from its safetensors file, its config and names from its json.
    """
    import sys

    from cellstack.modeling.builtin import META, WEIGHTS, is_builtin_folder, read_builtin

    if not run.is_dir():
        raise CellstackError(f"{run}: run folder not found")
    if is_builtin_folder(run):
        path = run
        ckpt, weights = read_builtin(run)
        ckpt["model"] = weights
    elif (run / FINAL).is_file():
        path = run / FINAL
        ckpt = load(path, mmap=mmap)
    elif (run / CHECKPOINT).is_file():
        path = run / CHECKPOINT
        ckpt = load(path, mmap=mmap)
        progress = f"iteration {ckpt.get('iteration', '?')}"
        total = (ckpt.get("config") or {}).get("train", {}).get("iterations")
        progress += f" of {total}" if total else ""
        if not allow_unfinished:
            raise CellstackError(
                f"{run}: training has not finished (no {FINAL}; {CHECKPOINT} at {progress}); "
                f"finish it with `cellstack train DATA --resume {run}`, or pass "
                "--allow-unfinished to use the checkpoint"
            )
        print(f"warning: {run} is unfinished; using {CHECKPOINT} at {progress}", file=sys.stderr)
    elif (run / META).is_file() or (run / WEIGHTS).is_file():
        # A tuned or built-in model folder missing half of its pair of files.
        missing = WEIGHTS if (run / META).is_file() else META
        raise CellstackError(
            f"{run}: a model folder without its {missing} (its weights and model.json "
            "travel together); copy the whole folder again, or write it again with "
            "cellstack tune --out"
        )
    else:
        raise CellstackError(f"{run}: no {FINAL} or {CHECKPOINT} (has training run?)")
    for key in ("config", "class_names", "model"):
        if key not in ckpt:
            raise CellstackError(f"{path}: not a cellstack checkpoint (no {key!r})")
    if isinstance(ckpt["model"], dict):
        bad = next((k for k, v in ckpt["model"].items() if not isinstance(v, torch.Tensor)), None)
        if bad is not None:
            raise CellstackError(f"{path}: weight {quote(str(bad), 80)!r} is not a tensor")
    names = check_class_names(ckpt["class_names"], f"{path}: class_names")
    if not isinstance(ckpt["config"], dict) or not isinstance(ckpt["model"], dict):
        raise CellstackError(f"{path}: not a cellstack checkpoint (config/model not mappings)")
    try:
        cfg = config_from_dict(ckpt["config"])
    except CellstackError as exc:
        raise CellstackError(f"{path}: stored config: {exc}") from None
    return cfg, list(names), ckpt["model"]


def check_class_names(names: object, where: str) -> list[str]:
    """``names`` as stored class names (a non-empty list of strings), else a one-line
    error naming ``where`` (the file and key)."""
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise CellstackError(f"{where} must be a non-empty list of names")
    return names


def load_weights(model: torch.nn.Module, state: dict, where: Path, *, assign: bool = False) -> None:
    """``model.load_state_dict(state, assign=assign)`` with a one-line error when they do
    not fit (e.g. a run whose class names were edited so they no longer match its
    weights). ``assign``: take ``state``'s tensors as the parameters (needed by a model
    built on the ``meta`` device, which holds no values to copy into)."""
    try:
        model.load_state_dict(state, assign=assign)
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0] if lines else ""
        raise CellstackError(
            f"{where}: weights do not fit the model its config and class names describe "
            f"({quote(detail)})"
        ) from None


def final_state(
    weights: dict[str, torch.Tensor],
    cfg: Config,
    class_names: list[str],
    data_stats: dict | None = None,
) -> dict:
    """What ``model.pt`` holds: weights, the resolved config as a dict, class names,
    the training objects' statistics (:class:`~cellstack.data.stats.ObjectStats`) and
    the versions of cellstack, torch, torchvision and timm that trained it. Weights are
    stored contiguous, whatever memory layout training used."""
    state = {
        "model": {k: v.contiguous() for k, v in weights.items()},
        "config": config_to_dict(cfg),
        "class_names": class_names,
        "versions": versions(),
    }
    if data_stats is not None:
        state["data_stats"] = data_stats
    return state


def run_data_stats(run: str | Path) -> dict | None:
    """:func:`read_data_stats` of the folder ``run`` names (a path or a built-in's
    name)."""
    from cellstack.modeling.builtin import resolve_run

    return read_data_stats(resolve_run(run, quiet=True))


def read_data_stats(run: Path) -> dict | None:
    """The training objects' statistics a run (or built-in model) folder, already
    resolved, recorded in its ``data_stats.json``; None when it has none."""
    import json

    path = run / "data_stats.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
