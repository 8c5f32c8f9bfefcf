"""The training loop and the hook contract, as detectron2's ``engine/train_loop.py``.

:class:`Loop` does the step itself (a batch, the losses, the optimiser and the schedule)
and holds the state the hooks see. Everything around the steps is a :class:`HookBase`
(:mod:`cellstack.engine.hooks` holds the trainer's own, and imports this module, never
the other way), called in a fixed order:

- ``before_train(loop)`` once, after a resume has restored the state;
- ``after_step(loop)`` after every optimiser step, with ``loop.iteration`` the number
  of iterations done and ``loop.metrics`` the step's all-reduced losses;
- ``on_stop(loop)`` instead of ``after_train`` when a call ends early (``stop_after``),
  after every hook's ``after_step`` of its last step (the checkpoint hook saves there,
  so the checkpoint holds every hook's state of that step);
- ``after_train(loop)`` once the last iteration is done (:meth:`Loop.finish`; also the
  one entry point that finishes a run killed while it was being finished).

A hook that carries state returns it from ``state_dict`` and gets it back from
``load_state_dict``; a hook whose weights are the ones to score and save (the EMA) says
so in :meth:`HookBase.weights`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cellstack import ddp
from cellstack.config import Config, TrainConfig
from cellstack.engine import rng
from cellstack.engine.schedule import LOSS_NAMES, combine_losses, loss_weights, losses_by_kind
from cellstack.errors import CellstackError
from cellstack.modeling import runfolder


class TrainingDiverged(CellstackError):
    """The loss became NaN or infinite."""


class HookBase:
    """The hook contract; every method does nothing unless overridden."""

    #: Key of this hook's state in the checkpoint ("" = no state).
    state_key = ""

    def before_train(self, loop: Loop) -> None:
        pass

    def after_step(self, loop: Loop) -> None:
        pass

    def on_stop(self, loop: Loop) -> None:
        pass

    def after_train(self, loop: Loop) -> None:
        pass

    def weights(self, model: torch.nn.Module) -> contextlib.AbstractContextManager | None:
        """A context in which ``model`` holds the weights to score and save, when this
        hook keeps other weights than the last step's (None: it does not)."""
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def uses_amp(t: TrainConfig, device: torch.device) -> bool:
    """Mixed precision: asked for (``train.amp``) and on CUDA, where it pays."""
    return t.amp and device.type == "cuda"


