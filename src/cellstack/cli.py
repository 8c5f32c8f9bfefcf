"""The ``cellstack`` command line: one console script, one subcommand per job.

Heavy libraries (torch, pycocotools, cv2) are imported inside the commands so that
``cellstack --help`` answers at once. A :class:`~cellstack.errors.CellstackError`
becomes a one-line ``error:`` message and exit status 2, not a traceback.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from cellstack import __version__
from cellstack.errors import CellstackError

_OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")


def _cmd_synth(args: argparse.Namespace) -> int:
    from cellstack.data.synthetic import CELL_TYPES, synthesize

    cell_types = (
        tuple(t.strip() for t in args.cell_types.split(",") if t.strip())
        if args.cell_types is not None
        else CELL_TYPES
    )
    ids = synthesize(
        args.out,
        args.n_images,
        seed=args.seed,
        shape=(args.height, args.width),
        cell_types=cell_types,
        livecell=args.livecell,
        progress=not args.quiet,
    )
    print(f"wrote {len(ids)} images to {args.out} (train.csv, train/)")
    if args.livecell:
        print(f"wrote LIVECell-style COCO json and tifs to {Path(args.out) / 'livecell'}")
    return 0


def _cmd_prepare(args: argparse.Namespace) -> int:
    from cellstack.data.livecell import prepare_livecell
    from cellstack.data.sartorius import prepare_sartorius

    if args.dataset == "livecell":
        report = prepare_livecell(args.source, args.out, progress=not args.quiet)
    else:
        report = prepare_sartorius(
            args.source,
            args.out,
            holes=args.fill_holes,
            corrected=args.corrected,
            progress=not args.quiet,
        )
    print(report.summary())
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from cellstack.data.layouts import load_dataset, load_predictions
    from cellstack.evaluation.report import evaluate

    truths = load_dataset(args.truth)
    preds = load_predictions(args.pred, truths)
    report = evaluate(truths, preds, progress=not args.quiet)
    print(report.table())
    if args.json:
        report.write_json(args.json)
        print(f"wrote {args.json}")
    return 0


def _cmd_folds(args: argparse.Namespace) -> int:
    from cellstack.data.folds import folds_beside, grouped_stratified_folds, write_folds_csv
    from cellstack.data.layouts import load_dataset

    records = load_dataset(args.data)
    folds = grouped_stratified_folds(records, args.k, seed=args.seed)
    out = Path(args.out) if args.out else folds_beside(args.data)
    write_folds_csv(out, records, folds)
    for fold in range(args.k):
        members = [r for r in records if folds[r.image_id] == fold]
        types = sorted({r.cell_type for r in members})
        detail = ", ".join(f"{t} {sum(r.cell_type == t for r in members)}" for t in types)
        print(f"fold {fold}: {len(members)} images ({detail})")
    print(f"wrote {out}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from cellstack import ddp
    from cellstack.config import load_config
    from cellstack.engine.trainer import train

    if args.resume is not None:
        if args.config is not None or args.overrides:
            raise CellstackError(
                "--resume continues a run as it was configured; drop --config and overrides"
            )
        result = train(
            load_config(None), args.data, args.resume, resume=True, progress=not args.quiet
        )
    else:
        if args.out is None:
            raise CellstackError("train needs --out RUN (or --resume RUN)")
        cfg = load_config(args.config, args.overrides)
        result = train(cfg, args.data, args.out, progress=not args.quiet)
    score = "" if result.val_score is None else f", validation score {result.val_score:.4f}"
    if ddp.current().main:
        print(f"trained {result.iterations} iterations into {result.run}{score}")
    return 0


def _cmd_cv(args: argparse.Namespace) -> int:
    from cellstack import ddp
    from cellstack.config import load_config
    from cellstack.engine.cv import run_cv

    result = run_cv(
        load_config(args.config, args.overrides),
        args.data,
        args.out,
        folds=args.folds,
        device=args.device,
        progress=not args.quiet,
    )
    if ddp.current().main:
        print(result.table())
        print(f"wrote {args.out / 'cv.md'}, cv.json, oof/submission.csv, ensemble.yaml")
    return 0


def _cmd_tune(args: argparse.Namespace) -> int:
    from cellstack.inference.calibration import run_tune

    t0 = time.perf_counter()
    result, path = run_tune(
        args.source,
        args.data,
        out=args.out,
        fold=args.fold,
        overrides=tuple(args.overrides),
        device=args.device,
        progress=not args.quiet,
        allow_unfinished=args.allow_unfinished,
    )
    print(result.table())
    print(f"wrote {path} in {time.perf_counter() - t0:.1f} s")
    if args.out is not None:
        print(f"predict with it: cellstack predict {path} IMAGES --out OUT")
    return 0


def _channels(text: str) -> tuple[int, ...]:
    """``--channel 1`` or ``--channel 0,2``."""
    try:
        chosen = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or N,M,... got {text!r}") from None
    if any(c < 0 for c in chosen):
        raise argparse.ArgumentTypeError(f"channels are counted from 0, got {text!r}")
    return chosen


def _cmd_predict(args: argparse.Namespace) -> int:
    from cellstack import ddp
    from cellstack.inference.predict import predict_folder

    if args.dry_run:
        from cellstack.inference.predict import dry_run

        print(
            dry_run(
                args.run,
                overrides=tuple(args.overrides),
                allow_unfinished=args.allow_unfinished,
                image_size=(args.dry_run_size[1], args.dry_run_size[0]),
            )
        )
        return 0
    if args.images is None or args.out is None:
        raise CellstackError("predict needs IMAGES and --out (or --dry-run)")
    from cellstack.data.omezarr import is_zarr

    if is_zarr(args.images) or args.block is not None:
        return _predict_large(args)
    options = _predict_options(args)
    common = dict(device=args.device, overwrite=args.overwrite, progress=not args.quiet)
    if args.workers is not None or args.scheduler is not None:
        from cellstack.distributed.cluster import open_client
        from cellstack.distributed.folders import predict_images

        if args.device == "auto":
            common["device"] = "cpu"  # a worker per GPU is asked for with --device cuda
        with open_client(args.workers, args.scheduler) as client:
            summary = predict_images(
                args.run, args.images, args.out, options, client=client, **common
            )
    else:
        summary = predict_folder(args.run, args.images, args.out, options, **common)
    if not ddp.current().main:
        return 0
    written = options.outputs.written()
    print(
        f"predicted {summary.n_cells} cells in {summary.n_images} images "
        f"({summary.seconds / max(summary.n_images, 1):.2f} s/image) -> {summary.out} "
        f"({', '.join(written)})"
    )
    return 0


def _predict_options(args: argparse.Namespace):
    """The :class:`~cellstack.inference.predict.PredictOptions` of predict's flags."""
    from cellstack.data.images import PlaneSpec
    from cellstack.inference.export import OutputOptions
    from cellstack.inference.predict import PredictOptions

    return PredictOptions(
        overrides=tuple(args.overrides),
        allow_unfinished=args.allow_unfinished,
        diameter=args.diameter,
        scale=args.scale,
        spec=PlaneSpec(args.channel, args.z_axis, args.t_axis, args.c_axis),
        outputs=OutputOptions(
            overlays=not args.no_overlays,
            save_rois=args.save_rois,
            label_dtype=args.label_dtype,
            save_geojson=args.save_geojson,
            save_ome_zarr=args.save_ome_zarr,
            save_seg_npy=args.save_seg_npy,
            tables=tuple(dict.fromkeys(args.table)),
        ),
    )


