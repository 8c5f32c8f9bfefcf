"""Write predictions: submission.csv, COCO results json, label TIFFs, overlay PNGs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cellstack.data import rle
from cellstack.data.coco import encode_coco_rle, write_json
from cellstack.data.images import write_png
from cellstack.data.labels import write_label_tiff
from cellstack.data.sartorius import write_submission
from cellstack.fileio import child
from cellstack.inference.overlay import outline_overlay
from cellstack.inference.postprocess import pixels_to_labels
from cellstack.structures import Instances


class PredictionWriter:
    """Collects per-image results and writes them under ``out``.

    Per image (as it comes): ``labels/{id}.tif`` (uint16 instance ids, in decreasing
    confidence) and ``overlays/{id}.png`` (outlines coloured by predicted cell type).
    At :meth:`close`: ``submission.csv`` (Kaggle) and ``results.json`` (COCO results
    with RLE masks, scores and ``category_id`` = class index + 1).
    """

    def __init__(self, out: str | Path, class_names: Sequence[str], *, overlays: bool = True):
        self.out = Path(out)
        self.class_names = list(class_names)
        self.overlays = overlays
        self.submission: dict[str, list[str]] = {}
        self.coco: list[dict] = []

    def add(self, image_id: str, image: np.ndarray, inst: Instances) -> None:
        """Record one image's post-processed instances (with ``pixels``)."""
        labels = pixels_to_labels(inst.pixels, inst.image_size)
        write_label_tiff(child(self.out, "labels", f"{image_id}.tif"), labels)
        if self.overlays:
            classes = np.concatenate([[0], np.asarray(inst.labels, dtype=np.int64)])
            write_png(
                child(self.out, "overlays", f"{image_id}.png"),
                outline_overlay(image, labels, classes),
            )
        self.submission[image_id] = rle.encode_labels(labels)[1]
        for k in range(len(inst)):
            mask = labels == k + 1
            ys, xs = np.nonzero(mask)
            self.coco.append(
                {
                    "image_id": image_id,
                    "category_id": int(inst.labels[k]) + 1,
                    "segmentation": encode_coco_rle(mask),
                    "bbox": [
                        float(xs.min()),
                        float(ys.min()),
                        float(xs.max() - xs.min() + 1),
                        float(ys.max() - ys.min() + 1),
                    ],
                    "score": float(inst.scores[k]),
                    "cell_type": self.class_names[int(inst.labels[k])],
                }
            )

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

    def close(self) -> None:
        write_submission(self.out / "submission.csv", self.submission)
        write_json(self.out / "results.json", self.coco)
