"""How long calibration takes: ``cellstack tune nuclei THREE --out NEW`` on three 512x512 images.

Two sets of three 512x512 labelled images: the synthetic fluorescent-nuclei look
(offline) and, with ``--real``, crops of three mnfinder test images (fetched by
``realdata``). For each, the built-in ``nuclei`` is calibrated as a user calibrates it
(the whole grid of :meth:`TuneGrid.for_objects` and the scale search), timed end to
end (reading, predicting at each scale, scoring the grid, writing the new folder).

    python benchmarks/speed.py tune [--real] [--threads 2] [--out FILE.json]

Prints a table and writes JSON.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import harness
import numpy as np
import train_builtin

SIZE = 512


def synthetic_set(out: Path, seed: int = 3) -> Path:
    """Three 512x512 images of the synthetic ``nuclei`` look with their labels."""
    from cellstack.data.synthetic import generate_image

    rng = np.random.default_rng(seed)
    items = []
    for k in range(3):
        img = generate_image(rng, "nuclei", (SIZE, SIZE))
        items.append((f"synthetic_{k}", img.image, img.labels))
    return train_builtin._label_folder(out, items, "nucleus")


def real_set(out: Path) -> Path:
    """The top-left 512x512 crop of the first three mnfinder test images at least that
    large (objects cut by the crop keep their visible part)."""
    import realdata
    import tifffile

    test = realdata.mnfinder_folders() / "test"
    items = []
    for p in sorted((test / "images").glob("*.tif")):
        image = tifffile.imread(p)
        if min(image.shape[:2]) < SIZE:
            continue
        labels = tifffile.imread(test / "labels" / p.name)[:SIZE, :SIZE]
        items.append((p.stem, image[:SIZE, :SIZE], labels))
        if len(items) == 3:
            break
    return train_builtin._label_folder(out, items, "nucleus")


def time_tune(folder: Path, work: Path) -> dict:
    from cellstack.inference.calibration import run_tune

    new = work / f"tuned_{folder.name}"
    t0 = time.perf_counter()
    result, _ = run_tune("nuclei", folder, out=new, device="cpu", progress=False)
    return {
        "seconds": time.perf_counter() - t0,
        "scales": list(result.scales),
        "chosen_scale": result.scale,
        "before": result.before,
        "after": result.after,
        "loo": result.loo,
    }


def main() -> None:
    parser = harness.arguments(__doc__, "tune_speed")
    parser.add_argument("--real", action="store_true", help="also three mnfinder crops")
    args = parser.parse_args()

    harness.start(args)
    results = {"threads": args.threads, "sets": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        sets = {"synthetic nuclei": synthetic_set(work / "synthetic")}
        if args.real:
            sets["mnfinder test crops"] = real_set(work / "real")
        time_tune(sets["synthetic nuclei"], work / "warm-up")  # imports, first allocations
        for name, folder in sets.items():
            results["sets"][name] = time_tune(folder, work)
    print(f"cellstack tune nuclei (three {SIZE}x{SIZE} images, {args.threads} threads)")
    rows = [
        [name, f"{r['seconds']:.1f}", len(r["scales"]), r["before"], r["after"], r["loo"]]
        for name, r in results["sets"].items()
    ]
    harness.print_table(["set", "seconds", "scales", "before", "after", "LOO"], rows, digits=4)
    harness.write_report(args.out, results)


if __name__ == "__main__":
    main()