def _predict_large(args: argparse.Namespace) -> int:
    """``predict SOURCE big.ome.zarr --out labels.ome.zarr``: block by block."""
    from cellstack.distributed.blocks import segment
    from cellstack.distributed.cluster import open_client

    ignored = [
        flag
        for flag, on in (
            ("--save-rois", args.save_rois),
            ("--save-geojson", args.save_geojson),
            ("--save-seg-npy", args.save_seg_npy),
            ("--table", bool(args.table)),
            ("--channel", args.channel is not None),
            ("--z-axis", args.z_axis is not None),
            ("--t-axis", args.t_axis is not None),
            ("--c-axis", args.c_axis is not None),
        )
        if on
    ]
    if ignored:
        raise CellstackError(
            f"{args.images}: {ignored[0]} does not apply to a large image segmented in blocks "
            "(it writes an OME-Zarr label image and objects.csv)"
        )
    device = "cpu" if args.device == "auto" and args.workers else args.device
    seg = _predict_options(args).load(args.run, device)
    with open_client(args.workers, args.scheduler) as client:
        summary = segment(
            seg,
            args.images,
            args.out,
            block=args.block or 2048,
            overlap=args.overlap,
            client=client,
            overwrite=args.overwrite,
            progress=not args.quiet,
        )
    print(
        f"segmented {summary.cells} cells in {summary.blocks} blocks of {summary.block} px "
        f"(overlap {summary.overlap} px, {summary.seconds:.1f} s) -> {summary.out} "
        "(OME-Zarr labels, objects.csv, results.json)"
    )
    if summary.cut:
        print(
            f"warning: {summary.cut} cells touch a block's inner edge and may be cut; "
            f"raise --overlap above {summary.overlap}",
            file=sys.stderr,
        )
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    import json

    from cellstack.modeling.builtin import CARD, META, builtin_names, models_root

    names = builtin_names()
    if args.name is not None:
        if args.name not in names:
            raise CellstackError(
                f"no built-in model {args.name!r} (built-in: {', '.join(names) or 'none'})"
            )
        print((models_root() / args.name / CARD).read_text(encoding="utf-8"), end="")
        return 0
    if not names:
        print("no built-in models in this install")
        return 0
    print(f"built-in models (in {models_root()}); `cellstack models NAME` shows a card:")
    for name in names:
        folder = models_root() / name
        meta = json.loads((folder / META).read_text(encoding="utf-8"))
        card = (folder / CARD).read_text(encoding="utf-8").splitlines()
        summary = next((line for line in card[1:] if line.strip()), "")
        stats = meta.get("data_stats") or {}
        mb = sum(p.stat().st_size for p in folder.iterdir()) / 2**20
        print(
            f"  {name:<8} {summary} Trained objects' median diameter "
            f"{stats.get('diameter_median', float('nan')):.0f} px; {mb:.1f} MB."
        )
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from cellstack.demo import run_demo

    run_demo(args.out, n_images=args.n_images, seed=args.seed, overrides=tuple(args.overrides))
    return 0


