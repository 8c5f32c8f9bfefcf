"""The training recipe: ``cellstack train DATA --config CFG --out RUN``.

:func:`train` opens the run (or its checkpoint), resolves the config's ``auto`` values,
builds the model, optimizer, data and hooks, and hands them to the
:class:`~cellstack.engine.loop.Loop`. One iteration = one batch of random crops ->
weighted sum of the losses -> AdamW/SGD step with gradient clipping (and AMP on CUDA) ->
per-iteration LR schedule. Every ``checkpoint_every`` iterations the full state is
written atomically; ``resume=True`` restores it and continues exactly (the data of
sample ``i`` depends only on the seed and ``i``; RNG states are restored). A NaN/inf
loss stops training with a message that names the last good checkpoint, which is left
untouched.

Under ``torchrun`` the same function trains with DDP (see :mod:`cellstack.ddp`):
``train.batch_size`` is the global batch, split evenly over the processes (rank ``r``
takes its slice of the very samples one process would take), gradients are averaged,
rank 0 writes the run folder, and validation is sharded over the ranks.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from cellstack import ddp
from cellstack.config import AUTO, Config, TrainConfig, config_from_dict, save_config
from cellstack.data.folds import write_folds_csv
from cellstack.data.layouts import load_dataset
from cellstack.data.records import ImageRecord
from cellstack.data.splits import class_names_of, split_records
from cellstack.data.stats import ObjectStats, derive, inherit_sizes, measure
from cellstack.engine.hooks import CheckpointHook, EMAHook, FinishHook, LogHook, ValidationHook
from cellstack.engine.init_from import init_from_run
from cellstack.engine.loop import HookBase, Loop, uses_amp
from cellstack.engine.schedule import lr_factor
from cellstack.errors import CellstackError
from cellstack.fileio import atomic_write, remove_partials
from cellstack.modeling import runfolder


@dataclass(frozen=True)
class TrainResult:
    run: Path
    iterations: int
    final_loss: float
    val_score: float | None


def resolve_auto(
    cfg: Config, records: Sequence[ImageRecord], *, say: Callable[[str], object] | None = None
) -> tuple[Config, ObjectStats]:
    """``cfg`` with every ``auto`` resolved from the training ``records`` (once per
    workflow: ``train`` and ``cv`` call this), and the objects' statistics as the model
    sees them (after ``data.scale``).

    With ``init.from``, the sizes the pretrained run learnt are kept
    (:func:`~cellstack.data.stats.inherit_sizes`); the rest is derived from the data
    (:func:`~cellstack.data.stats.derive`). ``say`` reports what was set.
    """
    stats = measure(records)
    if cfg.init.from_run:
        source_cfg, _, _ = runfolder.load_run(cfg.init.from_run, mmap=True)
        cfg, inherited = inherit_sizes(
            cfg, stats, source_cfg, runfolder.run_data_stats(cfg.init.from_run)
        )
        if inherited and say:
            say(f"from init.from={cfg.init.from_run}: " + _settings(inherited))
    if cfg.data.scale not in (AUTO, 1):
        stats = stats.scaled(cfg.data.scale)  # sizes as the model sees them
    cfg, derived = derive(cfg, stats)
    if derived and say:
        say(
            f"from {stats.objects} training objects (median diameter "
            f"{stats.diameter_median:.0f} px): " + _settings(derived)
        )
    return cfg, stats


def _settings(values: dict[str, object]) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items())


def train(
    cfg: Config,
    data: str | Path,
    run: str | Path,
    *,
    resume: bool = False,
    stop_after: int | None = None,
    progress: bool = True,
    hooks: Sequence[HookBase] = (),
) -> TrainResult:
    """Train a detector on ``data`` (any supported layout) into the run folder ``run``.

    Args:
        cfg: the configuration (ignored with ``resume``: the run's own is used).
        resume: continue the run in ``run`` from its checkpoint.
        stop_after: stop after this many iterations (at least 1) of this call, as a job
            with a time limit would, leaving a checkpoint to ``resume`` from (the LR
            schedule still spans ``train.iterations``).
        progress: show a progress bar (rank 0 only under torchrun).
        hooks: extra :class:`~cellstack.engine.hooks.HookBase` run after the built-in
            ones (EMA, validation, log, checkpoint), in the order given.
    """
    from cellstack.modeling.build import build_model

    if stop_after is not None and stop_after < 1:
        raise CellstackError(f"stop_after must be at least 1 iteration, got {stop_after}")
    data, run = Path(data), Path(run)
    cfg, state = _open_run(run, cfg, resume)
    t = cfg.train
    device = ddp.pick_device(t.device, ddp.launched().local_rank)
    world = ddp.setup(device)
    if t.batch_size % world.size:
        raise CellstackError(
            f"train.batch_size={t.batch_size} (the global batch) must be divisible by the "
            f"{world.size} processes"
        )
    records = load_dataset(data)
    train_records, val_records, folds = split_records(records, cfg, data)
    if cfg.data.val_images:
        val_records = val_records[: cfg.data.val_images]
    class_names = state["class_names"] if state else class_names_of(records)
    if state is not None:  # the stored config is already resolved
        data_stats = state.get("data_stats")
    else:
        cfg, stats = resolve_auto(cfg, train_records, say=print if world.main else None)
        data_stats = stats.to_dict()
    if world.main:
        _write_run_files(run, cfg, data_stats, folds, [*train_records, *val_records])

    torch.manual_seed(t.seed)  # the same initial weights on every rank
    model = build_model(
        cfg.model, class_names, cfg.predict, trained_on=ObjectStats.recorded(data_stats)
    )
    if state is None and cfg.init.from_run:
        report = init_from_run(model, cfg.init.from_run)
        if world.main:
            print(report.summary())
            if report.warning():
                print(report.warning(), file=sys.stderr)
    model, net = _parallel(place_for_training(model, device), device, world, cfg)
    optimizer, scheduler = _optimizer(model, t)
    scaler = torch.amp.GradScaler("cuda", enabled=uses_amp(t, device))
    loop = Loop(
        cfg=cfg,
        run=run,
        model=model,
        net=net,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=scaler,
        device=device,
        world=world,
        total=t.iterations,
        class_names=class_names,
        data_stats=data_stats,
    )
    loop.hooks = [
        *([EMAHook(model, t.ema)] if t.ema > 0 else []),
        *([ValidationHook(val_records, t.eval_every)] if val_records and t.eval_every else []),
        LogHook(run / "log.csv", t.log_every),
        CheckpointHook(t.checkpoint_every),
        FinishHook(val_records or train_records, bool(val_records)),
        *hooks,
    ]
    start = loop.restore(state) if state is not None else 0
    if state is None:
        torch.manual_seed(t.seed + world.rank)  # the samplers' draws differ per rank
    if start >= t.iterations:
        if (run / runfolder.FINAL).is_file():
            raise CellstackError(f"{run}: already trained for {start} of {t.iterations} iterations")
        # Killed while the run was being finished: the last checkpoint holds it all.
        loop.iteration = start
        loop.finish()
        ddp.barrier(world)
        return TrainResult(run, start, float("nan"), None)

    loader = _loader(cfg, train_records, class_names, world, start)
    stopped, loss_value = loop.train(loader, start, stop_after, progress)
    ddp.barrier(world)  # no rank reports "done" before model.pt exists
    return TrainResult(run, stopped, loss_value, loop.val_score)


def _write_run_files(run: Path, cfg: Config, data_stats, folds, records) -> None:
    """The run folder's description, before the first step: the resolved config, the
    training objects' statistics and the folds the split used."""
    run.mkdir(parents=True, exist_ok=True)
    remove_partials(run)  # what a killed write left behind
    save_config(cfg, run / "config.yaml")
    if data_stats is not None:
        with atomic_write(run / "data_stats.json") as f:
            json.dump(data_stats, f, indent=1)
    if folds is not None:
        write_folds_csv(run / "folds.csv", records, folds)


def _open_run(run: Path, cfg: Config, resume: bool) -> tuple[Config, dict | None]:
    """``(config, checkpoint state)`` to train with: the run's own checkpoint and config
    with ``resume``, else ``cfg`` and None for a new run (refused where a run is)."""
    if resume:
        state = runfolder.load(run / runfolder.CHECKPOINT)
        missing = [
            k
            for k in ("config", "model", "optimizer", "scheduler", "rng", "iteration")
            if k not in state
        ]
        if missing:
            raise CellstackError(
                f"{run / runfolder.CHECKPOINT}: not a training checkpoint (no {missing[0]!r}; a "
                f"copy of {runfolder.FINAL}?), so it cannot be resumed; start a new run with "
                f"init.from={run}"
            )
        return config_from_dict(state["config"]), state
    if (run / runfolder.CHECKPOINT).is_file() or (run / runfolder.FINAL).is_file():
        raise CellstackError(
            f"{run} already holds a training run; pass --resume to continue it "
            "or choose another --out"
        )
    if run.exists() and not run.is_dir():
        raise CellstackError(f"{run}: exists and is not a folder; choose another --out")
    return cfg, None


def place_for_training(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` on ``device``, in the memory layout its training steps run fastest in.

    On CPU that is channels-last (NHWC): oneDNN's convolutions, forward and backward,
    are most of a step there, and take about 12% less time in it
    (``benchmarks/speed.py train``). Elsewhere the layout is left as it is. The saved
    weights do not depend on it (:func:`~cellstack.modeling.runfolder.final_state`).
    """
    model = model.to(device)
    if device.type == "cpu":
        model = model.to(memory_format=torch.channels_last)
    return model


def _parallel(
    model: torch.nn.Module, device: torch.device, world: ddp.World, cfg: Config
) -> tuple[torch.nn.Module, torch.nn.Module]:
    """``(model, net)``: the model, and what the loop calls (DDP-wrapped under torchrun)."""
    net: torch.nn.Module = model
    if world.size > 1:
        if device.type == "cuda" and not cfg.model.backbone.freeze_bn:
            # Per-process BN statistics over a batch of 1-2 crops would be noise.
            net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
        net = torch.nn.parallel.DistributedDataParallel(
            net,
            device_ids=[device.index] if device.type == "cuda" else None,
            # Every parameter takes part in every loss (a mask head without positive RoIs
            # adds a zero-weighted term), so DDP need not search the graph for unused ones.
            find_unused_parameters=False,
        )
        model = net.module
    return model, net


def _loader(
    cfg: Config, records: list, class_names: list[str], world: ddp.World, start: int
) -> Iterable[tuple[list[torch.Tensor], list[dict]]]:
    """This rank's batches of the iterations ``start..train.iterations``.

    Iteration i uses the samples [i*B, (i+1)*B) of the run (B the global batch) and this
    rank takes its slice of them, so a resumed or a multi-process run sees exactly the
    crops a single uninterrupted one would."""
    from torch.utils.data import DataLoader

    from cellstack.data.dataset import TrainCrops, collate

    t = cfg.train
    per_rank = t.batch_size // world.size
    dataset = TrainCrops(
        records,
        class_names,
        crop_size=cfg.data.crop_size,
        augment=cfg.data.augment,
        length=t.iterations * t.batch_size,
        seed=t.seed,
        crop_sampling=cfg.data.crop_sampling,
        scale=cfg.data.scale,
    )
    first = world.rank * per_rank
    indices = [
        i * t.batch_size + first + j for i in range(start, t.iterations) for j in range(per_rank)
    ]
    return DataLoader(
        dataset,
        batch_size=per_rank,
        sampler=indices,
        num_workers=t.num_workers,
        collate_fn=collate,
        # A private generator: the loader must not draw from the global RNG, whose state
        # the checkpoint restores for the model's own sampling.
        generator=torch.Generator().manual_seed(t.seed),
    )


def _optimizer(
    model: torch.nn.Module, t: TrainConfig
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """The optimizer over the trainable parameters and its LR schedule (``train``)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if t.optimizer == "adamw":
        optimizer = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    else:
        optimizer = torch.optim.SGD(
            params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay
        )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_factor(t.schedule, t.iterations, t.warmup_fraction)
    )
    return optimizer, scheduler
