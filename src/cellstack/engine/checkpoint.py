"""Run folders and checkpoints.

A run folder holds ``config.yaml`` (the resolved config), ``checkpoint.pt`` (everything
needed to resume exactly: model, optimizer, scheduler, AMP scaler, RNG states,
iteration), ``model.pt`` (final weights, class names and config: what ``predict``
loads), ``log.csv`` and ``training.png``. Every file is written atomically, so a kill at
any moment leaves the previous complete checkpoint in place.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cellstack.config import Config, config_from_dict, config_to_dict
from cellstack.errors import CellstackError
from cellstack.fileio import atomic_path

CHECKPOINT = "checkpoint.pt"
FINAL = "model.pt"


def save(obj: dict, path: Path) -> None:
    """``torch.save`` through a temporary file and an atomic rename."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def rng_state() -> dict[str, Any]:
    # Only torch's generators: our data sampling draws from per-sample generators
    # seeded by (seed, index), so numpy's and Python's global states are never used.
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load(path: Path) -> dict:
    """Load a checkpoint written by cellstack, with a clear error when it is not one.

    Only tensors and plain values (dicts, lists, strings, numbers) are accepted
    (``weights_only=True``): a file that needs any other Python object to load could
    run code, and is refused without running it.
    """
    import pickle

    path = Path(path)
    if not path.is_file():
        raise CellstackError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()
        detail = next((line for line in first if "GLOBAL" in line or "global" in line), "")
        raise CellstackError(
            f"{path}: refused, the file holds Python objects other than tensors and plain "
            f"values, which could run code when loaded ({detail.strip() or 'unsupported'}); "
            "cellstack loads only its own checkpoints"
        ) from None
    except Exception as exc:
        raise CellstackError(
            f"{path}: cannot read checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0]})"
        ) from None
    if not isinstance(state, dict):
        raise CellstackError(f"{path}: not a cellstack checkpoint (holds {type(state).__name__})")
    return state


def load_run(run: str | Path, *, allow_unfinished: bool = False) -> tuple[Config, list[str], dict]:
    """``(config, class_names, model_state)`` of a run folder.

    A finished run's ``model.pt`` is used. A run that has only ``checkpoint.pt``
    (training was stopped or is still going) is refused unless ``allow_unfinished``,
    and then used with a warning that says how far it got.
    """
    import sys

    run = Path(run)
    if not run.is_dir():
        raise CellstackError(f"{run}: run folder not found")
    if (run / FINAL).is_file():
        path = run / FINAL
        ckpt = load(path)
    elif (run / CHECKPOINT).is_file():
        path = run / CHECKPOINT
        ckpt = load(path)
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
    else:
        raise CellstackError(f"{run}: no {FINAL} or {CHECKPOINT} (has training run?)")
    for key in ("config", "class_names", "model"):
        if key not in ckpt:
            raise CellstackError(f"{path}: not a cellstack checkpoint (no {key!r})")
    names = ckpt["class_names"]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise CellstackError(f"{path}: class_names must be a non-empty list of names")
    if not isinstance(ckpt["config"], dict) or not isinstance(ckpt["model"], dict):
        raise CellstackError(f"{path}: not a cellstack checkpoint (config/model not mappings)")
    try:
        cfg = config_from_dict(ckpt["config"])
    except CellstackError as exc:
        raise CellstackError(f"{path}: stored config: {exc}") from None
    return cfg, list(names), ckpt["model"]


def load_weights(model: torch.nn.Module, state: dict, where: Path) -> None:
    """``model.load_state_dict(state)`` with a one-line error when they do not fit
    (e.g. a run whose class names were edited so they no longer match its weights)."""
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0] if lines else ""
        raise CellstackError(
            f"{where}: weights do not fit the model its config and class names describe "
            f"({detail[:200]})"
        ) from None


def final_state(
    weights: dict[str, torch.Tensor],
    cfg: Config,
    class_names: list[str],
    data_stats: dict | None = None,
) -> dict:
    """What ``model.pt`` holds: weights, the resolved config as a dict, class names and
    the training objects' statistics (:class:`~cellstack.data.stats.ObjectStats`)."""
    state = {"model": weights, "config": config_to_dict(cfg), "class_names": class_names}
    if data_stats is not None:
        state["data_stats"] = data_stats
    return state


@dataclass(frozen=True)
class InitReport:
    """What ``init.from`` loaded into a new model (state-dict keys)."""

    run: Path
    loaded: tuple[str, ...]
    reinitialised: tuple[str, ...]  # class-specific, classes differ
    mismatched: tuple[str, ...]  # same name, other shape (another backbone or width)
    new: tuple[str, ...]  # not in the run (e.g. cascade stages 2-3 from a Mask R-CNN)
    source_classes: tuple[str, ...]

    def summary(self) -> str:
        def by_part(keys: tuple[str, ...]) -> str:
            counts = Counter(k.split(".")[0] for k in keys)
            return ", ".join(f"{part} {n}" for part, n in counts.items())

        lines = [
            f"init from {self.run}: loaded {len(self.loaded)} tensors ({by_part(self.loaded)})"
        ]
        if self.reinitialised:
            layers = sorted({k.rsplit(".", 1)[0] for k in self.reinitialised})
            lines.append(
                f"  re-initialised {len(layers)} class layer(s) (the run's classes "
                f"{', '.join(self.source_classes)} differ): {', '.join(layers)}"
            )
        if self.mismatched:
            lines.append(
                f"  not loaded, shape differs: {len(self.mismatched)} ({by_part(self.mismatched)}),"
                f" e.g. {self.mismatched[0]}"
            )
        if self.new:
            lines.append(
                f"  not in the run, left at their initialisation: {len(self.new)} "
                f"({by_part(self.new)})"
            )
        return "\n".join(lines)


def init_from_run(model: torch.nn.Module, run: str | Path) -> InitReport:
    """Load a trained run's weights into a new ``model`` wherever they fit.

    Every tensor whose name and shape match loads, except the class-specific layers
    (``model.class_specific_keys()``) when the two models' class names differ: those
    keep their fresh initialisation, as the original re-initialised ``fc_cls``,
    ``fc_reg`` and ``conv_logits`` when finetuning.

    Raises:
        CellstackError: the run is missing, or not one tensor of it fits the model.
    """
    run = Path(run)
    _, source_classes, state = load_run(run)
    target = model.state_dict()
    classes_differ = tuple(source_classes) != tuple(model.class_names)
    class_keys = model.class_specific_keys() if classes_differ else set()
    loaded, reinit, mismatched = [], [], []
    for key, value in target.items():
        if key not in state:
            continue
        if key in class_keys:
            reinit.append(key)
        elif state[key].shape != value.shape:
            mismatched.append(key)
        else:
            loaded.append(key)
    # Biases and BN counters can match by accident; a model shares weights only if
    # some convolution or linear layer fits.
    if not any(state[k].ndim >= 2 for k in loaded):
        raise CellstackError(
            f"init.from={run}: no weight of that run fits this model (another backbone or "
            "architecture?)"
        )
    model.load_state_dict({k: state[k] for k in loaded}, strict=False)
    return InitReport(
        run=run,
        loaded=tuple(loaded),
        reinitialised=tuple(reinit),
        mismatched=tuple(mismatched),
        new=tuple(k for k in target if k not in state),
        source_classes=tuple(source_classes),
    )