def _add_quiet(parser: argparse.ArgumentParser) -> None:
    """``--quiet``, the same option on every subcommand that shows progress."""
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_synth(sub: argparse._SubParsersAction) -> None:
    """``cellstack synth``."""
    from cellstack.data.synthetic import CELL_TYPES, TYPES

    p = sub.add_parser("synth", help="write a synthetic phase-contrast dataset (Sartorius layout)")
    p.add_argument("out", type=Path, help="output folder")
    p.add_argument("--n-images", type=int, default=12, help="number of images (default 12)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--width", type=int, default=704, help="image width (default 704)")
    p.add_argument("--height", type=int, default=520, help="image height (default 520)")
    p.add_argument(
        "--cell-types",
        default=None,
        help="comma-separated cell types (default: the phase-contrast ones, "
        + ",".join(CELL_TYPES)
        + "): "
        + "; ".join(f"{t.name}: {t.description}" for t in TYPES.values()),
    )
    p.add_argument("--livecell", action="store_true", help="also write a LIVECell-style COCO json")
    _add_quiet(p)
    p.set_defaults(func=_cmd_synth)


def _add_prepare(sub: argparse._SubParsersAction) -> None:
    """``cellstack prepare``."""
    p = sub.add_parser(
        "prepare",
        help="check a dataset once and cache its masks (LIVECell or Sartorius)",
        description=(
            "Read a dataset once, check every row, cache the masks compactly and write a "
            "folder that train, cv, tune and evaluate accept. Bad rows, annotations and "
            "images are reported with their ids (problems.csv) and left out. Running it "
            "again on unchanged sources returns at once."
        ),
    )
    prep = p.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    q = prep.add_parser(
        "livecell",
        help="LIVECell: livecell_coco_{train,val,test}.json + tif images, all cell lines",
    )
    q.add_argument("source", type=Path, help="the LIVECell folder (searched recursively)")
    q.add_argument("--out", type=Path, required=True, help="prepared folder to write")
    _add_quiet(q)
    q = prep.add_parser("sartorius", help="Sartorius: train.csv + train/*.png")
    q.add_argument("source", type=Path, help="the competition folder (with train.csv)")
    q.add_argument("--out", type=Path, default=None, help="default: SOURCE/prepared")
    q.add_argument(
        "--fill-holes", action="store_true", help="fill holes in the training masks (original)"
    )
    q.add_argument(
        "--corrected",
        type=Path,
        default=None,
        metavar="DIR",
        help="folder of {id}.png whose red channel marks the true foreground; training "
        "masks are cut to it (validation keeps the raw masks)",
    )
    _add_quiet(q)
    p.set_defaults(func=_cmd_prepare)


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    """``cellstack evaluate``."""
    p = sub.add_parser("evaluate", help="score predictions with the competition metric and COCO AP")
    p.add_argument(
        "truth", type=Path, help="train.csv / Sartorius folder / label-image folder / COCO json"
    )
    p.add_argument("pred", type=Path, help="submission.csv or a folder of label images")
    p.add_argument("--json", type=Path, default=None, help="write the full report here")
    _add_quiet(p)
    p.set_defaults(func=_cmd_evaluate)


