"""Hooks: what happens around the training steps, each in its own small class.

The loop (:meth:`cellstack.engine.trainer.Loop.train`) does only the step itself: a batch,
the losses, the optimiser and the schedule. Everything else is a :class:`HookBase`
called in a fixed order, as detectron2's hooks are:

- ``before_train(loop)`` once, after a resume has restored the state;
- ``after_step(loop)`` after every optimiser step, with ``loop.iteration`` the number
  of iterations done and ``loop.metrics`` the step's all-reduced losses;
- ``after_train(loop)`` once the last iteration is done.

The trainer's hooks, in order: :class:`EMAHook` (the averaged weights),
:class:`ValidationHook` (uses them), :class:`LogHook` (writes the row, with the
validation score), :class:`CheckpointHook` (saves everything, the other hooks' state
included, so a resumed run continues exactly), :class:`FinishHook` (the plot, the
tuned thresholds, then ``model.pt``). A hook that carries state returns it from
``state_dict`` and gets it back from ``load_state_dict``.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from cellstack import ddp

if TYPE_CHECKING:
    from cellstack.config import Config
    from cellstack.data.records import ImageRecord
    from cellstack.engine.runlog import RunLog
    from cellstack.engine.trainer import Loop


class HookBase:
    """The hook contract; every method does nothing unless overridden."""

    #: Key of this hook's state in the checkpoint ("" = no state).
    state_key = ""

    def before_train(self, loop: Loop) -> None:
        pass

    def after_step(self, loop: Loop) -> None:
        pass

    def after_train(self, loop: Loop) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class EMAHook(HookBase):
    """Keeps a :class:`~cellstack.engine.ema.ModelEMA` of the weights, which the
    validation and ``model.pt`` use in place of the last step's weights."""

    state_key = "ema"

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        from cellstack.engine.ema import ModelEMA

        self.ema = ModelEMA(model, decay)

    def after_step(self, loop: Loop) -> None:
        self.ema.update(loop.model)

    def state_dict(self) -> dict[str, Any]:
        return self.ema.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ema.load_state_dict(state)


def averaged(ema: EMAHook | None, model: torch.nn.Module):
    """A context in which ``model`` holds the weights that are scored and saved: the
    EMA's when there is one (restored on exit), else the model's own."""
    return ema.ema.applied(model) if ema is not None else contextlib.nullcontext()


class ValidationHook(HookBase):
    """Scores the model (its EMA when there is one) on the validation records every
    ``every`` iterations and at the end; sets ``loop.val_score`` and adds it to the
    step's log row."""

    def __init__(self, records: list, every: int, ema: EMAHook | None = None) -> None:
        self.records, self.every, self.ema = records, every, ema

    def after_step(self, loop: Loop) -> None:
        if not (loop.iteration % self.every == 0 or loop.iteration == loop.total):
            return
        with averaged(self.ema, loop.model):
            score = validate(loop.model, self.records, loop.cfg, loop.device, loop.world)
        loop.net.train()
        loop.val_score = score
        loop.row["val_score"] = score
        if loop.world.main:
            loop.say(f"iteration {loop.iteration}: validation score {score:.4f}")


class LogHook(HookBase):
    """Writes a ``log.csv`` row every ``every`` iterations, at the end, and whenever
    another hook added to the row (a validation score). Rank 0 only; the log opens at
    the iteration training starts from (rows past it, from a killed run, are cut), and
    its ``seconds`` go on from the last row kept: the training time of the whole run,
    across resumes, not of this session."""

    def __init__(self, path: Path, every: int) -> None:
        self.path, self.every = path, every
        self.log: RunLog | None = None

    def before_train(self, loop: Loop) -> None:
        from cellstack.engine.runlog import RunLog

        spent = 0.0
        if loop.world.main:
            self.log = RunLog(self.path, loop.iteration)
            timed = [r["seconds"] for r in self.log.rows if r.get("seconds")]
            spent = float(timed[-1]) if timed else 0.0
        self.t0 = time.perf_counter() - spent

    @property
    def rows(self) -> list[dict]:
        return self.log.rows if self.log is not None else []

    def after_step(self, loop: Loop) -> None:
        due = loop.iteration % self.every == 0 or loop.iteration == loop.total
        if not (due or loop.row):
            return
        row = {"iteration": loop.iteration, **loop.row}
        if due:
            row.update(loop.metrics, lr=loop.lr, seconds=round(time.perf_counter() - self.t0, 2))
        if self.log is not None:
            self.log.add(row)


class CheckpointHook(HookBase):
    """Saves the full state every ``every`` iterations and at the end."""

    def __init__(self, every: int) -> None:
        self.every = every

    def after_step(self, loop: Loop) -> None:
        if loop.iteration % self.every == 0 or loop.iteration == loop.total:
            loop.save_checkpoint()


class FinishHook(HookBase):
    """Finishes the run on rank 0: plots ``log.csv`` into ``training.png``, tunes the
    thresholds on ``pool`` (when ``train.auto_thresholds``), then writes ``model.pt``,
    last, as it says "finished". Both use the EMA weights when there are some."""

    def __init__(self, pool: list, on_validation: bool, ema: EMAHook | None = None) -> None:
        self.pool, self.on_validation, self.ema = pool, on_validation, ema

    def after_train(self, loop: Loop) -> None:
        from cellstack.engine.runlog import plot_log, read_log
        from cellstack.inference.run import tune_run_thresholds
        from cellstack.modeling import files

        if not loop.world.main:
            return
        cfg, run, model = loop.cfg, loop.run, loop.model
        plot_log(read_log(run / "log.csv"), run / "training.png")
        with averaged(self.ema, model):
            if cfg.train.auto_thresholds:
                tune_run_thresholds(
                    model,
                    cfg,
                    self.pool,
                    loop.data_stats,
                    run,
                    loop.device,
                    on_validation=self.on_validation,
                )
            state = files.final_state(model.state_dict(), cfg, loop.class_names, loop.data_stats)
            files.save(state, run / files.FINAL)


def validate(
    model: torch.nn.Module,
    records: list[ImageRecord],
    cfg: Config,
    device: torch.device,
    world: ddp.World | None = None,
) -> float:
    """Mean competition score of the model on annotated records (full images).

    Under DDP each rank scores its share of the records and the mean is over all.
    """
    from cellstack.data.dataset import load_sample
    from cellstack.data.masks import pixels_to_sparse
    from cellstack.evaluation.metric import score_image
    from cellstack.inference.segmenter import Segmenter
    from cellstack.inference.sources import Source

    world = world or ddp.World()
    seg = Segmenter(Source.of_model(model, cfg), device=device)
    scores = []
    for rec in ddp.shard(records, world):
        image, _ = load_sample(rec)
        (pred,) = seg.instances([image])
        scores.append(
            score_image(
                rec.sparse_masks(), pixels_to_sparse(pred.pixels, rec.shape), shape=rec.shape
            ).score
        )
    model.train()
    scores = [s for part in ddp.gather(scores, world) for s in part]
    return float(np.mean(scores)) if scores else float("nan")
