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
    """Read one 2-D image as stored: [H, W] (gray) or [H, W, C] (colour, C = 3 or 4),
    in its own dtype (uint8, uint16, int32, float32, ...).

    TIFF axes come from the file's own metadata (tifffile's ``series[0].axes``, which
    reads ImageJ and OME too), never from guessing by shape: only Y, X and colour
    samples (S) may have more than one element. A Z-stack, a time series or a
    multi-channel (C) image is an error naming the axes found.

    Raises:
        DataError: the file is missing, empty, corrupt, or not a single 2-D plane.
    """
    path = Path(path)
    array, axes = _open(path, pixels=True)
    return _one_plane(array, axes, path)


def _open(path: Path, *, pixels: bool) -> tuple:
    """``(array, axes)`` of an image file, or ``(shape, axes)`` from its header alone
    when not ``pixels``; every failure a :class:`DataError` naming the file.

    TIFF axes are tifffile's ``series[0].axes``; other formats (read by PIL) are
    ``YX``, or ``YXS`` for colour. A multi-frame PNG/GIF is refused.
    """
    if not path.is_file():
        raise DataError(f"{path}: image file not found")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: image file is empty")
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                if not tif.series:
                    raise DataError(f"{path}: TIFF holds no image")
                series = tif.series[0]
                data = np.asarray(series.asarray()) if pixels else tuple(series.shape)
                return data, series.axes.upper()
        from PIL import Image

        with Image.open(path) as im:
            frames = getattr(im, "n_frames", 1)
            if frames > 1:
                raise DataError(
                    f"{path}: holds {frames} frames; cellstack reads one 2-D image per file"
                )
            if not pixels:
                return (im.size[1], im.size[0]), "YX"
            return _pil_pixels(im)
    except DataError:
        raise
    except Exception as exc:  # PIL and tifffile raise many unrelated types on corrupt data
        detail = str(exc).splitlines()[0] if str(exc) else ""
        raise DataError(f"{path}: cannot read image ({type(exc).__name__}: {detail})") from None


def _pil_pixels(im) -> tuple[np.ndarray, str]:
    """The pixels of an open PIL image and their axes."""
    im.load()
    if im.mode in ("I;16", "I;16B", "I;16L"):
        return np.asarray(im).astype(np.uint16), "YX"
    if im.mode in ("I", "F", "L"):
        return np.asarray(im), "YX"
    if im.mode == "LA":
        return np.asarray(im.getchannel(0)), "YX"
    if im.mode == "RGB":
        return np.asarray(im), "YXS"
    return np.asarray(im.convert("RGB")), "YXS"


def _plane_axes(shape: tuple[int, ...], axes: str, path: Path) -> tuple[tuple[int, ...], str]:
    """The shape and axes left once length-1 axes are dropped, checked to be one 2-D
    plane: ``YX`` or ``YXS``/``SYX`` with 2-4 samples; anything else an error."""
    if len(axes) != len(shape):
        raise DataError(f"{path}: axes {axes!r} do not match shape {tuple(shape)}")
    # Axes of length 1 carry no data (a single Z, T or C), whatever their name.
    keep = [i for i, (a, n) in enumerate(zip(axes, shape, strict=True)) if n > 1 or a in "YX"]
    squeezed = tuple(shape[i] for i in keep)
    left = "".join(axes[i] for i in keep)
    samples = squeezed[-1] if left == "YXS" else squeezed[0] if left == "SYX" else 0
    if left not in ("YX", "YXS", "SYX") or (left != "YX" and samples not in (2, 3, 4)):
        raise DataError(
            f"{path}: shape {tuple(shape)} with axes {axes!r} is not one 2-D image "
            "(Y, X and optional RGB samples S); Z-stacks, time series and multi-channel "
            "images are not read plane by plane yet"
        )
    if 0 in squeezed:
        raise DataError(f"{path}: image is empty (shape {tuple(shape)})")
    return squeezed, left


def _one_plane(array: np.ndarray, axes: str, path: Path) -> np.ndarray:
    """``array`` with axes ``axes`` as [H, W] or [H, W, C]; anything else an error."""
    squeezed, axes = _plane_axes(array.shape, axes, path)
    array = array.reshape(squeezed)
    if axes == "SYX":
        array, axes = np.moveaxis(array, 0, -1), "YXS"
    if axes == "YXS" and array.shape[-1] == 2:  # gray + alpha
        array = array[..., 0]
    if array.dtype.kind == "c" or array.dtype == bool:
        array = array.astype(np.uint8) if array.dtype == bool else np.abs(array)
    return array


def image_size(path: str | Path) -> tuple[int, int]:
    """``(H, W)`` of an image from its header only, after the same checks of its axes
    and frames as :func:`read_image` makes (so a stack is refused before any work)."""
    path = Path(path)
    shape, axes = _open(path, pixels=False)
    squeezed, axes = _plane_axes(tuple(shape), axes, path)
    return squeezed[1:3] if axes == "SYX" else squeezed[:2]


def to_gray_uint8(image: np.ndarray) -> np.ndarray:
    """Convert any image from :func:`read_image` to uint8[H, W].

    Colour is averaged over its first three channels (alpha ignored). 8-bit images,
    gray or colour, keep their values (colour rounded after averaging). Every other
    dtype is rescaled by its 0.5 and 99.5 percentiles, so dim 16-bit microscopy becomes
    visible; NaN and infinite pixels are left out of the percentiles and become 0.
    """
    img = np.asarray(image)
    was_uint8 = img.dtype == np.uint8
    if img.ndim == 3:
        img = img[..., :3].astype(np.float32).mean(axis=-1)
    if was_uint8:
        return np.round(img).astype(np.uint8) if img.dtype != np.uint8 else img
    img = img.astype(np.float32)
    finite = np.isfinite(img)
    if not finite.any():
        return np.zeros(img.shape, dtype=np.uint8)
    lo, hi = np.percentile(img[finite], [0.5, 99.5])
    img = np.where(finite, img, lo)
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
    """Image files directly in ``folder``, sorted by name.

    Their stems become image ids (and output file names), so each must be a usable
    name and unique: ``X.png`` beside ``X.tif`` is an error, not a silent overwrite.
    """
    from cellstack.errors import CellstackError
    from cellstack.fileio import check_name

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a directory")
    found = sorted(
        p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    )
    seen: dict[str, Path] = {}
    for p in found:
        try:
            check_name(p.stem, str(folder))
        except CellstackError as exc:
            raise DataError(str(exc)) from None
        if p.stem in seen:
            raise DataError(
                f"{folder}: {seen[p.stem].name} and {p.name} share the id {p.stem!r}; "
                "rename one (their outputs would overwrite each other)"
            )
        seen[p.stem] = p
    return found