def _add_folds(sub: argparse._SubParsersAction) -> None:
    """``cellstack folds``."""
    p = sub.add_parser("folds", help="k-fold split grouped by sample_id, stratified by cell type")
    p.add_argument("data", type=Path, help="a dataset in any supported layout")
    p.add_argument("--k", type=int, default=5, help="number of folds (default 5)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--out", type=Path, default=None, help="output csv (default DATA/folds.csv)")
    p.set_defaults(func=_cmd_folds)


def _add_train(sub: argparse._SubParsersAction) -> None:
    """``cellstack train``."""
    p = sub.add_parser(
        "train", help="train a detector (cellstack train DATA --config CFG --out RUN)"
    )
    p.add_argument("data", type=Path, help="training data in any supported layout")
    p.add_argument("--config", type=Path, default=None, help="YAML config (default: built-in)")
    p.add_argument("--out", type=Path, default=None, help="run folder to create")
    p.add_argument("--resume", type=Path, default=None, metavar="RUN", help="continue a run")
    _add_quiet(p)
    p.set_defaults(func=_cmd_train, overrides=[], takes_overrides=True)


def _add_cv(sub: argparse._SubParsersAction) -> None:
    """``cellstack cv``."""
    p = sub.add_parser(
        "cv",
        help="k-fold training with out-of-fold predictions and a CV table",
        usage="cellstack cv DATA --config CFG --out CV [--folds 5] [section.key=value ...]",
        description=(
            "Train one run per fold (grouped by sample, stratified by cell type), predict "
            "each fold's held-out images, and score them: CV/cv.md has the table per fold "
            "and per cell type. Running the same command again continues where it stopped: "
            "finished folds are skipped, an interrupted one resumes. Then `cellstack tune "
            "CV` tunes post-processing on the OOF predictions and `cellstack predict CV "
            "IMAGES` predicts with the fold models as one ensemble."
        ),
    )
    p.add_argument("data", type=Path, help="training data in any supported layout")
    p.add_argument("--config", type=Path, default=None, help="YAML config (default: built-in)")
    p.add_argument("--out", type=Path, required=True, help="CV folder (created or continued)")
    p.add_argument("--folds", type=int, default=5, help="number of folds (default 5)")
    p.add_argument("--device", default="auto", help="device for OOF prediction (default auto)")
    _add_quiet(p)
    p.set_defaults(func=_cmd_cv, overrides=[], takes_overrides=True)


