"""Training and validation samples for the detectors.

A training sample is a random ``crop_size`` square of a random image (padded when the
image is smaller; re-drawn up to 10 times when the crop holds no cell but the image
does), augmented with albumentations, and optionally FlipPasted (the original's cort
augmentation: the image averaged with its mirror, both sets of masks kept).

Sample ``i`` draws every random choice from ``numpy.random.default_rng((seed, i))``, so
a run resumed at iteration ``k`` sees exactly the samples it would have seen, whatever
the number of data-loader workers or processes.

Images are served as float32[1, H, W] in [0, 1] (grayscale; colour is averaged); targets
as ``boxes`` float32[N, 4] xyxy (pixel ``(y, x)`` spans ``[x, x+1)``), ``classes``
int64[N] class indices and ``masks`` uint8[N, H, W].
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from cellstack.config import AugmentConfig
from cellstack.data.images import read_image, to_gray_uint8
from cellstack.data.records import ImageRecord
from cellstack.errors import DataError


def load_sample(record: ImageRecord) -> tuple[np.ndarray, np.ndarray]:
    """``(image uint8[H, W], labels int32[H, W])`` of an annotated record.

    Raises:
        DataError: the image is unreadable or its size disagrees with the annotations.
    """
    image = to_gray_uint8(read_image(record.image_path))
    if image.shape != record.shape:
        raise DataError(
            f"{record.image_path}: image is {image.shape[1]}x{image.shape[0]}, annotations say "
            f"{record.width}x{record.height}"
        )
    return image, record.label_image()


def instances_from_labels(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(ids int64[N], masks uint8[N, H, W])`` of the instances in a label image."""
    ids = np.unique(labels)
    ids = ids[ids > 0]
    return ids, (labels[None] == ids[:, None, None]).astype(np.uint8)


def boxes_from_masks(masks: np.ndarray) -> np.ndarray:
    """Tight boxes float32[N, 4] xyxy of masks uint8[N, H, W] (a pixel spans [x, x+1))."""
    boxes = np.zeros((len(masks), 4), dtype=np.float32)
    for k, m in enumerate(masks):
        ys = np.flatnonzero(m.any(axis=1))
        xs = np.flatnonzero(m.any(axis=0))
        boxes[k] = (xs[0], ys[0], xs[-1] + 1, ys[-1] + 1)
    return boxes


def make_target(masks: np.ndarray, classes: np.ndarray) -> dict[str, torch.Tensor]:
    """Target dict from masks uint8[N, H, W] and class indices int[N]; empty masks dropped."""
    keep = masks.reshape(len(masks), -1).any(axis=1) if len(masks) else np.zeros(0, bool)
    masks, classes = masks[keep], np.asarray(classes)[keep]
    return {
        "boxes": torch.from_numpy(boxes_from_masks(masks)),
        "classes": torch.as_tensor(classes, dtype=torch.int64),
        "masks": torch.from_numpy(np.ascontiguousarray(masks)),
    }


def _augmenter(cfg: AugmentConfig):
    import albumentations as A
    import cv2

    steps = [A.HorizontalFlip(p=cfg.hflip), A.VerticalFlip(p=cfg.vflip)]
    if cfg.rot90:
        steps.append(A.RandomRotate90(p=cfg.rot90))
    if cfg.scale_jitter:
        s = cfg.scale_jitter
        steps.append(
            A.Affine(
                scale=(1 - s, 1 + s),
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=cv2.INTER_NEAREST,
                border_mode=cv2.BORDER_REFLECT_101,
                p=1.0,
            )
        )
    if cfg.brightness_contrast:
        steps.append(A.RandomBrightnessContrast(0.2, 0.2, p=cfg.brightness_contrast))
    if cfg.blur:
        steps.append(A.GaussianBlur(blur_limit=(3, 5), p=cfg.blur))
    if cfg.noise:
        steps.append(A.GaussNoise(std_range=(0.01, 0.05), p=cfg.noise))
    return A.Compose(steps)


