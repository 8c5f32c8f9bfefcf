"""Overlay PNGs: instance outlines drawn over the image, coloured by cell type."""

from __future__ import annotations

import cv2
import numpy as np

from cellstack.data.images import to_gray_uint8
from cellstack.data.masks import outline_pixels

#: BGR-free RGB colours cycled over class indices (colour-blind friendly, Okabe-Ito).
PALETTE = (
    (230, 159, 0),
    (86, 180, 233),
    (0, 158, 115),
    (240, 228, 66),
    (0, 114, 178),
    (213, 94, 0),
    (204, 121, 167),
    (255, 255, 255),
)


def outline_overlay(
    image: np.ndarray, labels: np.ndarray, classes: np.ndarray | None = None
) -> np.ndarray:
    """Draw instance outlines over an image.

    Args:
        image: the image, any dtype/channels accepted by ``to_gray_uint8``.
        labels: int[H, W] instance ids 1..N (0 = background).
        classes: int[N + 1] class index of each id (index 0 unused); default all 0.

    Returns:
        uint8[H, W, 3] RGB.
    """
    rgb = np.repeat(to_gray_uint8(image)[..., None], 3, axis=2)
    labels = np.asarray(labels)
    if labels.max(initial=0) == 0:
        return rgb
    edge = outline_pixels(labels)
    if classes is None:
        classes = np.zeros(int(labels.max()) + 1, dtype=np.int64)
    colours = np.array(PALETTE, dtype=np.uint8)[np.asarray(classes) % len(PALETTE)]
    rgb[edge] = colours[labels[edge]]
    return rgb


def side_by_side(*panels: np.ndarray, gap: int = 4) -> np.ndarray:
    """Concatenate RGB panels horizontally with a white gap."""
    h = max(p.shape[0] for p in panels)
    parts = []
    for k, p in enumerate(panels):
        if k:
            parts.append(np.full((h, gap, 3), 255, dtype=np.uint8))
        parts.append(cv2.copyMakeBorder(p, 0, h - p.shape[0], 0, 0, cv2.BORDER_CONSTANT))
    return np.concatenate(parts, axis=1)