def _add_predict(sub: argparse._SubParsersAction) -> None:
    """``cellstack predict``."""
    p = sub.add_parser(
        "predict",
        help="segment images with a trained run or an ensemble",
        usage=(
            "cellstack predict RUN|ENSEMBLE.yaml|CV IMAGES --out OUT [predict.key=value ...]"
            " | --dry-run"
        ),
        description=(
            "Segment images with a run or an ensemble YAML (runs merged over models and "
            "flips). Thresholds, each beating the one before: the run's config, the "
            "ensemble YAML's postprocess, thresholds.yaml (cellstack tune); then an extra "
            "predict.key=value argument changes that one key (for every cell type) and "
            "keeps the other tuned values."
        ),
    )
    p.add_argument(
        "run", type=Path, help="run folder (cellstack train), ensemble YAML or CV folder"
    )
    p.add_argument(
        "images", type=Path, nargs="?", help="image folder, Sartorius folder or image file"
    )
    p.add_argument("--out", type=Path, help="output folder")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default)")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="load the run or ensemble and print its plan (models per stage, views, "
        "features held, estimated peak memory) without predicting",
    )
    p.add_argument(
        "--dry-run-size",
        type=int,
        nargs=2,
        default=(704, 520),
        metavar=("W", "H"),
        help="image size the plan is for (default 704 520)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the outputs of an earlier predict in --out (refused otherwise)",
    )
    p.add_argument(
        "--allow-unfinished",
        action="store_true",
        help="use checkpoint.pt of a run whose training has not finished",
    )
    _predict_image_options(p.add_argument_group("images: size, channels, axes"))
    _predict_output_options(p.add_argument_group("outputs"))
    _predict_scale_options(p.add_argument_group("many images, large images (Dask)"))
    _add_quiet(p)
    p.set_defaults(func=_cmd_predict, overrides=[], takes_overrides=True)


def _predict_image_options(g: argparse._ArgumentGroup) -> None:
    """How predict reads and resizes the images."""
    g.add_argument(
        "--diameter",
        type=float,
        default=None,
        metavar="D",
        help="typical cell diameter in these images (px): they are rescaled to the size "
        "the model trained at and masks mapped back (default: the trained size)",
    )
    g.add_argument(
        "--scale", type=float, default=None, help="rescale images by this factor instead"
    )
    g.add_argument(
        "--channel",
        type=_channels,
        default=None,
        metavar="N[,M...]",
        help="the channel to segment in multi-channel images (or several, averaged after "
        "each is scaled); for RGB without a channel axis, the colour sample",
    )
    for axis, what in (("z", "a Z-stack's depth"), ("t", "time"), ("c", "channels")):
        g.add_argument(
            f"--{axis}-axis",
            type=int,
            default=None,
            metavar="I",
            help=f"the stored array's axis I is {what}, where the file's metadata does not say",
        )


