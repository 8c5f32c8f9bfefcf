"""Reading and writing images: PNG/TIF, 8 or 16 bit, gray or RGB.

Reading never fails with a library traceback: a missing, empty or corrupt file raises
:class:`~cellstack.errors.DataError` naming the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cellstack.errors import DataError
from cellstack.fileio import atomic_path

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")


def read_image(path: str | Path) -> np.ndarray:
    """Read an image as stored: uint8/uint16[H, W] (gray) or [H, W, C] (colour).

    Raises:
        DataError: the file is missing, empty, corrupt or not 2-D.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: image file not found")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: image file is empty")
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            array = tifffile.imread(path)
        else:
            from PIL import Image

            with Image.open(path) as im:
                im.load()
                if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                    array = np.asarray(im).astype(np.uint16 if im.mode != "I" else np.int32)
                elif im.mode in ("L", "RGB"):
                    array = np.asarray(im)
                else:
                    array = np.asarray(im.convert("RGB"))
    except Exception as exc:  # PIL and tifffile raise many unrelated types on corrupt data
        raise DataError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from None
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)  # channel-first TIFF
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or min(array.shape[:2]) == 0:
        raise DataError(f"{path}: expected a 2-D image, got shape {array.shape}")
    return array


def image_size(path: str | Path) -> tuple[int, int]:
    """``(H, W)`` of an image, reading only its header where the format allows."""
    path = Path(path)
    if path.suffix.lower() in (".tif", ".tiff"):
        return read_image(path).shape[:2]
    try:
        from PIL import Image

        with Image.open(path) as im:
            w, h = im.size
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except Exception as exc:
        raise DataError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from None
    return h, w


def to_gray_uint8(image: np.ndarray) -> np.ndarray:
    """Convert any image from :func:`read_image` to uint8[H, W].

    Colour is averaged over channels. 16-bit and float images are rescaled by their
    0.5 and 99.5 percentiles, so dim 16-bit microscopy becomes visible.
    """
    img = np.asarray(image)
    if img.ndim == 3:
        img = img[..., :3].mean(axis=-1)
    if img.dtype == np.uint8:
        return img
    img = img.astype(np.float32)
    lo, hi = np.percentile(img, [0.5, 99.5])
    if hi <= lo:
        return np.zeros(img.shape, dtype=np.uint8)
    return np.clip((img - lo) * (255.0 / (hi - lo)), 0, 255).astype(np.uint8)


def write_png(path: str | Path, image: np.ndarray) -> None:
    """Write uint8/uint16 gray or uint8 RGB as PNG, atomically."""
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(np.ascontiguousarray(image)).save(tmp, format="PNG")


def write_tiff(path: str | Path, image: np.ndarray) -> None:
    """Write an array as a zlib-compressed TIFF, atomically."""
    import tifffile

    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, np.ascontiguousarray(image), compression="zlib")


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a directory")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
