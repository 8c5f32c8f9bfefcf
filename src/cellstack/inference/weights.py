"""Which of an ensemble's models hold their weights: loaded on first use from their
files, the least recently used dropped back to ``meta`` to stay within a budget."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from cellstack.errors import CellstackError
from cellstack.modeling.detector import CellDetector


def weight_bytes(model: nn.Module) -> int:
    """Bytes of a model's parameters and buffers (also of a ``meta`` skeleton)."""
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))


def is_meta(model: nn.Module) -> bool:
    return any(p.is_meta for p in model.parameters())


def _return_freed_memory() -> None:
    """Hand the heap's free memory back to the system (glibc's ``malloc_trim``).

    A dropped model's tensors are freed, but glibc keeps most of them (a few MB each,
    under its mmap threshold) on the heap, where the next model's tensors and the
    backbone's activations fragment it. Measured on the original's recipes (6 fold runs,
    one loaded at a time, 16 loads for one 704x520 image): peak RSS 2,394 MB without
    this, 2,122 MB with it. Elsewhere (no glibc) it does nothing."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, looked up once; None without glibc."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


class WeightCache:
    """The loaded models of an ensemble, least recently used first.

    Args:
        models: the detectors (loaded, or ``meta`` skeletons).
        loaders: per model, a function that loads its weights into it (``assign=True``);
            None: every model is loaded and stays so.
        budget_mb: the most weights kept loaded at once (a model larger than it is
            still loaded, alone).

    Attributes:
        loaded: indices of the models holding weights, least recently used first.
        loads: weight loads so far (how often files were read).
    """

    def __init__(
        self,
        models: Sequence[CellDetector],
        loaders: Sequence[Callable[[CellDetector], None]] | None,
        budget_mb: float = math.inf,
    ) -> None:
        if loaders is not None and len(loaders) != len(models):
            raise CellstackError(f"{len(loaders)} loaders for {len(models)} models")
        if not budget_mb > 0:
            raise CellstackError(f"weights_budget_mb must be > 0, got {budget_mb}")
        self.models = models
        self.loaders = list(loaders) if loaders is not None else None
        self.budget_mb = float(budget_mb)
        self.loads = 0
        self.sizes = [weight_bytes(m) for m in models]  # per model, meta or not
        self.loaded = [i for i, m in enumerate(models) if not is_meta(m)]
        self.device = torch.device("cpu")  # where loads go (follows the ensemble's .to())
        if self.loaders is None and len(self.loaded) < len(models):
            raise CellstackError("models without weights (meta) need loaders")

    def member(self, index: int) -> CellDetector:
        """Model ``index``, its weights loaded (others dropped to stay in the budget)."""
        model = self.models[index]
        if index in self.loaded:
            self.loaded.remove(index)
            self.loaded.append(index)
            return model
        budget = self.budget_mb * 2**20
        dropped = False
        while self.loaded and sum(self.sizes[i] for i in self.loaded) + self.sizes[index] > budget:
            self.models[self.loaded.pop(0)].to("meta")
            dropped = True
        if dropped:
            _return_freed_memory()
        self.loaders[index](model)
        self.loads += 1
        model.to(self.device).eval()
        self.loaded.append(index)
        return model

    def apply(self, fn, recurse: bool = True) -> None:
        """``nn.Module._apply`` for the loaded models only: a ``meta`` model cannot move,
        so the device is remembered for those loaded later."""
        self.device = fn(torch.empty(0, device=self.device)).device
        for i in self.loaded:
            self.models[i]._apply(fn, recurse)
