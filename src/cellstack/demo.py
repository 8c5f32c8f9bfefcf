"""``cellstack demo``: the whole job on an embedded default, end to end on a CPU.

The recipe (:data:`STEPS`, one function each, in this order):

1. synthesise a small phase-contrast dataset (Sartorius layout) and hold out one fold of
   samples (grouped by ``sample_id``) as the test set: training never sees it, not even
   for validation or threshold tuning;
2. train a small Mask R-CNN (``configs/demo.yaml``) from scratch on the other folds
   (its thresholds are then tuned on those training images, as on a user's data);
3. predict the held-out images with it and with the built-in ``cells`` as it is
   (zero-shot);
4. calibrate ``cells`` on three labelled training images (``cellstack tune cells
   THREE --out NEW``: thresholds, outline offset and scale, no training; seconds);
5. finetune ``cells`` on all the training images (``configs/finetune.yaml``; minutes);
6. segment the held-out images with an Otsu baseline;
7. score everything with the competition metric and COCO AP and write side-by-side
   overlays (truth | Otsu | models);
8. segment two real fluorescent nuclei images shipped as sample data (mnfinder's test
   split, MIT) with the built-in ``nuclei`` model and with Otsu;

then print the tables (each adapted model with the seconds its adaptation took).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from cellstack.data.samples import sample_path

DEMO_CONFIG = "demo.yaml"


def demo_config_path() -> Path:
    """The packaged demo config (also shipped as ``configs/demo.yaml``)."""
    return Path(str(resources.files("cellstack") / "configs" / DEMO_CONFIG))


def finetune_config_path() -> Path:
    """The packaged finetuning config (also shipped as ``configs/finetune.yaml``)."""
    return Path(str(resources.files("cellstack") / "configs" / "finetune.yaml"))


def fresh(folder: Path) -> None:
    """Remove a folder the demo wrote before (only ever inside the demo's own folder)."""
    import shutil

    if folder.exists():
        shutil.rmtree(folder)


#: Marks a folder the demo made: only such a folder (or an empty one) is written into.
MARKER = ".cellstack-demo"


def claim_output(out: Path) -> None:
    """Make ``out`` the demo's folder, before anything is written or deleted.

    Refused: a file, or a non-empty folder the demo did not create (its ``run/`` could
    be a user's trained model, its ``data/train.csv`` a user's annotations).
    """
    from cellstack.errors import CellstackError

    if out.exists() and not out.is_dir():
        raise CellstackError(f"{out}: exists and is not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise CellstackError(
            f"{out}: folder is not empty and was not made by cellstack demo; choose another "
            "--out (the demo replaces what it wrote there before)"
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("made by cellstack demo; it may replace this folder's contents\n")


@dataclass(frozen=True)
class DemoResult:
    """What the demo measured and where it wrote things."""

    out_dir: Path
    scores: dict[str, dict[str, float]]
    seconds: float


#: Training images the demo calibrates ``cells`` on (a user's "few labels").
CALIBRATION_IMAGES = 3


@dataclass
class _Run:
    """What the demo's steps share: settings, and what earlier steps made."""

    out: Path
    n_images: int
    seed: int
    cell_types: tuple[str, ...]
    overrides: tuple[str, ...]
    finetune_overrides: tuple[str, ...]
    progress: bool
    records: list = field(default_factory=list)
    held_out: list = field(default_factory=list)
    #: ``{method: prediction folder under out}``, in the tables' order.
    methods: dict[str, str] = field(default_factory=dict)
    #: ``{method: seconds its training or calibration took}``.
    seconds: dict[str, float] = field(default_factory=dict)
    reports: dict = field(default_factory=dict)
    real: dict = field(default_factory=dict)

    @property
    def data(self) -> Path:
        return self.out / "data"

    @property
    def held_dir(self) -> Path:
        return self.out / "held_out"

    def say(self, *args) -> None:
        if self.progress:
            print(*args)

    def predict(self, source, name: str) -> None:
        """Predict the held-out images with ``source`` into ``out/name``."""
        from cellstack.inference.predict import predict_folder

        predict_folder(
            source,
            self.held_dir,
            self.out / name,
            device="cpu",
            progress=self.progress,
            overwrite=True,
        )

    @property
    def has_cells(self) -> bool:
        from cellstack.modeling.builtin import builtin_names

        return "cells" in builtin_names()


def _synthesize(run: _Run, step: str) -> None:
    import csv

    from cellstack.data.folds import folds_beside, grouped_stratified_folds, write_folds_csv
    from cellstack.data.sartorius import read_train_csv, write_train_csv
    from cellstack.data.synthetic import CELL_TYPES, synthesize
    from cellstack.fileio import open_text

    run.say(f"{step} synthesizing {run.n_images} images into {run.data}; holding out a fold")
    synthesize(
        run.data,
        run.n_images,
        seed=run.seed,
        progress=run.progress,
        cell_types=run.cell_types or CELL_TYPES,
    )
    run.records = read_train_csv(run.data / "train.csv")
    folds = grouped_stratified_folds(run.records, 4, seed=run.seed)
    write_folds_csv(folds_beside(run.data), run.records, folds)
    run.held_out = [r for r in run.records if folds[r.image_id] == 0]
    held_ids = {r.image_id for r in run.held_out}
    # The training images' rows only: a train.csv of their own beside train/.
    with open_text(run.data / "train.csv", "train.csv") as f:
        rows = [row for row in csv.DictReader(f) if row["id"] not in held_ids]
    write_train_csv(run.data / "demo_train.csv", rows)
    # A user's few labels: the first training image of each type, then the next ones.
    train_records = sorted(
        (r for r in run.records if r.image_id not in held_ids), key=lambda r: r.image_id
    )
    firsts = {}
    for r in train_records:
        firsts.setdefault(r.cell_type, r.image_id)
    chosen = list(firsts.values())
    chosen += [r.image_id for r in train_records if r.image_id not in chosen]
    chosen = set(chosen[:CALIBRATION_IMAGES])
    write_train_csv(run.data / "demo_calibrate.csv", [r for r in rows if r["id"] in chosen])
    for rec in run.held_out:  # the predictor reads a folder of images
        target = run.held_dir / rec.image_path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            target.symlink_to(rec.image_path.resolve())


def _train_scratch(run: _Run, step: str) -> None:
    from cellstack.config import load_config
    from cellstack.engine.trainer import train

    cfg = load_config(demo_config_path(), list(run.overrides))
    n_train = len(run.records) - len(run.held_out)
    run.say(
        f"{step} training {cfg.model.arch} ({cfg.model.backbone.name}) from scratch for "
        f"{cfg.train.iterations} iterations on {n_train} images"
    )
    fresh(run.out / "run")  # a demo starts afresh
    t0 = time.perf_counter()
    train(cfg, run.data / "demo_train.csv", run.out / "run", progress=run.progress)
    run.seconds["model"] = time.perf_counter() - t0


def _zero_shot(run: _Run, step: str) -> None:
    run.say(f"{step} predicting {len(run.held_out)} held-out images: scratch model, cells")
    run.predict(run.out / "run", "model")
    run.methods["model"] = "model"
    if run.has_cells:
        run.predict("cells", "cells")
        run.methods["cells zero-shot"] = "cells"


def _calibrate(run: _Run, step: str) -> None:
    from cellstack.inference.calibration import run_tune

    if not run.has_cells:
        run.say(f"{step} calibrating: skipped (no built-in cells)")
        return
    run.say(f"{step} calibrating cells on {CALIBRATION_IMAGES} training images (no training)")
    fresh(run.out / "calibrated")
    t0 = time.perf_counter()
    result, _ = run_tune(
        "cells",
        run.data / "demo_calibrate.csv",
        out=run.out / "calibrated",
        device="cpu",
        progress=run.progress,
    )
    run.seconds["cells calibrated"] = time.perf_counter() - t0
    run.say(f"  {result.before:.4f} -> {result.after:.4f} on those images, scale {result.scale:g}")
    run.predict(run.out / "calibrated", "cells_calibrated")
    run.methods["cells calibrated"] = "cells_calibrated"


def _finetune(run: _Run, step: str) -> None:
    from cellstack.config import load_config
    from cellstack.engine.trainer import train

    if not run.has_cells:
        run.say(f"{step} finetuning: skipped (no built-in cells)")
        return
    cfg = load_config(finetune_config_path(), [*run.finetune_overrides, "init.from=cells"])
    run.say(f"{step} finetuning cells for {cfg.train.iterations} iterations on the training images")
    fresh(run.out / "finetuned")
    t0 = time.perf_counter()
    train(cfg, run.data / "demo_train.csv", run.out / "finetuned", progress=run.progress)
    run.seconds["cells finetuned"] = time.perf_counter() - t0
    run.predict(run.out / "finetuned", "cells_finetuned")
    run.methods["cells finetuned"] = "cells_finetuned"


def _otsu(run: _Run, step: str) -> None:
    from tqdm import tqdm

    from cellstack.data import rle
    from cellstack.data.dataset import load_sample
    from cellstack.data.labels import write_label_tiff
    from cellstack.data.sartorius import write_submission
    from cellstack.inference.baseline import otsu_instances

    run.say(f"{step} Otsu baseline")
    rles = {}
    for rec in tqdm(run.held_out, desc="otsu", unit="img", disable=not run.progress):
        labels = otsu_instances(load_sample(rec)[0])
        rles[rec.image_id] = rle.encode_labels(labels)[1]
        write_label_tiff(run.out / "otsu" / "labels" / f"{rec.image_id}.tif", labels)
    write_submission(run.out / "otsu" / "submission.csv", rles)
    run.methods = {"otsu": "otsu", **run.methods}


def _score(run: _Run, step: str) -> None:
    from cellstack.data.dataset import load_sample
    from cellstack.data.images import write_png
    from cellstack.data.layouts import load_predictions
    from cellstack.evaluation.report import evaluate
    from cellstack.inference.export import PredictionFolder
    from cellstack.inference.overlay import outline_overlay, side_by_side

    run.say(f"{step} scoring; overlays")
    for name, folder in run.methods.items():
        preds = load_predictions(run.out / folder / "submission.csv", run.held_out)
        run.reports[name] = evaluate(run.held_out, preds)
        run.reports[name].write_json(run.out / folder / "scores.json")
    for rec in run.held_out:
        image, truth = load_sample(rec)
        panels = [outline_overlay(image, truth)]
        for folder in run.methods.values():
            labels = PredictionFolder(run.out / folder).labels(rec.image_id)
            panels.append(outline_overlay(image, labels))
        write_png(run.out / "overlays" / f"{rec.image_id}.png", side_by_side(*panels))


def _real_nuclei(run: _Run, step: str) -> None:
    from cellstack.data.dataset import load_sample
    from cellstack.data.images import write_png
    from cellstack.data.layouts import load_dataset, load_predictions
    from cellstack.data.masks import sparse_from_labels
    from cellstack.evaluation.report import evaluate
    from cellstack.inference.baseline import otsu_instances
    from cellstack.inference.export import PredictionFolder
    from cellstack.inference.overlay import outline_overlay, side_by_side
    from cellstack.inference.predict import predict_folder
    from cellstack.modeling.builtin import builtin_names

    if "nuclei" not in builtin_names():
        run.say(f"{step} real nuclei: skipped (no built-in nuclei)")
        return
    run.say(f"{step} two real nuclei images (mnfinder test split): nuclei, Otsu")
    samples = sample_path("nuclei")
    records = load_dataset(samples)
    out = run.out / "nuclei"
    predict_folder(
        "nuclei", samples / "images", out, device="cpu", progress=run.progress, overwrite=True
    )
    otsu = {r.image_id: otsu_instances(load_sample(r)[0]) for r in records}
    run.real = {
        "otsu": evaluate(records, {k: sparse_from_labels(v) for k, v in otsu.items()}),
        "nuclei": evaluate(records, load_predictions(out / "labels", records)),
    }
    run.real["nuclei"].write_json(out / "scores.json")
    for rec in records:
        image, truth = load_sample(rec)
        pred = PredictionFolder(out).labels(rec.image_id)
        panels = (truth, otsu[rec.image_id], pred)
        write_png(
            run.out / "overlays" / f"nuclei_{rec.image_id}.png",
            side_by_side(*(outline_overlay(image, p) for p in panels)),
        )


#: The demo, in order (the module docstring lists the same steps).
STEPS = (
    _synthesize,
    _train_scratch,
    _zero_shot,
    _calibrate,
    _finetune,
    _otsu,
    _score,
    _real_nuclei,
)


def run_demo(
    out: str | Path,
    *,
    n_images: int = 32,
    seed: int = 0,
    overrides: tuple[str, ...] = (),
    progress: bool = True,
    cell_types: tuple[str, ...] | None = None,
    finetune_overrides: tuple[str, ...] = ("train.iterations=150",),
) -> DemoResult:
    """Run the demo (:data:`STEPS`) into ``out`` and return the scores of every method.

    ``cell_types``: synthetic cell types (default the three phase-contrast ones; see
    :mod:`cellstack.data.synthetic` for the relief and fluorescence types).
    ``overrides``: for the scratch model (``configs/demo.yaml``);
    ``finetune_overrides``: for finetuning the built-in ``cells`` (``configs/
    finetune.yaml``)."""
    t0 = time.perf_counter()
    out = Path(out)
    claim_output(out)
    run = _Run(
        out,
        n_images,
        seed,
        tuple(cell_types or ()),
        tuple(overrides),
        tuple(finetune_overrides),
        progress,
    )
    for k, step in enumerate(STEPS, 1):
        step(run, f"[{k}/{len(STEPS)}]")
    seconds = time.perf_counter() - t0
    scores = {
        name: {
            "score": r.score,
            "ap": r.ap,
            "ap50": r.ap50,
            **r.per_cell_type,
            **({"seconds": run.seconds[name]} if name in run.seconds else {}),
        }
        for name, r in run.reports.items()
    }
    for name, r in run.real.items():
        scores[f"{name} (real nuclei)"] = {"score": r.score, "ap": r.ap, "ap50": r.ap50}
    _print_tables(run, scores, seconds)
    return DemoResult(out, scores, seconds)


def _print_tables(run: _Run, scores: dict, seconds: float) -> None:
    types = sorted(run.reports["model"].per_cell_type)
    split = "fold 0 of 4, grouped by sample, never seen in training"
    run.say(f"\nheld-out synthetic images: {len(run.held_out)} ({split})")
    run.say(
        f"{'method':<18}{'score':>8}{'AP':>8}{'AP50':>8}"
        + "".join(f"{t:>9}" for t in types)
        + f"{'seconds':>9}"
    )
    for name in run.reports:
        sc = scores[name]
        took = f"{sc['seconds']:>9.0f}" if "seconds" in sc else f"{'-':>9}"
        run.say(
            f"{name:<18}{sc['score']:>8.4f}{sc['ap']:>8.4f}{sc['ap50']:>8.4f}"
            + "".join(f"{sc.get(t, float('nan')):>9.4f}" for t in types)
            + took
        )
    run.say("(seconds: training, or calibration on 3 images, on this machine's CPU)")
    if run.real:
        run.say("\nreal fluorescent nuclei (2 mnfinder test images, never seen in training)")
        for name, r in run.real.items():
            run.say(f"{name:<18}{r.score:>8.4f}{r.ap:>8.4f}{r.ap50:>8.4f}")
    columns = " | ".join(["truth", *run.methods.values()])
    run.say(f"overlays ({columns}): {run.out / 'overlays'}")
    run.say(
        f"training curves: {run.out / 'run' / 'training.png'}; total time {seconds / 60:.1f} min"
    )
