"""Write predictions where users look at them: label images (napari, Fiji), object
tables, ImageJ ROI sets, overlays, a Kaggle ``submission.csv`` and COCO results."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cellstack.data import rle
from cellstack.data.coco import result_entry, write_json
from cellstack.data.images import write_png
from cellstack.data.labels import LABEL_DTYPES, write_label_tiff
from cellstack.data.sartorius import write_submission
from cellstack.fileio import atomic_path, atomic_write, child
from cellstack.inference.overlay import outline_overlay

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


class PredictionWriter:
    """Collects per-image results and writes them under ``out``.

    Per image, as it comes:

    - ``labels/{id}.tif``: instance ids (``label_dtype``, int32 by default, which napari
      opens as Labels; uint16 for tools that want it), 0 = background. A stack keeps
      its leading shape and axes (``ZYX``, ``TYX``, ``TZYX``) in the TIFF metadata.
    - ``objects/{id}.csv``: one row per cell: label id, cell type, score, area,
      centroid, bounding box (and ``z``/``t`` for stacks).
    - ``rois/{id}.zip`` (``save_rois``): an ImageJ ROI set (Fiji's ROI Manager), one
      polygon per cell named by its label id, with its plane position in stacks.
    - ``overlays/{id}.png`` (``overlays``): outlines coloured by cell type; one
      ``{id}_z{k}.png`` per plane of a stack.
    - ``geojson/{id}.geojson`` (``save_geojson``): a GeoJSON FeatureCollection that
      QuPath imports as detections: one polygon per cell (a MultiPolygon for a cell
      that overlap removal split; pixel-edge outlines, x/y in
      pixels with pixel (0, 0) covering [0, 1)), ``classification`` = cell type,
      ``measurements`` = score and area; a stack's planes as ``plane`` properties.
    - ``ome-zarr/{id}.zarr`` (``save_ome_zarr``, 2-D images): the label image as NGFF
      (:func:`~cellstack.data.omezarr.write_label_zarr`), for napari-ome-zarr and
      Fiji; listed in the manifest as a folder (``ome-zarr/{id}.zarr/``).

    At :meth:`close`: ``submission.csv`` (Kaggle RLE rows, 2-D images) and
    ``results.json`` (COCO results: RLE masks, scores, ``category_id`` = class index + 1,
    ``cell_type``, ``label_id``, and the plane of stacks).
    """

    def __init__(
        self,
        out: str | Path,
        class_names: Sequence[str],
        *,
        overlays: bool = True,
        save_rois: bool = False,
        label_dtype: str = "int32",
        save_geojson: bool = False,
        save_ome_zarr: bool = False,
    ):
        if label_dtype not in LABEL_DTYPES:
            raise ValueError(f"label_dtype must be one of {LABEL_DTYPES}, got {label_dtype!r}")
        self.out = Path(out)
        self.class_names = list(class_names)
        self.overlays = overlays
        self.save_rois = save_rois
        self.save_geojson = save_geojson
        self.save_ome_zarr = save_ome_zarr
        self.label_dtype = label_dtype
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

    def add(self, image_id: str, result: Result) -> None:
        """Write one image's result (see the class docstring)."""
        lead = result.lead
        write_label_tiff(
            self.target("labels", f"{image_id}.tif", image_id=image_id),
            result.labels,
            dtype=self.label_dtype,
            axes=f"{lead}YX",
            where=image_id,
        )
        self._write_table(
            self.target("objects", f"{image_id}.csv", image_id=image_id), result.table
        )
        if self.save_rois:
            self._write_rois(self.target("rois", f"{image_id}.zip", image_id=image_id), result)
        if self.save_geojson:
            path = self.target("geojson", f"{image_id}.geojson", image_id=image_id)
            write_json(path, geojson_of(result))
        if self.save_ome_zarr and not lead:
            self._write_zarr(image_id, result.labels)
        h, w = result.labels.shape[-2:]
        lead_shape = result.labels.shape[:-2]
        offset = 0  # label ids run on across the planes of a stack
        for k, inst in enumerate(result.planes):
            position = dict(zip(lead.lower(), np.unravel_index(k, lead_shape), strict=True))
            labels = result.labels.reshape(-1, h, w)[k]
            if self.overlays:
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
                mask = np.zeros(h * w, dtype=bool)
                mask[inst.pixels[j]] = True
                self.coco.append(
                    result_entry(
                        image_id,
                        mask.reshape(h, w),
                        inst.scores[j],
                        int(inst.classes[j]) + 1,
                        cell_type=self.class_names[int(inst.classes[j])],
                        label_id=offset + j + 1,
                        **{a: int(i) for a, i in position.items()},
                    )
                )
            offset += len(inst)

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
        """The image ids whose outputs an earlier run in ``out`` completed."""
        folder = Path(out) / PARTS
        return {p.stem for p in folder.glob("*.json")} if folder.is_dir() else set()

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
        out = PredictionWriter(self.out, self.class_names, overlays=self.overlays)
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