def _predict_output_options(g: argparse._ArgumentGroup) -> None:
    """What predict writes beside labels/ and objects/."""
    g.add_argument(
        "--save-rois",
        action="store_true",
        help="also write rois/{id}.zip, an ImageJ ROI set named by label id (Fiji)",
    )
    g.add_argument(
        "--save-seg-npy",
        action="store_true",
        help="also write seg-npy/{id}.png beside {id}_seg.npy, Cellpose's GUI file (2-D "
        "images): open the folder in Cellpose's GUI, correct the masks, train on it",
    )
    g.add_argument(
        "--table",
        action="append",
        default=[],
        choices=("anndata", "spatialdata"),
        help="also write the cells for the single-cell stack (repeatable): anndata: "
        "objects/{id}.h5ad (per-channel mean intensities, centroids in obsm['spatial']; "
        "pip install 'cellstack[tables]'); spatialdata: spatialdata/{id}.zarr, image, "
        "labels and table in one (2-D images; pip install 'cellstack[spatialdata]')",
    )
    g.add_argument(
        "--save-geojson",
        action="store_true",
        help="also write geojson/{id}.geojson, one polygon per cell (QuPath detections)",
    )
    g.add_argument(
        "--save-ome-zarr",
        action="store_true",
        help="also write ome-zarr/{id}.zarr, the label image as OME-Zarr (2-D images)",
    )
    g.add_argument("--no-overlays", action="store_true", help="do not write overlays/")
    g.add_argument(
        "--label-dtype",
        default="int32",
        choices=("int32", "uint32", "uint16"),
        help="dtype of labels/{id}.tif (default int32, which napari opens as Labels)",
    )


def _predict_scale_options(g: argparse._ArgumentGroup) -> None:
    """Dask: a folder over workers, one large image block by block."""
    g.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="run on a local Dask cluster of N worker processes (one thread each)",
    )
    g.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help="run on an existing Dask cluster (e.g. tcp://host:8786, dask-jobqueue)",
    )
    g.add_argument(
        "--block",
        type=int,
        default=None,
        metavar="PX",
        help="segment one large image (zarr, OME-Zarr or TIFF) in blocks of PX "
        "(default 2048 for zarr input) into an OME-Zarr label image --out",
    )
    g.add_argument(
        "--overlap",
        type=int,
        default=None,
        metavar="PX",
        help="overlap of neighbouring blocks (default twice the largest trained cell)",
    )


def _add_tune(sub: argparse._SubParsersAction) -> None:
    """``cellstack tune``."""
    p = sub.add_parser(
        "tune",
        help="search post-processing thresholds per cell type on annotated images",
        usage=(
            "cellstack tune MODEL|ENSEMBLE.yaml|CV [DATA] [--out NEW] [--fold K] "
            "[predict.key=value ...]"
        ),
        description=(
            "Calibrate a model to annotated images without training: predict them once, "
            "search mask threshold, outline offset, mask NMS, minimum size and confidence "
            "per predicted cell type for the best competition score. With --out, write a "
            "new model folder (weights copied, the tuned thresholds, the scale that fits "
            "the labels' cell size, a model card line) and leave MODEL as it was: the way "
            "to calibrate a built-in. Without it, write thresholds.yaml into the run (or "
            "next to the ensemble YAML), which predict then uses. A leave-one-out score "
            "(over the images, or a single image's quadrants) estimates the gain on new "
            "images; of the settings within noise of the best, the nearest to the model's "
            "is taken, and without an estimated gain the model's own are kept. A CV folder "
            "(cellstack cv) is tuned on its stored out-of-fold predictions."
        ),
    )
    p.add_argument(
        "source", type=Path, help="run folder, built-in model, ensemble YAML or CV folder"
    )
    p.add_argument(
        "data",
        type=Path,
        nargs="?",
        default=None,
        help="annotated images (any layout evaluate reads); a CV folder knows its own",
    )
    p.add_argument(
        "--out",
        type=Path,
        help="write a tuned model folder here (new or empty); MODEL is not changed",
    )
    p.add_argument("--fold", type=int, help="only this fold of DATA/folds.csv (validation)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default)")
    p.add_argument(
        "--allow-unfinished",
        action="store_true",
        help="use checkpoint.pt of a run whose training has not finished",
    )
    _add_quiet(p)
    p.set_defaults(func=_cmd_tune, overrides=[], takes_overrides=True)


def _add_models(sub: argparse._SubParsersAction) -> None:
    """``cellstack models``."""
    p = sub.add_parser(
        "models",
        help="list the built-in models (or show one's model card)",
        usage="cellstack models [NAME]",
    )
    p.add_argument("name", nargs="?", help="a built-in model: print its model card")
    p.set_defaults(func=_cmd_models)