@dataclass(eq=False)
class Loop:
    """The training loop (:meth:`train`) and the state that the hooks see and act on.

    Attributes:
        model: the detector (unwrapped); ``net`` is what the step runs (DDP or model).
        iteration: iterations done; ``total`` of the run.
        stop_at: the iteration this call stops after (``stop_after`` steps past where
            it started), or None to run to ``total``.
        metrics: the last step's all-reduced losses (``loss`` and one per kind).
        row: extra columns hooks add to this step's log row (``val_score``).
        lr: the learning rate after the last step.
        val_score: the latest validation score.
        last_saved: the iteration of the latest checkpoint (0: none).
    """

    cfg: Config
    run: Path
    model: torch.nn.Module
    net: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    device: torch.device
    world: ddp.World
    total: int
    class_names: list[str]
    data_stats: dict | None
    hooks: list[HookBase] = field(default_factory=list)
    iteration: int = 0
    stop_at: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    row: dict[str, float] = field(default_factory=dict)
    lr: float = 0.0
    val_score: float | None = None
    last_saved: int = 0
    say: Callable[[str], None] = print

    @property
    def amp(self) -> bool:
        """Whether the steps run in mixed precision (:func:`uses_amp`)."""
        return uses_amp(self.cfg.train, self.device)

    def averaged(self) -> contextlib.AbstractContextManager:
        """A context in which ``model`` holds the weights that are scored and saved: the
        first hook's that keeps its own (the EMA's), else the model's."""
        for hook in self.hooks:
            context = hook.weights(self.model)
            if context is not None:
                return context
        return contextlib.nullcontext()

    def train(
        self, loader: Iterable, start: int, stop_after: int | None, progress: bool
    ) -> tuple[int, float]:
        """The loop itself: every hook's ``before_train``, then a step and every hook's
        ``after_step`` per batch, then :meth:`finish` once the loader ends. Ends after
        ``stop_after`` (>= 1) steps instead, with every hook's ``on_stop``. Returns
        ``(iterations done, the last loss)``."""
        from tqdm import tqdm

        self.iteration = self.last_saved = start
        self.stop_at = None if stop_after is None else start + stop_after
        # Closed on any way out (an error included), so a one-line error never shares
        # the bar's line.
        with tqdm(
            total=self.total,
            initial=start,
            desc="training" if self.world.size == 1 else f"training ({self.world.size} processes)",
            unit="it",
            disable=not (progress and self.world.main),
            dynamic_ncols=True,
        ) as bar:
            self.say = bar.write
            self.net.train()
            for hook in self.hooks:
                hook.before_train(self)
            loss_value = float("nan")
            for it, (images, targets) in enumerate(loader, start=start):
                loss_value = self.run_step(it, images, targets)
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{self.lr:.2e}")
                for hook in self.hooks:
                    hook.after_step(self)
                if self.iteration == self.stop_at and self.iteration < self.total:
                    for hook in self.hooks:
                        hook.on_stop(self)
                    return self.iteration, loss_value
        self.finish()
        return self.total, loss_value

    def finish(self) -> None:
        """Every hook's ``after_train``: the end of a run whose iterations are all done,
        after its last step or when a run killed while being finished is resumed."""
        for hook in self.hooks:
            hook.after_train(self)

    def run_step(self, it: int, images: list[torch.Tensor], targets: list[dict]) -> float:
        """One optimisation step on this rank's batch (iteration ``it``, 0-based): the
        losses (weighted by the schedule of ``train.loss_decay``), all-reduced for the
        log and the divergence check, then backward, clipping and the optimizer and LR
        steps. Sets ``iteration``, ``lr``, ``metrics``; returns the mean loss.

        Raises:
            TrainingDiverged: the all-reduced loss is not finite (every rank stops).
        """
        t = self.cfg.train
        images = [im.to(self.device, non_blocking=True) for im in images]
        targets = [
            {k: v.to(self.device, non_blocking=True) for k, v in tg.items()} for tg in targets
        ]
        with torch.autocast(self.device.type, enabled=self.amp):
            losses = self.net(images, targets)
        losses = {k: v.float() for k, v in losses.items()}
        loss = combine_losses(losses, loss_weights(it / t.iterations, t.loss_decay))
        # One all-reduce gives every rank the same view: the logged means and the
        # NaN check (a rank that stopped alone would leave the others waiting).
        kinds = losses_by_kind(losses)
        stats = ddp.mean(
            torch.tensor(
                [loss.item(), *[kinds.get(k, 0.0) for k in LOSS_NAMES]], device=self.device
            ),
            self.world,
        ).tolist()
        if not math.isfinite(stats[0]):
            bad = ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items())
            saved = (
                f"The last good checkpoint is {self.run / runfolder.CHECKPOINT} "
                f"(iteration {self.last_saved})"
                if self.last_saved > 0
                else "No checkpoint was written before it"
            )
            raise TrainingDiverged(
                f"loss became {stats[0]} at iteration {it + 1} ({bad}); stopped. {saved}. "
                "Lower train.lr or check the data"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if t.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.optimizer.param_groups[0]["params"], t.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.iteration, self.lr, self.row = it + 1, self.scheduler.get_last_lr()[0], {}
        self.metrics = {
            "loss": stats[0],
            **{k: v for k, v in zip(LOSS_NAMES, stats[1:], strict=True) if k in kinds},
        }
        return stats[0]

    def restore(self, state: dict) -> int:
        """Load a checkpoint's model, optimizer, scheduler, scaler, hook states and
        every rank's RNG state; returns the iteration it was written at."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        for hook in self.hooks:
            if hook.state_key:
                hook.load_state_dict(state[hook.state_key])
        _restore_rng(state["rng"], self.world, self.run)
        return int(state["iteration"])

    def save_checkpoint(self) -> None:
        """Write ``checkpoint.pt`` at ``iteration`` (rank 0; every rank's RNG state)."""
        rng_states = ddp.gather(rng.rng_state(), self.world)
        if self.world.main:
            runfolder.save(
                {
                    **runfolder.final_state(
                        self.model.state_dict(), self.cfg, self.class_names, self.data_stats
                    ),
                    **{h.state_key: h.state_dict() for h in self.hooks if h.state_key},
                    "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(),
                    "scaler": self.scaler.state_dict(),
                    "rng": rng_states,
                    "iteration": self.iteration,
                },
                self.run / runfolder.CHECKPOINT,
            )
        self.last_saved = self.iteration


def _restore_rng(saved: dict | list, world: ddp.World, run: Path) -> None:
    """Set this rank's RNG state from a checkpoint (one state per rank that wrote it)."""
    states = saved if isinstance(saved, list) else [saved]
    if len(states) != world.size and world.main:
        print(
            f"note: {run} was checkpointed by {len(states)} process(es), resuming with "
            f"{world.size}: training continues, but not bit-exactly"
        )
    rng.set_rng_state(states[min(world.rank, len(states) - 1)])
