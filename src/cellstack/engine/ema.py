"""Exponential moving average (EMA) of a model's weights.

Training from scratch with batches of one or two crops gives noisy updates; the average
of the recent weights is a better model than the last step's (as in YOLO-style and
timm training). With ``train.ema > 0`` the trainer validates and saves the averaged
weights, and checkpoints the average so ``--resume`` continues it exactly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


class ModelEMA:
    """Shadow copy ``s`` of every state-dict tensor, updated as ``s = d*s + (1-d)*w``.

    The decay ramps up as ``min(decay, (1 + n) / (10 + n))`` over the first updates, so
    the random initial weights are forgotten quickly. Integer buffers (BatchNorm's
    counters) are copied, not averaged.

    Args:
        model: the model being trained (its current weights start the average).
        decay: the final decay, e.g. 0.999 (an average over about 1000 steps).
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for k, v in model.state_dict().items():
            s = self.shadow[k]
            if s.dtype.is_floating_point:
                s.mul_(d).add_(v.detach(), alpha=1 - d)
            else:
                s.copy_(v)

    @contextlib.contextmanager
    def applied(self, model: nn.Module) -> Iterator[nn.Module]:
        """``model`` with the averaged weights inside the block, its own after it."""
        own = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.shadow)
        try:
            yield model
        finally:
            model.load_state_dict(own)

    def state_dict(self) -> dict:
        return {"shadow": self.shadow, "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.updates = int(state["updates"])
        for k, v in state["shadow"].items():
            self.shadow[k].copy_(v)
