"""Write predictions where users look at them: label images (napari, Fiji), object
tables, ImageJ ROI sets, overlays, a Kaggle ``submission.csv`` and COCO results."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cellstack.data import rle
from cellstack.data.coco import result_entry, write_json
from cellstack.data.images import PlaneSpec, read_channels, write_png
from cellstack.data.labels import LABEL_DTYPES, write_label_tiff
from cellstack.data.sartorius import write_submission
from cellstack.data.segnpy import write_seg_npy
from cellstack.fileio import atomic_path, atomic_write, child
from cellstack.inference.overlay import outline_overlay
from cellstack.inference.tables import TABLE_FORMATS, require

if TYPE_CHECKING:
    from cellstack.inference.result import Result

#: What predict writes into its output folder (files, and folders of per-image files).
OUTPUTS = (
    "submission.csv",
    "results.json",
    "inputs.json",
    "labels",
    "overlays",
    "objects",
    "rois",
    "geojson",
    "ome-zarr",
    "seg-npy",
    "spatialdata",
)
#: Every file a predict run writes is listed here (one path per line, relative to the
#: output folder) *before* it is written, so ``--overwrite`` deletes exactly those files
#: and never a folder or a file of the user's; it also marks a prediction folder.
MANIFEST = "cellstack-outputs.txt"
#: ``{image id: absolute path of the input image}`` of a predict run.
INPUTS = "inputs.json"
#: Per-image summaries of a run on Dask workers (its resume points), until it ends.
PARTS = ".cellstack-parts"


def plane_suffix(position: dict[str, int]) -> str:
    """The overlay name suffix of one plane of a stack (``_z3``, ``_t1_z0``; ``""``
    for a 2-D image)."""
    return "".join(f"_{a}{int(i)}" for a, i in position.items())


def output_stems(image_id: str, lead: str, lead_shape: tuple[int, ...]) -> list[str]:
    """Every file stem predict writes for an image: its id, and one overlay per plane."""
    planes = [
        dict(zip(lead.lower(), np.unravel_index(k, lead_shape), strict=True))
        for k in range(int(np.prod(lead_shape)))
    ]
    return list(dict.fromkeys([image_id, *(image_id + plane_suffix(p) for p in planes)]))


def check_unique_outputs(layouts: Sequence[tuple[str, str, tuple[int, ...]]]) -> None:
    """Refuse inputs whose outputs would share a name, before anything is written.

    Args:
        layouts: ``(image_id, lead_axes, lead_shape)`` of every image.

    Raises:
        CellstackError: e.g. a stack ``a.tif`` (overlay ``a_z0.png``) beside ``a_z0.png``.
    """
    from cellstack.errors import CellstackError

    owner: dict[str, str] = {}
    for image_id, lead, lead_shape in layouts:
        for stem in output_stems(image_id, lead, lead_shape):
            if stem in owner and owner[stem] != image_id:
                raise CellstackError(
                    f"images {owner[stem]!r} and {image_id!r} would both write outputs "
                    f"named {stem!r} (a stack's plane overlays are ID_z0, ID_z1, ...); "
                    "rename one input"
                )
            owner[stem] = image_id


@dataclass(frozen=True)
class OutputOptions:
    """What predict writes beside ``labels/`` and ``objects/`` (see
    :class:`PredictionWriter`), and the label images' dtype.

    Adding an output format means a field here, its file in :meth:`PredictionWriter.add`
    and one command-line flag.

    Raises:
        CellstackError: ``label_dtype`` is not one of :data:`~cellstack.data.labels.LABEL_DTYPES`.
    """

    overlays: bool = True
    save_rois: bool = False
    label_dtype: str = "int32"
    save_geojson: bool = False
    save_ome_zarr: bool = False
    save_seg_npy: bool = False
    tables: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        from cellstack.errors import CellstackError

        if self.label_dtype not in LABEL_DTYPES:
            raise CellstackError(
                f"--label-dtype must be one of {', '.join(LABEL_DTYPES)}, got {self.label_dtype!r}"
            )
        for fmt in self.tables:
            if fmt not in TABLE_FORMATS:
                raise CellstackError(
                    f"--table must be one of {', '.join(TABLE_FORMATS)}, got {fmt!r}"
                )
            # Said before the first image, not after it.
            require("anndata", fmt)
            if fmt == "spatialdata":
                require("spatialdata", fmt)

    def written(self) -> list[str]:
        """The files and folders a predict run with these options writes."""
        optional = (
            ("overlays/", self.overlays),
            ("rois/", self.save_rois),
            ("geojson/", self.save_geojson),
            ("ome-zarr/", self.save_ome_zarr),
            ("seg-npy/", self.save_seg_npy),
            ("spatialdata/", "spatialdata" in self.tables),
        )
        return ["submission.csv", "results.json", "labels/", "objects/"] + [
            name for name, on in optional if on
        ]


class PredictionWriter:
    """Collects per-image results and writes them under ``out``.

    Per image, as it comes:

    - ``labels/{id}.tif``: instance ids (``options.label_dtype``, int32 by default, which napari
      opens as Labels; uint16 for tools that want it), 0 = background. A stack keeps
      its leading shape and axes (``ZYX``, ``TYX``, ``TZYX``) in the TIFF metadata.
    - ``objects/{id}.csv``: one row per cell: label id, cell type, score, area,
      centroid, bounding box (and ``z``/``t`` for stacks).
    - ``rois/{id}.zip`` (``options.save_rois``): an ImageJ ROI set (Fiji's ROI Manager), one
      polygon per cell named by its label id, with its plane position in stacks.
    - ``overlays/{id}.png`` (``options.overlays``): outlines coloured by cell type; one
      ``{id}_z{k}.png`` per plane of a stack.
    - ``geojson/{id}.geojson`` (``options.save_geojson``): a GeoJSON FeatureCollection that
      QuPath imports as detections: one polygon per cell (a MultiPolygon for a cell
      that overlap removal split; pixel-edge outlines, x/y in
      pixels with pixel (0, 0) covering [0, 1)), ``classification`` = cell type,
      ``measurements`` = score and area; a stack's planes as ``plane`` properties.
    - ``ome-zarr/{id}.zarr`` (``options.save_ome_zarr``, 2-D images): the label image as NGFF
      (:func:`~cellstack.data.omezarr.write_label_zarr`), for napari-ome-zarr and
      Fiji; listed in the manifest as a folder (``ome-zarr/{id}.zarr/``).
    - ``seg-npy/{id}.png`` and ``seg-npy/{id}_seg.npy`` (``options.save_seg_npy``, 2-D
      images): the image as the model saw it and its cells as Cellpose's GUI file, so
      the folder opens in Cellpose's GUI for correction and, corrected, is a label folder
      for ``cellstack train`` (:mod:`~cellstack.data.segnpy`).
    - ``objects/{id}.h5ad`` (``"anndata"`` in ``options.tables``): the cells as AnnData,
      ``X`` each channel's mean raw intensity of the input file (read again with
      ``spec``'s axes), ``obsm["spatial"]`` the centroids; ``spatialdata/{id}.zarr``
      (``"spatialdata"``, 2-D images): the image, its labels and that table as one
      SpatialData (:mod:`~cellstack.inference.tables`).

    At :meth:`close`: ``submission.csv`` (Kaggle RLE rows, 2-D images) and
    ``results.json`` (COCO results: RLE masks, scores, ``category_id`` = class index + 1,
    ``cell_type``, ``label_id``, and the plane of stacks).
    """

    def __init__(
        self,
        out: str | Path,
        class_names: Sequence[str],
        options: OutputOptions | None = None,
        spec: PlaneSpec | None = None,
    ):
        self.out = Path(out)
        self.class_names = list(class_names)
        self.options = options or OutputOptions()
        self.spec = spec or PlaneSpec()  # how the inputs were cut into planes
        self.submission: dict[str, list[str]] = {}
        self.coco: list[dict] = []
        self._written: dict[str, str] = {}  # relative path -> the image it was written for

    def target(self, *parts: str, image_id: str = "") -> Path:
        """``out/parts...`` (checked to stay inside), listed in the manifest first.
        A path this run already wrote for another image is refused, never replaced."""
        from cellstack.errors import CellstackError

        path = child(self.out, *parts)
        key = "/".join(parts)
        if key in self._written and self._written[key] != image_id:
            raise CellstackError(
                f"{self.out / key}: written for image {self._written[key]!r} and again for "
                f"{image_id!r} (e.g. a stack a.tif beside a 2-D a_z0.png); rename one input"
            )
        self._written[key] = image_id
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / MANIFEST, "a", encoding="utf-8") as f:
            f.write("/".join(parts) + "\n")
        return path

    def add(self, image_id: str, result: Result, source: str | Path | None = None) -> None:
        """Write one image's result (see the class docstring); ``source`` is its input
        file, whose raw channels the tables measure (without it: the planes the model
        saw)."""
        lead = result.lead
        write_label_tiff(
            self.target("labels", f"{image_id}.tif", image_id=image_id),
            result.labels,
            dtype=self.options.label_dtype,
            axes=f"{lead}YX",
            where=image_id,
        )
        self._write_table(
            self.target("objects", f"{image_id}.csv", image_id=image_id), result.table
        )
        if self.options.save_rois:
            self._write_rois(self.target("rois", f"{image_id}.zip", image_id=image_id), result)
        if self.options.save_geojson:
            path = self.target("geojson", f"{image_id}.geojson", image_id=image_id)
            write_json(path, geojson_of(result))
        if self.options.save_ome_zarr and not lead:
            self._write_zarr(image_id, result.labels)
        if self.options.save_seg_npy and not lead:
            self._write_seg_npy(image_id, result)
        if self.options.tables:
            self._write_tables(image_id, result, source)
        h, w = result.labels.shape[-2:]
        lead_shape = result.labels.shape[:-2]
        offset = 0  # label ids run on across the planes of a stack
        for k, inst in enumerate(result.planes):
            position = dict(zip(lead.lower(), np.unravel_index(k, lead_shape), strict=True))
            labels = result.labels.reshape(-1, h, w)[k]
            if self.options.overlays:
                suffix = plane_suffix(position)
                classes = np.concatenate([[0], np.asarray(inst.classes, dtype=np.int64)])
                local = np.where(labels > 0, labels - offset, 0)
                write_png(
                    self.target("overlays", f"{image_id}{suffix}.png", image_id=image_id),
                    outline_overlay(result.image.reshape(-1, h, w)[k], local, classes),
                )
            if not lead:
                self.submission[image_id] = rle.encode_labels(labels)[1]
            for j in range(len(inst)):
                self.coco.append(
                    result_entry(
                        image_id,
                        inst.pixels[j],
                        (h, w),
                        inst.scores[j],
                        int(inst.classes[j]) + 1,
                        cell_type=self.class_names[int(inst.classes[j])],
                        label_id=offset + j + 1,
                        **{a: int(i) for a, i in position.items()},
                    )
                )
            offset += len(inst)

    def _write_seg_npy(self, image_id: str, result: Result) -> None:
        """``seg-npy/{id}.png`` (the image as the model saw it) and ``{id}_seg.npy``."""
        write_png(self.target("seg-npy", f"{image_id}.png", image_id=image_id), result.image)
        write_seg_npy(
            self.target("seg-npy", f"{image_id}_seg.npy", image_id=image_id),
            result.labels,
            f"{image_id}.png",
        )

    def _write_tables(self, image_id: str, result: Result, source: str | Path | None) -> None:
        """``objects/{id}.h5ad`` and ``spatialdata/{id}.zarr`` as ``options.tables`` asks."""
        from cellstack.inference.tables import write_h5ad, write_spatialdata

        channels = None
        if source is not None:
            channels, _ = read_channels(source, self.spec)
            if channels.shape[1:] != result.labels.shape:  # e.g. a file changed under us
                channels = None
        adata = result.to_anndata(channels, image_id=image_id)
        if "anndata" in self.options.tables:
            write_h5ad(self.target("objects", f"{image_id}.h5ad", image_id=image_id), adata)
        if "spatialdata" in self.options.tables and not result.lead:
            path = self.target("spatialdata", f"{image_id}.zarr/", image_id=image_id)
            image = result.image[None] if channels is None else channels
            write_spatialdata(path, image, result.labels, adata)

    @staticmethod
    def _write_table(path: Path, table: dict[str, np.ndarray]) -> None:
        columns = list(table)
        with atomic_write(path, newline="") as f:
            writer = csv.writer(f)
            writer.writerow(columns)
            for row in zip(*(table[c] for c in columns), strict=True):
                writer.writerow(
                    [f"{v:.6g}" if isinstance(v, float | np.floating) else v for v in row]
                )

    @staticmethod
    def _write_rois(path: Path, result: Result) -> None:
        """One ImageJ polygon ROI per cell: its outer contour, named by its label id."""
        import cv2
        import roifile

        rois = []
        table = result.table
        flat = result.labels.reshape(-1, *result.labels.shape[-2:])
        lead_shape = result.labels.shape[:-2]
        for n, label in enumerate(table["label"]):
            plane = int(
                np.ravel_multi_index([table[a][n] for a in result.lead.lower()], lead_shape)
            )
            y0, x0, y1, x1 = (
                int(table[c][n]) for c in ("bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1")
            )
            crop = (flat[plane, y0:y1, x0:x1] == label).astype(np.uint8)
            contours, _ = cv2.findContours(crop, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            if not contours:
                continue
            points = max(contours, key=len).reshape(-1, 2) + np.array([x0, y0])
            # 0-based plane indices: roifile stores them 1-based, as Fiji expects.
            where = {a: int(table[a][n]) for a in result.lead.lower()}
            rois.append(roifile.ImagejRoi.frompoints(points, name=str(int(label)), **where))
        with atomic_path(path) as tmp:
            roifile.roiwrite(tmp, rois, mode="w")

    def _write_zarr(self, image_id: str, labels: np.ndarray) -> None:
        """``ome-zarr/{id}.zarr``, written beside under a temporary name and renamed."""
        import shutil

        from cellstack.data.omezarr import write_label_zarr

        final = self.target("ome-zarr", f"{image_id}.zarr/", image_id=image_id)
        tmp = final.with_name(f".{final.name}.partial")
        shutil.rmtree(tmp, ignore_errors=True)
        write_label_zarr(tmp, labels)
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)

    def save_part(self, image_id: str) -> None:
        """Write this writer's summary rows of ``image_id`` to ``PARTS/{id}.json``: the
        mark that the image's outputs are complete (a resumed run skips it)."""
        coco = [e for e in self.coco if e["image_id"] == image_id]
        part = {"submission": self.submission.get(image_id), "coco": coco}
        write_json(self.target(PARTS, f"{image_id}.json", image_id=image_id), part)

    @staticmethod
    def done_parts(out: str | Path) -> set[str]:
        """The image ids whose outputs an earlier run in ``out`` completed: one per
        summary, never a summary still being written (an atomic write's hidden
        partial file, which a task that outlived its stopped job may leave there)."""
        from cellstack.fileio import PARTIAL

        folder = Path(out) / PARTS
        if not folder.is_dir():
            return set()
        return {
            p.stem
            for p in folder.glob("*.json")
            if not (p.name.startswith(".") and PARTIAL in p.name)
        }

    @staticmethod
    def load_part(out: str | Path, image_id: str) -> tuple[dict[str, list[str]], list[dict]]:
        """``(submission, coco)`` of one image, as :meth:`save_part` wrote it."""
        import json

        part = json.loads(child(Path(out), PARTS, f"{image_id}.json").read_text("utf-8"))
        submission = {} if part["submission"] is None else {image_id: part["submission"]}
        return submission, part["coco"]

    def merged(
        self, parts: Sequence[tuple[dict[str, list[str]], list[dict]]], order: Sequence[str]
    ) -> PredictionWriter:
        """A writer holding the ``(submission, coco)`` of every part (one per process),
        with images in ``order``; its :meth:`close` writes the merged files."""
        out = PredictionWriter(self.out, self.class_names, self.options, self.spec)
        submission = {k: v for sub, _ in parts for k, v in sub.items()}
        out.submission = {i: submission[i] for i in order if i in submission}
        rank = {image_id: k for k, image_id in enumerate(order)}
        coco = [entry for _, entries in parts for entry in entries]
        out.coco = sorted(coco, key=lambda e: rank.get(e["image_id"], len(rank)))  # stable
        return out

    def close(self, inputs: dict[str, Path] | None = None) -> None:
        """Write the summaries; ``inputs`` (``{image id: input file}``) also goes to
        ``inputs.json``, so viewers can open each prediction beside its image."""
        if inputs is not None:
            write_json(self.target(INPUTS), {k: str(Path(v).resolve()) for k, v in inputs.items()})
        write_submission(self.target("submission.csv"), self.submission)
        write_json(self.target("results.json"), self.coco)


def outlines(mask: np.ndarray) -> list[list[list[float]]]:
    """The outer boundary of each connected part of a 2-D bool mask, largest first, as
    closed polygons ``[[x, y], ...]`` in pixel-edge coordinates (pixel (0, 0) covers
    [0, 1) x [0, 1)).

    Traced on the mask upsampled 2x, so a polygon runs a quarter pixel inside the pixel
    edges: every mask pixel's centre lies inside it and every other pixel's centre
    outside (re-rasterising by pixel centres gives the mask back; holes are filled).
    """
    import cv2

    up = np.kron(mask.astype(np.uint8), np.ones((2, 2), np.uint8))
    contours, _ = cv2.findContours(up, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    rings = []
    for contour in sorted(contours, key=cv2.contourArea, reverse=True):
        points = (contour.reshape(-1, 2).astype(np.float64) + 0.5) / 2  # -> pixel units
        ring = [[round(float(x), 3), round(float(y), 3)] for x, y in points]
        if len(ring) >= 3:
            rings.append([*ring, ring[0]])
    return rings


def geojson_of(result: Result) -> dict:
    """A GeoJSON FeatureCollection of a result's cells (QuPath detections)."""
    table = result.table
    flat = result.labels.reshape(-1, *result.labels.shape[-2:])
    lead_shape = result.labels.shape[:-2]
    features = []
    for n, label in enumerate(table["label"]):
        position = {a: int(table[a][n]) for a in result.lead.lower()}
        plane = int(np.ravel_multi_index(list(position.values()), lead_shape)) if position else 0
        y0, x0, y1, x1 = (int(table[c][n]) for c in ("bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1"))
        rings = [
            [[x + x0, y + y0] for x, y in ring]
            for ring in outlines(flat[plane, y0:y1, x0:x1] == label)
        ]
        if not rings:
            continue
        # One polygon, or one per part of a cell that overlap removal split.
        geometry = (
            {"type": "Polygon", "coordinates": [rings[0]]}
            if len(rings) == 1
            else {"type": "MultiPolygon", "coordinates": [[r] for r in rings]}
        )
        features.append(
            {
                "type": "Feature",
                "geometry": geometry,
                "properties": {
                    "objectType": "detection",
                    "name": str(int(label)),
                    "classification": {"name": str(table["cell_type"][n])},
                    "measurements": {
                        "score": float(table["score"][n]),
                        "area": float(table["area"][n]),
                    },
                    "label": int(label),
                    **({"plane": position} if position else {}),
                },
            }
        )
    return {"type": "FeatureCollection", "features": features}


@dataclass(frozen=True)
class PredictionFolder:
    """A folder :class:`PredictionWriter` wrote, read back: the one reader of predict's
    outputs (napari's reader, the demo, scripts).

    Attributes:
        root: the folder (``labels/{id}.tif``, ``objects/{id}.csv``, ``inputs.json``).
    """

    root: Path

    @classmethod
    def open(cls, path: str | Path) -> PredictionFolder:
        """The prediction folder at ``path`` (the folder or its manifest file).

        Raises:
            CellstackError: ``path`` holds neither a manifest nor ``results.json``.
        """
        from cellstack.errors import CellstackError

        root = Path(path)
        root = root.parent if root.name == MANIFEST else root
        if not cls.holds_predictions(root):
            raise CellstackError(
                f"{root}: not a folder written by cellstack predict (no {MANIFEST})"
            )
        return cls(root)

    @staticmethod
    def holds_predictions(root: Path) -> bool:
        """Whether ``root`` looks like predict's output (its manifest, or the
        ``results.json`` of a run that wrote none)."""
        return (root / MANIFEST).is_file() or (root / "results.json").is_file()

    def image_ids(self) -> list[str]:
        """The ids of the images with a label image, sorted."""
        return sorted(p.stem for p in (self.root / "labels").glob("*.tif"))

    def inputs(self) -> dict[str, Path]:
        """``{image id: the input image}`` as the run recorded them ({} when it did not)."""
        from cellstack.fileio import read_text

        path = self.root / INPUTS
        if not path.is_file():
            return {}
        return {k: Path(v) for k, v in json.loads(read_text(path, "inputs file")).items()}

    def labels(self, image_id: str) -> np.ndarray:
        """``labels/{id}.tif``: int[..., H, W] instance ids (a stack keeps its leading
        axes), 0 = background."""
        import tifffile

        return tifffile.imread(child(self.root, "labels", f"{image_id}.tif"))

    def objects(self, image_id: str) -> dict[str, np.ndarray]:
        """``objects/{id}.csv`` as columns (numbers parsed; {} without the table or
        rows): ``label``, ``cell_type``, ``score``, ``area``, centroid, box."""
        from cellstack.fileio import open_text

        table = child(self.root, "objects", f"{image_id}.csv")
        if not table.is_file():
            return {}
        with open_text(table, "object table") as f:
            rows = list(csv.DictReader(f))
        if not rows:
            return {}
        return {k: np.asarray([_number(r[k]) for r in rows]) for k in rows[0]}


def _number(text: str) -> int | float | str:
    """A table cell as the int or float it spells, else the text."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def remove_outputs(out: Path) -> int:
    """Delete the files an earlier predict run listed in ``out``'s manifest (and the
    manifest); folders it leaves empty go too. Nothing else is touched. Returns the
    number of files deleted.

    Raises:
        CellstackError: ``out`` holds predict's output names but no manifest (written
            by something else, or by a cellstack before 0.2): nothing is deleted.
    """
    from cellstack.errors import CellstackError

    manifest = out / MANIFEST
    if not manifest.is_file():
        found = [name for name in OUTPUTS if (out / name).exists()]
        if found:
            raise CellstackError(
                f"{out}: holds {found[0]} but no {MANIFEST} listing what predict wrote, so "
                "--overwrite cannot tell its files from yours; choose another --out"
            )
        return 0
    n = 0
    folders = set()
    for line in dict.fromkeys(manifest.read_text(encoding="utf-8").splitlines()):
        parts = [p for p in line.split("/") if p]
        if not parts:
            continue
        try:
            target = child(out, *parts)
        except CellstackError:
            continue  # a listed path that leaves the folder is never followed
        if line.endswith("/") and target.is_dir() and not target.is_symlink():
            import shutil

            shutil.rmtree(target)  # a folder predict made whole (an OME-Zarr)
            n += 1
        elif target.is_file() or target.is_symlink():
            target.unlink()
            n += 1
        if len(parts) > 1:
            folders.add(target.parent)
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    manifest.unlink()
    return n
