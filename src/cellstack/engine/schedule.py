"""The learning-rate schedule and the weighting of the losses over training."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

#: Loss kinds, the part of a loss name after its last dot ("s1.box" is a "box" loss).
LOSS_NAMES = ("rpn_cls", "rpn_box", "cls", "box", "mask", "semantic")


def lr_factor(schedule: str, total: int, warmup_fraction: float) -> Callable[[int], float]:
    """Multiplier of the base LR at iteration ``it`` (0-based): linear warmup, then decay."""
    warmup = round(warmup_fraction * total)

    def factor(it: int) -> float:
        if it < warmup:
            return (it + 1) / warmup
        p = (it - warmup) / max(total - warmup, 1)
        if schedule == "linear":
            return max(1.0 - p, 0.0)
        if schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(p, 1.0)))
        if schedule == "step":  # x0.1 at 2/3 and 8/9 of training (detectron2's habit)
            return 0.1 ** ((p >= 2 / 3) + (p >= 8 / 9))
        return 1.0

    return factor


def loss_weights(progress: float, decay: bool, pseudo_epochs: int = 40) -> dict[str, float]:
    """Per-loss weights; with ``decay`` the original's schedule over training.

    The original weighted, at epoch e of E, the class loss by (E+3-e)/(E+2) and the
    box and RPN losses by (E+2-floor(e/2))/(E+2), the mask loss by 1 (for E = 40: class
    1 -> 0.07, box/RPN 1 -> 0.52). We use the same curves with e = progress * E, as a
    smooth function of the iteration.

    Weights are per loss kind (:data:`LOSS_NAMES`). HTC's semantic loss keeps weight 1:
    the original's substring matching dropped it from the total by accident.
    """
    if not decay:
        return dict.fromkeys(LOSS_NAMES, 1.0)
    e, big_e = progress * pseudo_epochs, pseudo_epochs
    w_cls = (big_e + 3 - e) / (big_e + 2)
    w_box = (big_e + 2 - e / 2) / (big_e + 2)
    return {
        "rpn_cls": w_box,
        "rpn_box": w_box,
        "cls": w_cls,
        "box": w_box,
        "mask": 1.0,
        "semantic": 1.0,
    }


def loss_kind(name: str) -> str:
    """``"s2.mask"`` -> ``"mask"``: the kind that weights and logs a loss."""
    return name.rsplit(".", 1)[-1]


def combine_losses(losses: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """Σ w·L / Σ w over every loss, w keyed by the loss's kind (as the original, whose
    total for a cascade sums all stages' already stage-weighted losses); a kind without a
    weight counts with weight 1."""
    w = {k: weights.get(loss_kind(k), 1.0) for k in losses}
    return sum(w[k] * v for k, v in losses.items()) / sum(w.values())


def losses_by_kind(losses: dict[str, torch.Tensor]) -> dict[str, float]:
    """Sum of the losses of each kind (all stages together), for the log."""
    out: dict[str, float] = {}
    for k, v in losses.items():
        out[loss_kind(k)] = out.get(loss_kind(k), 0.0) + v.item()
    return out
