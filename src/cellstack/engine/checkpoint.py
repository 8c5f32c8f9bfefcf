"""Run folders and checkpoints.

A run folder holds ``config.yaml`` (the resolved config), ``checkpoint.pt`` (everything
needed to resume exactly: model, optimizer, scheduler, AMP scaler, RNG states,
iteration), ``model.pt`` (final weights, class names and config: what ``predict``
loads), ``log.csv`` and ``training.png``. Every file is written atomically, so a kill at
any moment leaves the previous complete checkpoint in place.
"""

from __future__ import annotations

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
    """Load a checkpoint written by cellstack, with a clear error when it is not one."""
    path = Path(path)
    if not path.is_file():
        raise CellstackError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CellstackError(
            f"{path}: cannot read checkpoint ({type(exc).__name__}: {exc})"
        ) from None


def load_run(run: str | Path) -> tuple[Config, list[str], dict]:
    """``(config, class_names, model_state)`` of a run folder (final or latest weights)."""
    run = Path(run)
    if not run.is_dir():
        raise CellstackError(f"{run}: run folder not found")
    path = run / FINAL if (run / FINAL).is_file() else run / CHECKPOINT
    if not path.is_file():
        raise CellstackError(f"{run}: no {FINAL} or {CHECKPOINT} (has training run?)")
    ckpt = load(path)
    for key in ("config", "class_names", "model"):
        if key not in ckpt:
            raise CellstackError(f"{path}: not a cellstack checkpoint (no {key!r})")
    return config_from_dict(ckpt["config"]), list(ckpt["class_names"]), ckpt["model"]


def final_state(model: torch.nn.Module, cfg: Config, class_names: list[str]) -> dict:
    return {"model": model.state_dict(), "config": config_to_dict(cfg), "class_names": class_names}
