"""Regenerate the docs' figures: ``python docs/make_figures.py [--adapt WORK]``.

- ``synthetic_examples.png``: the synthetic looks with their ground truth (offline);
- with ``--adapt WORK`` (``benchmarks/accuracy.py few-shot``'s ``--work`` after ``--sizes 3``),
  ``adapt_masks.png``: one held-out RPE-1 frame, truth | the fold model as it is |
  calibrated on three frames | finetuned on them.
"""

import argparse
from pathlib import Path

import cv2
import numpy as np

from cellstack.data.images import write_png
from cellstack.data.synthetic import generate_image
from cellstack.inference.overlay import outline_overlay, side_by_side


def adapt_figure(work: Path, crop: int = 320) -> None:
    """The README's before/after figure from the few-shot run's predictions."""
    from cellstack.data.dataset import load_sample
    from cellstack.data.labels import read_label_image
    from cellstack.data.layouts import load_dataset

    few = work / "few_shot"
    rec = load_dataset(few / "RPE1_last7")[0]
    image, truth = load_sample(rec)
    panels = [truth]
    for name in ("zero_shot", "RPE1_k3_tuned", "RPE1_k3_nuclei"):
        panels.append(read_label_image(few / "pred" / name / "labels" / f"{rec.image_id}.tif"))
    # The crop of the image's size with the most true nuclei: where the outlines differ.
    h, w = truth.shape
    step = crop // 2
    corners = [(y, x) for y in range(0, h - crop + 1, step) for x in range(0, w - crop + 1, step)]
    y, x = max(corners, key=lambda c: len(np.unique(truth[c[0] : c[0] + crop, c[1] : c[1] + crop])))
    window = (slice(y, y + crop), slice(x, x + crop))
    figure = side_by_side(*(outline_overlay(image[window], p[window]) for p in panels))
    write_png(Path(__file__).parent / "adapt_masks.png", figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapt", type=Path, help="benchmarks/accuracy.py few-shot's --work")
    args = parser.parse_args()
    if args.adapt:
        adapt_figure(args.adapt)
    rows = []
    for k, cell_type in enumerate(("shsy5y", "astro", "cort")):
        synth = generate_image(np.random.default_rng(k), cell_type)
        crop = (slice(0, 300), slice(0, 400))  # native pixels, so cell sizes read true
        image, labels = synth.image[crop], synth.labels[crop]
        classes = np.full(int(labels.max()) + 1, k)
        rows.append(
            side_by_side(
                outline_overlay(image, np.zeros_like(labels)),
                outline_overlay(image, labels, classes),
            )
        )
    gap = np.full((4, rows[0].shape[1], 3), 255, np.uint8)
    figure = np.concatenate([rows[0], gap, rows[1], gap, rows[2]])
    figure = cv2.resize(figure, None, fx=0.75, fy=0.75, interpolation=cv2.INTER_AREA)
    write_png(Path(__file__).parent / "synthetic_examples.png", figure)


if __name__ == "__main__":
    main()
