"""The random state a checkpoint carries, for an exact ``--resume``."""

from __future__ import annotations

from typing import Any

import torch


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