def microscope_intensity(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8[H, W] -> uint8[H, W] as another microscope might have recorded it, then
    normalised as prediction normalises every plane (0.5/99.5 percentiles,
    :func:`~cellstack.data.images.to_gray_uint8`).

    In the image's 0-1 range: a gamma from 0.5 to 2 (a camera's or a stain's
    non-linear response); the signal dimmed to 15-100% of its range over a background
    offset of 0-30% (a weak stain, autofluorescence); Gaussian noise of 0.5-4% of the
    full range (so a dim image is noisy once normalised); in half the cases only 12-255
    grey levels (a dim 8-bit recording); in a third, a defocus blur of sigma 0.5-2 px.
    """
    import cv2

    from cellstack.data.images import to_gray_uint8

    x = image.astype(np.float64) / 255.0
    x = x ** np.exp(rng.uniform(np.log(0.5), np.log(2.0)))
    x = rng.uniform(0.0, 0.3) + x * rng.uniform(0.15, 1.0)
    if rng.random() < 1 / 3:
        x = cv2.GaussianBlur(x, (0, 0), rng.uniform(0.5, 2.0))
    x = x + rng.normal(0.0, rng.uniform(0.005, 0.04), x.shape)
    if rng.random() < 0.5:
        levels = int(rng.integers(12, 256))
        x = np.round(np.clip(x, 0, 1) * levels) / levels
    return to_gray_uint8(x)


def rescale_image(image: np.ndarray, factor: float) -> np.ndarray:
    """uint8[H, W] image resized by ``factor`` to ``max(1, round(d * factor))`` pixels
    per side (area averaging when shrinking, bilinear when growing): the one resize rule
    of training (``data.scale``) and prediction (``--diameter``/``--scale``)."""
    import cv2

    if factor == 1:
        return image
    h, w = (max(1, round(d * factor)) for d in image.shape[:2])
    inter = cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR
    return cv2.resize(image, (w, h), interpolation=inter)


def rescale_sample(
    image: np.ndarray, labels: np.ndarray, factor: float
) -> tuple[np.ndarray, np.ndarray]:
    """uint8[H, W] image and int[H, W] labels resized by ``factor``
    (:func:`rescale_image`, :func:`resize_labels`)."""
    image = rescale_image(image, factor)
    return image, resize_labels(labels, image.shape[:2])


def resize_labels(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """int[H, W] labels resized to ``shape`` (h, w) by nearest neighbour: int32[h, w]."""
    import cv2

    labels = labels.astype(np.int32)
    if labels.shape == tuple(shape):
        return labels
    return cv2.resize(labels, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)


class TrainCrops(Dataset):
    """Random augmented crops; item ``i`` is sample ``i`` of the run (see module docstring).

    Args:
        records: annotated images.
        class_names: cell types in label order; a record's ``cell_type`` gives its label.
        crop_size: side of the square crops.
        augment: augmentation settings.
        crop_sampling: "uniform": a uniformly random crop (re-drawn up to 10 times when
            it misses every cell of an image that has some); "cells": a crop around a
            cell drawn uniformly among the image's cells, so sparse images and rare
            small cells are seen as often as dense sheets; "whole_cells": as "cells",
            but the crop holds the chosen cell's whole box, the image shrunk first when
            the cell is larger than the crop.
        length: number of samples (iterations x batch size).
        scale: resize every image and its labels by this factor first (``data.scale``).
        seed: the run's seed.
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        class_names: Sequence[str],
        *,
        crop_size: int,
        augment: AugmentConfig,
        length: int,
        seed: int,
        crop_sampling: str = "uniform",
        scale: float = 1.0,
    ) -> None:
        if not records:
            raise DataError("no training images")
        self.scale = float(scale)
        self.crop_sampling = crop_sampling
        self.records = list(records)
        self.class_index = {name: i for i, name in enumerate(class_names)}
        self.crop_size = crop_size
        self.augment = augment
        self.length = length
        self.seed = seed
        self._transform = None

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        rng = np.random.default_rng((self.seed, int(index)))
        record = self.records[int(rng.integers(len(self.records)))]
        image, labels = load_sample(record)
        factor = self.scale
        if self.augment.zoom:
            reach = np.log1p(self.augment.zoom)
            factor *= float(np.exp(rng.uniform(-reach, reach)))
        if factor != 1:
            image, labels = rescale_sample(image, labels, factor)
        image, labels = self._crop(rng, image, labels)
        if self._transform is None:  # built lazily: once per worker process
            self._transform = _augmenter(self.augment)
        self._transform.set_random_seed(int(rng.integers(2**31)))
        out = self._transform(image=image, mask=labels.astype(np.int32))
        image, labels = out["image"], out["mask"]
        if self.augment.intensity and rng.random() < self.augment.intensity:
            image = microscope_intensity(image, rng)
        _, masks = instances_from_labels(labels)
        if (
            record.cell_type in self.augment.flip_paste_types
            and rng.random() < self.augment.flip_paste
        ):
            image = ((image.astype(np.uint16) + image[:, ::-1]) // 2).astype(np.uint8)
            masks = np.concatenate([masks, masks[:, :, ::-1]])
        class_idx = np.full(len(masks), self.class_index[record.cell_type])
        tensor = torch.tensor(image, dtype=torch.float32).div_(255)[None]
        return tensor, make_target(masks, class_idx)

    def _crop(
        self, rng: np.random.Generator, image: np.ndarray, labels: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        c = self.crop_size
        chosen = None
        has_cells = labels.any()
        if has_cells and self.crop_sampling in ("cells", "whole_cells"):
            ids = np.unique(labels)
            chosen = rng.choice(ids[ids > 0])
            if self.crop_sampling == "whole_cells":
                image, labels = _fit_cell(image, labels, chosen, c)
        image, labels = _pad_to(rng, image, labels, c)
        h, w = image.shape
        if chosen is not None:
            ys, xs = np.nonzero(labels == chosen)
            if self.crop_sampling == "whole_cells":
                # Any crop that holds the cell's whole box, uniformly.
                y = int(rng.integers(max(ys.max() + 1 - c, 0), min(ys.min(), h - c) + 1))
                x = int(rng.integers(max(xs.max() + 1 - c, 0), min(xs.min(), w - c) + 1))
            else:
                # Any crop that holds a random pixel of the cell: the cell lands anywhere.
                k = int(rng.integers(len(ys)))
                y = int(rng.integers(max(ys[k] - c + 1, 0), min(ys[k], h - c) + 1))
                x = int(rng.integers(max(xs[k] - c + 1, 0), min(xs[k], w - c) + 1))
            return image[y : y + c, x : x + c], labels[y : y + c, x : x + c]
        for _ in range(10):
            y, x = int(rng.integers(h - c + 1)), int(rng.integers(w - c + 1))
            crop = labels[y : y + c, x : x + c]
            if not has_cells or crop.any():
                break
        return image[y : y + c, x : x + c], crop


def _pad_to(
    rng: np.random.Generator, image: np.ndarray, labels: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Pad an image smaller than ``size`` on a side with its median grey (at a random
    offset), so that small images are used, never rejected."""
    h, w = image.shape
    if h >= size and w >= size:
        return image, labels
    ph, pw = max(size - h, 0), max(size - w, 0)
    top, left = int(rng.integers(ph + 1)), int(rng.integers(pw + 1))
    pad = ((top, ph - top), (left, pw - left))
    return np.pad(image, pad, constant_values=int(np.median(image))), np.pad(labels, pad)


def _fit_cell(
    image: np.ndarray, labels: np.ndarray, cell: int, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Shrink ``image`` uint8[H, W] and ``labels`` int32[H, W] so that the box of
    instance ``cell`` fits a ``size`` square; unchanged when it already fits.

    Large cells (long branched processes) would otherwise only ever be seen cut by the
    crop's edges, so the model never learns their whole extent; shrinking keeps the step's
    pixel count (and cost) fixed, where growing the crop would not.
    """
    import cv2

    ys, xs = np.nonzero(labels == cell)
    side = max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1)
    if side <= size:
        return image, labels
    factor = (size - 1) / side
    h, w = image.shape
    dsize = (max(1, int(w * factor)), max(1, int(h * factor)))
    small = cv2.resize(image, dsize, interpolation=cv2.INTER_AREA)
    small_labels = cv2.resize(labels.astype(np.int32), dsize, interpolation=cv2.INTER_NEAREST)
    if not (small_labels == cell).any():  # a thin cell can vanish when sampled sparsely
        return image, labels
    return small, small_labels


def collate(batch: list) -> tuple[list[torch.Tensor], list[dict]]:
    """Keep images and targets as lists (sizes and instance counts differ)."""
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)
