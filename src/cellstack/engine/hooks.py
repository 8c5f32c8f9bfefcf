"""The trainer's hooks: what happens around the training steps, each in its own small
class (the contract, :class:`~cellstack.engine.loop.HookBase`, and the loop that calls
them are in :mod:`cellstack.engine.loop`).

In order: :class:`EMAHook` (the averaged weights, which the loop's
:meth:`~cellstack.engine.loop.Loop.averaged` hands to whoever scores or saves),
:class:`ValidationHook`, :class:`LogHook` (writes the row, with the validation score),
:class:`CheckpointHook` (saves everything, the other hooks' state included, so a
resumed run continues exactly; also where a call that stops early saves),
:class:`FinishHook` (the plot, the tuned thresholds, then ``model.pt``).
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from cellstack import ddp
from cellstack.engine.loop import HookBase, Loop

if TYPE_CHECKING:
    from cellstack.config import Config
    from cellstack.data.records import ImageRecord
    from cellstack.engine.runlog import RunLog


class EMAHook(HookBase):
    """Keeps a :class:`~cellstack.engine.ema.ModelEMA` of the weights, which the
    validation and ``model.pt`` use in place of the last step's weights."""

    state_key = "ema"

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        from cellstack.engine.ema import ModelEMA

        self.ema = ModelEMA(model, decay)

    def after_step(self, loop: Loop) -> None:
        self.ema.update(loop.model)

    def weights(self, model: torch.nn.Module) -> contextlib.AbstractContextManager:
        return self.ema.applied(model)

    def state_dict(self) -> dict[str, Any]:
        return self.ema.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ema.load_state_dict(state)


class ValidationHook(HookBase):
    """Scores the model (the loop's :meth:`~cellstack.engine.loop.Loop.averaged`
    weights) on the validation records every ``every`` iterations and at the end; sets
    ``loop.val_score`` and adds it to the step's log row."""

    def __init__(self, records: list, every: int) -> None:
        self.records, self.every = records, every

    def after_step(self, loop: Loop) -> None:
        if not (loop.iteration % self.every == 0 or loop.iteration == loop.total):
            return
        with loop.averaged():
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
    """Saves the full state every ``every`` iterations, at the end, and where a call
    stops early (``stop_after``), so it can be resumed there."""

    def __init__(self, every: int) -> None:
        self.every = every

    def after_step(self, loop: Loop) -> None:
        if loop.iteration % self.every == 0 or loop.iteration == loop.total:
            loop.save_checkpoint()

    def on_stop(self, loop: Loop) -> None:
        loop.save_checkpoint()


class FinishHook(HookBase):
    """Finishes the run on rank 0: plots ``log.csv`` into ``training.png``, tunes the
    thresholds on ``pool`` (when ``train.auto_thresholds``), then writes ``model.pt``,
    last, as it says "finished". Both use the loop's
    :meth:`~cellstack.engine.loop.Loop.averaged` weights (the EMA's when there is one)."""

    def __init__(self, pool: list, on_validation: bool) -> None:
        self.pool, self.on_validation = pool, on_validation

    def after_train(self, loop: Loop) -> None:
        from cellstack.engine.runlog import plot_log, read_log
        from cellstack.inference.calibration import tune_run_thresholds
        from cellstack.modeling import runfolder

        if not loop.world.main:
            return
        cfg, run, model = loop.cfg, loop.run, loop.model
        plot_log(read_log(run / "log.csv"), run / "training.png")
        with loop.averaged():
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
            state = runfolder.final_state(
                model.state_dict(), cfg, loop.class_names, loop.data_stats
            )
            runfolder.save(state, run / runfolder.FINAL)


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