def _add_export(sub: argparse._SubParsersAction) -> None:
    """``cellstack export``."""
    p = sub.add_parser(
        "export",
        help="write a model as one file other tools load (bioimage.io package, ONNX)",
        usage=(
            "cellstack export MODEL OUT.zip --format bioimageio [--sample IMAGE] | "
            "MODEL OUT.onnx --format onnx [predict.key=value ...]"
        ),
        description=(
            "Export a run, a built-in or a tuned model folder. bioimageio: a bioimage.io "
            "model package (spec 0.5; raw image in, instance labels out, cellstack's "
            "post-processing inside; pip install 'cellstack[bioimageio]'). onnx: every "
            "learnt layer in one ONNX graph with the model's config, class names and "
            "thresholds in its metadata; `cellstack predict OUT.onnx IMAGES` runs it in "
            "onnxruntime (pip install 'cellstack[onnx]')."
        ),
    )
    p.add_argument("model", help="run folder, built-in name or tuned model folder")
    p.add_argument("out", type=Path, help="the file to write (OUT.zip, OUT.onnx)")
    p.add_argument("--format", required=True, choices=("bioimageio", "onnx"), help="what to write")
    p.add_argument(
        "--sample",
        type=Path,
        default=None,
        help="bioimageio: the package's test image (default: a sample nuclei image)",
    )
    p.add_argument(
        "--license",
        default=None,
        help="bioimageio: the weights' SPDX licence (default Apache-2.0 for ImageNet-started "
        "encoders, else MIT)",
    )
    p.set_defaults(func=_cmd_export, overrides=[], takes_overrides=True)


def _cmd_export(args: argparse.Namespace) -> int:
    from cellstack.inference.modelexport import export_bioimageio, export_onnx

    suffix = {"onnx": ".onnx", "bioimageio": ".zip"}[args.format]
    if args.out.suffix != suffix:
        raise CellstackError(f"{args.out}: a {args.format} file's name ends in {suffix}")
    if args.format == "onnx":
        out = export_onnx(args.model, args.out, tuple(args.overrides))
        then = f"cellstack predict {out} IMAGES"
    else:
        out = export_bioimageio(
            args.model, args.out, args.sample, tuple(args.overrides), license=args.license
        )
        then = f"bioimageio test {out}"
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MB); {then}")
    return 0


def _add_demo(sub: argparse._SubParsersAction) -> None:
    """``cellstack demo``."""
    p = sub.add_parser(
        "demo",
        help="synthesize data, train a small model on CPU, predict, score, write overlays",
        usage="cellstack demo [--out DIR] [--n-images N] [section.key=value ...]",
    )
    p.add_argument(
        "--out", type=Path, default=Path("demo_out"), help="output folder (default demo_out)"
    )
    p.add_argument("--n-images", type=int, default=32, help="synthetic images (default 32)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.set_defaults(func=_cmd_demo, overrides=[], takes_overrides=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cellstack",
        description="Instance segmentation of cells in microscopy images.",
    )
    parser.add_argument("--version", action="version", version=f"cellstack {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_synth(sub)
    _add_prepare(sub)
    _add_evaluate(sub)
    _add_folds(sub)
    _add_train(sub)
    _add_cv(sub)
    _add_predict(sub)
    _add_tune(sub)
    _add_models(sub)
    _add_export(sub)
    _add_demo(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cellstack`` console script; returns the exit status."""
    parser = build_parser()
    # Config overrides (section.key=value) may sit anywhere after the subcommand.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if getattr(args, "takes_overrides", False) and all(_OVERRIDE.match(x) for x in extra):
            args.overrides = extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.func(args)
    except CellstackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        # The file system refused (read-only folder, --out that is a file, disk full):
        # the user's to fix, so one line naming the path, not a traceback.
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if "torch" in sys.modules:  # under torchrun: leave the process group cleanly
            from cellstack.ddp import teardown

            teardown()


if __name__ == "__main__":
    sys.exit(main())
