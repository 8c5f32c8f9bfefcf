"""The training loop: ``cellstack train DATA --config CFG --out RUN``.

One iteration = one batch of random crops -> weighted sum of the losses -> AdamW/SGD
step with gradient clipping (and AMP on CUDA) -> per-iteration LR schedule. Every
``checkpoint_every`` iterations the full state is written atomically; ``resume=True``
restores it and continues exactly (the data of sample ``i`` depends only on the seed
and ``i``; RNG states are restored). A NaN/inf loss stops training with a message that
names the last good checkpoint, which is left untouched.

Under ``torchrun`` the same function trains with DDP (see
:mod:`cellstack.engine.distributed`): ``train.batch_size`` is the global batch, split
evenly over the processes (rank ``r`` takes its slice of the very samples one process
would take), gradients are averaged, rank 0 writes the run folder, and validation is
sharded over the ranks.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cellstack.config import Config, save_config
from cellstack.data.folds import grouped_stratified_folds, read_folds_csv, write_folds_csv
from cellstack.data.layouts import load_dataset
from cellstack.data.records import ImageRecord
from cellstack.data.stats import derive, measure
from cellstack.engine import checkpoint as ckpt
from cellstack.engine import distributed
from cellstack.engine.ema import ModelEMA
from cellstack.errors import CellstackError
from cellstack.fileio import atomic_write, remove_partials

# Loss kinds, the part of a loss name after its last dot ("s1.box" is a "box" loss).
LOSS_NAMES = ("rpn_cls", "rpn_box", "cls", "box", "mask", "semantic")
LOG_COLUMNS = ("iteration", "lr", "loss", *LOSS_NAMES, "val_score", "seconds")


class TrainingDiverged(CellstackError):
    """The loss became NaN or infinite."""


@dataclass(frozen=True)
class TrainResult:
    run: Path
    iterations: int
    final_loss: float
    val_score: float | None


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


def pick_device(name: str | torch.device, local_rank: int = 0) -> torch.device:
    """``auto``: CUDA when available, else CPU; under torchrun each process takes the
    GPU of its ``LOCAL_RANK`` (``auto`` or a bare ``cuda``)."""
    import re

    if isinstance(name, torch.device):
        return name
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if not re.fullmatch(r"cpu|mps|cuda(:\d+)?", name):
        raise CellstackError(f"device {name!r}: expected auto, cpu, cuda, cuda:N or mps")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise CellstackError(f"device {name} requested but no CUDA device is available")
        if name == "cuda":
            return torch.device("cuda", local_rank)
        if int(name[5:]) >= torch.cuda.device_count():
            raise CellstackError(
                f"device {name}: only {torch.cuda.device_count()} CUDA device(s) here"
            )
    if name == "mps" and not torch.backends.mps.is_available():
        raise CellstackError("device mps requested but MPS is not available")
    return torch.device(name)


def assign_folds(records: list[ImageRecord], data: Path, k: int, seed: int) -> dict[str, int]:
    """``{image_id: fold}``: from ``folds.csv`` beside the data when present
    (``cellstack folds``), else made by :func:`grouped_stratified_folds`."""
    base = data if data.is_dir() else data.parent
    if (base / "folds.csv").is_file():
        folds = read_folds_csv(base / "folds.csv")
        missing = [r.image_id for r in records if r.image_id not in folds]
        if missing:
            raise CellstackError(f"{base / 'folds.csv'}: no fold for image {missing[0]}")
        return folds
    return grouped_stratified_folds(records, k, seed=seed)


def class_names_of(records: list[ImageRecord]) -> list[str]:
    """The classes a run learns: every cell type of its data (all splits), sorted."""
    return sorted({r.cell_type for r in records})


def training_pool(records: list[ImageRecord], cfg: Config, data: Path) -> list[ImageRecord]:
    """The records of ``data.splits`` (all records when empty), which folds divide.

    Raises:
        CellstackError: ``data.splits`` or ``data.val_split`` names a split the data
            does not have.
    """
    d = cfg.data
    available = sorted({r.split for r in records})
    for name in (*d.splits, *([d.val_split] if d.val_split else [])):
        if name not in available:
            raise CellstackError(
                f"{data}: no split {name!r} (it has {', '.join(repr(a) for a in available)}); "
                "check data.splits / data.val_split"
            )
    return [r for r in records if r.split in d.splits] if d.splits else list(records)


def split_records(
    records: list[ImageRecord], cfg: Config, data: Path
) -> tuple[list[ImageRecord], list[ImageRecord], dict[str, int] | None]:
    """``(train, val, folds)`` as the config asks.

    ``data.splits`` keeps the records of those splits for training; ``data.val_split``
    validates on a split, ``data.fold`` on a fold (:func:`assign_folds`; the folds
    are returned so the run can record them). Training records carry their cleaned
    masks (:meth:`ImageRecord.for_training`), validation keeps the raw ones.
    """
    d = cfg.data
    pool = training_pool(records, cfg, data)
    folds = None
    if d.val_split is not None:
        val = [r for r in records if r.split == d.val_split]
        train = [r for r in pool if r.split != d.val_split]
    elif d.fold is not None:
        folds = assign_folds(pool, data, d.folds, cfg.train.seed)
        train = [r for r in pool if folds[r.image_id] != d.fold]
        val = [r for r in pool if folds[r.image_id] == d.fold]
        if not val:
            raise CellstackError(f"fold {d.fold} has no validation images")
    else:
        train, val = pool, []
    if not train:
        raise CellstackError(f"{data}: the config leaves no training images")
    return [r.for_training() for r in train], val, folds


def validate(
    model: torch.nn.Module,
    records: list[ImageRecord],
    cfg: Config,
    device: torch.device,
    world: distributed.World | None = None,
) -> float:
    """Mean competition score of the model on annotated records (full images).

    Under DDP each rank scores its share of the records and the mean is over all.
    """
    from cellstack.data.dataset import load_sample
    from cellstack.evaluation.metric import score_image
    from cellstack.inference.postprocess import pixels_to_sparse
    from cellstack.inference.predictor import Predictor
    from cellstack.inference.run import params_from

    world = world or distributed.World()
    p = cfg.predict
    predictor = Predictor(
        model,
        params_from(p),
        device=device,
        tile_size=p.tile_size,
        tile_overlap=p.tile_overlap,
        batch_size=p.batch_size,
    )
    scores = []
    for rec in distributed.shard(records, world):
        image, _ = load_sample(rec)
        (pred,) = predictor([image])
        scores.append(
            score_image(
                rec.sparse_masks(), pixels_to_sparse(pred.pixels, rec.shape), shape=rec.shape
            ).score
        )
    model.train()
    scores = [s for part in distributed.gather(scores, world) for s in part]
    return float(np.mean(scores)) if scores else float("nan")


class _Log:
    """``RUN/log.csv``: one row per logged iteration; on resume, rows past it are cut."""

    def __init__(self, path: Path, start: int) -> None:
        self.path = path
        rows = []
        if start > 0 and path.is_file():
            with open(path, newline="") as f:
                # A kill mid-append can leave a cut last line: keep whole rows only.
                rows = [
                    r
                    for r in csv.DictReader(f)
                    if (r.get("iteration") or "").isdigit()
                    and int(r["iteration"]) <= start
                    and None not in r.values()
                ]
        with atomic_write(path, newline="") as f:
            writer = csv.DictWriter(f, fieldnames=LOG_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        self.rows = rows

    def add(self, row: dict) -> None:
        row = {k: row.get(k, "") for k in LOG_COLUMNS}
        self.rows.append(row)
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=LOG_COLUMNS).writerow(row)


def plot_log(rows: list[dict], path: Path) -> None:
    """Losses (log scale) and validation score against iteration, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cellstack.fileio import atomic_path

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name in ("loss", *LOSS_NAMES):
        points = [
            (int(r["iteration"]), float(r[name])) for r in rows if r.get(name) not in ("", None)
        ]
        if points:
            ax.plot(*zip(*points, strict=True), label=name, lw=2 if name == "loss" else 1)
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.legend(loc="upper right", fontsize=8)
    val = [(int(r["iteration"]), float(r["val_score"])) for r in rows if r["val_score"] != ""]
    if val:
        ax2 = ax.twinx()
        ax2.plot(*zip(*val, strict=True), "ko-", label="val score")
        ax2.set_ylabel("validation score (competition metric)")
        ax2.legend(loc="upper center", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def train(
    cfg: Config,
    data: str | Path,
    run: str | Path,
    *,
    resume: bool = False,
    stop_after: int | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train a detector on ``data`` (any supported layout) into the run folder ``run``.

    Args:
        cfg: the configuration (ignored with ``resume``: the run's own is used).
        resume: continue the run in ``run`` from its checkpoint.
        stop_after: stop after this many iterations of this call, as a job with a time
            limit would, leaving a checkpoint to ``resume`` from (the LR schedule still
            spans ``train.iterations``).
        progress: show a progress bar (rank 0 only under torchrun).
    """
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from cellstack.data.dataset import TrainCrops, collate
    from cellstack.modeling.build import build_model

    data, run = Path(data), Path(run)
    state = None
    if resume:
        state = ckpt.load(run / ckpt.CHECKPOINT)
        from cellstack.config import config_from_dict

        cfg = config_from_dict(state["config"])
    elif (run / ckpt.CHECKPOINT).is_file() or (run / ckpt.FINAL).is_file():
        raise CellstackError(
            f"{run} already holds a training run; pass --resume to continue it "
            "or choose another --out"
        )
    elif run.exists() and not run.is_dir():
        raise CellstackError(f"{run}: exists and is not a folder; choose another --out")
    t = cfg.train
    device = pick_device(t.device, distributed.launched().local_rank)
    world = distributed.setup(device)
    if t.batch_size % world.size:
        raise CellstackError(
            f"train.batch_size={t.batch_size} (the global batch) must be divisible by the "
            f"{world.size} processes"
        )
    per_rank = t.batch_size // world.size
    records = load_dataset(data)
    train_records, val_records, folds = split_records(records, cfg, data)
    if cfg.data.val_images:
        val_records = val_records[: cfg.data.val_images]
    class_names = state["class_names"] if state else class_names_of(records)
    if state is not None:  # the stored config is already resolved
        data_stats = state.get("data_stats")
    else:
        stats = measure(train_records)
        data_stats = stats.to_dict()
        cfg, derived = derive(cfg, stats)
        if derived and world.main:
            print(
                f"from {stats.objects} training objects (median diameter "
                f"{stats.diameter_median:.0f} px): "
                + ", ".join(f"{k}={v}" for k, v in derived.items())
            )
    if world.main:
        run.mkdir(parents=True, exist_ok=True)
        remove_partials(run)  # what a killed write left behind
        save_config(cfg, run / "config.yaml")
        if data_stats is not None:
            with atomic_write(run / "data_stats.json") as f:
                json.dump(data_stats, f, indent=1)
        if folds is not None:
            write_folds_csv(run / "folds.csv", [*train_records, *val_records], folds)

    torch.manual_seed(t.seed)  # the same initial weights on every rank
    model = build_model(cfg.model, class_names, cfg.predict)
    if state is None and cfg.init.from_run:
        report = ckpt.init_from_run(model, cfg.init.from_run)
        if world.main:
            print(report.summary())
    model = model.to(device)
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
    use_amp = t.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    ema = ModelEMA(model, t.ema) if t.ema > 0 else None

    def weights() -> dict[str, torch.Tensor]:
        """What validation and model.pt use: the EMA weights when averaging."""
        return ema.shadow if ema is not None else model.state_dict()

    def finish(rows: list[dict]) -> None:
        """Plot, tune thresholds, then write model.pt: last, as it says "finished"."""
        plot_log(rows, run / "training.png")
        if t.auto_thresholds:
            final = build_model(cfg.model, class_names, cfg.predict)
            final.load_state_dict(weights())
            pool = val_records or train_records
            tune_run_thresholds(final.to(device).eval(), cfg, pool, data_stats, run, device)
        ckpt.save(ckpt.final_state(weights(), cfg, class_names, data_stats), run / ckpt.FINAL)

    start = 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        _restore_rng(state["rng"], world, run)
        start = int(state["iteration"])
    else:
        torch.manual_seed(t.seed + world.rank)  # the samplers' draws differ per rank
    if start >= t.iterations:
        if (run / ckpt.FINAL).is_file():
            raise CellstackError(f"{run}: already trained for {start} of {t.iterations} iterations")
        # Killed while the run was being finished: the last checkpoint holds it all.
        if world.main:
            finish(_Log(run / "log.csv", start).rows)
        distributed.barrier(world)
        return TrainResult(run, start, float("nan"), None)

    dataset = TrainCrops(
        train_records,
        class_names,
        crop_size=cfg.data.crop_size,
        augment=cfg.data.augment,
        length=t.iterations * t.batch_size,
        seed=t.seed,
        crop_sampling=cfg.data.crop_sampling,
    )
    # Iteration i uses samples [i*B, (i+1)*B); this rank takes its slice of them.
    first = world.rank * per_rank
    indices = [
        i * t.batch_size + first + j for i in range(start, t.iterations) for j in range(per_rank)
    ]
    loader = DataLoader(
        dataset,
        batch_size=per_rank,
        sampler=indices,
        num_workers=t.num_workers,
        collate_fn=collate,
        # A private generator: the loader must not draw from the global RNG, whose state
        # the checkpoint restores for the model's own sampling.
        generator=torch.Generator().manual_seed(t.seed),
    )
    log = _Log(run / "log.csv", start) if world.main else None

    def save_checkpoint(iteration: int) -> None:
        rng = distributed.gather(ckpt.rng_state(), world)
        if world.main:
            ckpt.save(
                {
                    **ckpt.final_state(model.state_dict(), cfg, class_names, data_stats),
                    **({"ema": ema.state_dict()} if ema is not None else {}),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "rng": rng,
                    "iteration": iteration,
                },
                run / ckpt.CHECKPOINT,
            )

    net.train()
    last_saved, val_score, loss_value = start, None, float("nan")
    t0 = time.perf_counter()
    bar = tqdm(
        total=t.iterations,
        initial=start,
        desc="training" if world.size == 1 else f"training ({world.size} processes)",
        unit="it",
        disable=not (progress and world.main),
        dynamic_ncols=True,
    )
    for it, (images, targets) in enumerate(loader, start=start):
        if stop_after is not None and it - start >= stop_after:
            save_checkpoint(it)
            bar.close()
            return TrainResult(run, it, loss_value, val_score)
        images = [im.to(device, non_blocking=True) for im in images]
        targets = [{k: v.to(device, non_blocking=True) for k, v in tg.items()} for tg in targets]
        with torch.autocast(device.type, enabled=use_amp):
            losses = net(images, targets)
        losses = {k: v.float() for k, v in losses.items()}
        loss = combine_losses(losses, loss_weights(it / t.iterations, t.loss_decay))
        # One all-reduce gives every rank the same view: the logged means and the
        # NaN check (a rank that stopped alone would leave the others waiting).
        kinds = losses_by_kind(losses)
        stats = distributed.mean(
            torch.tensor([loss.item(), *[kinds.get(k, 0.0) for k in LOSS_NAMES]], device=device),
            world,
        ).tolist()
        if not math.isfinite(stats[0]):
            bar.close()
            bad = ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items())
            saved = (
                f"The last good checkpoint is {run / ckpt.CHECKPOINT} (iteration {last_saved})"
                if last_saved > 0
                else "No checkpoint was written before it"
            )
            raise TrainingDiverged(
                f"loss became {stats[0]} at iteration {it + 1} ({bad}); stopped. {saved}. "
                "Lower train.lr or check the data"
            )
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if t.grad_clip > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, t.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        if ema is not None:
            ema.update(model)
        done = it + 1
        loss_value = stats[0]
        bar.update(1)
        bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
        row = None
        if done % t.log_every == 0 or done == t.iterations:
            row = {
                "iteration": done,
                "lr": scheduler.get_last_lr()[0],
                "loss": loss_value,
                **{k: v for k, v in zip(LOSS_NAMES, stats[1:], strict=True) if k in kinds},
                "seconds": round(time.perf_counter() - t0, 2),
            }
        if val_records and t.eval_every and (done % t.eval_every == 0 or done == t.iterations):
            if ema is not None:
                with ema.applied(model):
                    val_score = validate(model, val_records, cfg, device, world)
            else:
                val_score = validate(model, val_records, cfg, device, world)
            net.train()
            row = {**(row or {"iteration": done}), "val_score": val_score}
            if world.main:
                bar.write(f"iteration {done}: validation score {val_score:.4f}")
        if row is not None and log is not None:
            log.add(row)
        if done % t.checkpoint_every == 0 or done == t.iterations:
            save_checkpoint(done)
            last_saved = done
    bar.close()
    if world.main:
        finish(log.rows)
    distributed.barrier(world)  # no rank reports "done" before model.pt exists
    return TrainResult(run, t.iterations, loss_value, val_score)


#: Images the automatic threshold search predicts at most (a few suffice, and it runs
#: after every training).
AUTO_TUNE_IMAGES = 16


def tune_run_thresholds(
    model: torch.nn.Module,
    cfg: Config,
    records: list[ImageRecord],
    data_stats: dict | None,
    run: Path,
    device: torch.device,
) -> None:
    """Choose the run's post-processing thresholds on ``records`` (the validation
    images, or the training images when there are none) and write ``thresholds.yaml``.

    The grid spans confidences 0.05..0.90, three mask thresholds and NMS levels, and
    minimum sizes relative to the training objects (0, and 1/2 and 1x the 1st
    percentile of their areas). Per-type thresholds are kept only for types with at
    least 4 images; the rest use the default.
    """
    from cellstack.data.stats import ObjectStats
    from cellstack.inference.postprocess import Thresholds
    from cellstack.inference.run import params_from, raw_predictions
    from cellstack.inference.sources import THRESHOLDS, Source, write_thresholds
    from cellstack.inference.tune import TuneGrid, tune_thresholds

    records = records[:AUTO_TUNE_IMAGES]
    current = Thresholds(params_from(cfg.predict))
    area = ObjectStats.from_dict(data_stats).area_p1 if data_stats else 0.0
    grid = TuneGrid(
        mask_thresh=(0.35, 0.45, 0.55),
        mask_nms_iou=(0.1, 0.2, 0.3),
        min_size=tuple(sorted({0, int(area // 2), int(area)})),
        score_thresh=tuple(np.round(np.arange(0.05, 0.901, 0.05), 2).tolist()),
    )
    src = Source(model, tuple(model.class_names), cfg, current, run / THRESHOLDS)
    raws = raw_predictions(src, records, device=device, progress=False)
    result = tune_thresholds(raws, records, src.class_names, current, grid, progress=False)
    count = {name: g["images"] for name, g in result.groups.items()}
    chosen = Thresholds(
        result.thresholds.default,
        {k: v for k, v in result.thresholds.per_type.items() if count.get(k, 0) >= 4},
    )
    which = "validation" if cfg.data.fold is not None or cfg.data.val_split else "training"
    write_thresholds(
        run / THRESHOLDS,
        chosen,
        f"Chosen after training on {len(records)} {which} images "
        f"(score {result.before:.4f} at the config's thresholds -> "
        f"{result.after:.4f}).",
    )
    print(
        f"thresholds tuned on {len(records)} {which} images: score {result.before:.4f}"
        f" -> {result.after:.4f} (score_thresh {chosen.default.score_thresh}, "
        f"mask_thresh {chosen.default.mask_thresh}) -> {run / THRESHOLDS}"
    )


def _restore_rng(saved: dict | list, world: distributed.World, run: Path) -> None:
    """Set this rank's RNG state from a checkpoint (one state per rank that wrote it)."""
    states = saved if isinstance(saved, list) else [saved]
    if len(states) != world.size and world.main:
        print(
            f"note: {run} was checkpointed by {len(states)} process(es), resuming with "
            f"{world.size}: training continues, but not bit-exactly"
        )
    ckpt.set_rng_state(states[min(world.rank, len(states) - 1)])
