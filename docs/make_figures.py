"""Regenerate the README's figure of synthetic images: ``python docs/make_figures.py``."""

from pathlib import Path

import cv2
import numpy as np

from cellstack.data.images import write_png
from cellstack.data.synthetic import generate_image
from cellstack.inference.overlay import outline_overlay, side_by_side


def main() -> None:
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
