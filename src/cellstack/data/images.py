"""Reading and writing images: PNG/TIF, 8 or 16 bit, gray or RGB.

Reading never fails with a library traceback: a missing, empty or corrupt file raises
:class:`~cellstack.errors.DataError` naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass
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
                # The same axes as _pil_pixels gives, without decoding the pixels.
                if im.mode in _PIL_GRAY:
                    return (im.size[1], im.size[0]), "YX"
                return (im.size[1], im.size[0], 3), "YXS"
            return _pil_pixels(im)
    except DataError:
        raise
    except Exception as exc:  # PIL and tifffile raise many unrelated types on corrupt data
        detail = str(exc).splitlines()[0] if str(exc) else ""
        raise DataError(f"{path}: cannot read image ({type(exc).__name__}: {detail})") from None


#: PIL modes read as one gray plane (``LA``: its alpha dropped); every other mode is
#: read as RGB.
_PIL_GRAY = ("I;16", "I;16B", "I;16L", "I", "F", "L", "LA")


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


@dataclass(frozen=True)
class PlaneSpec:
    """How to cut an image into the 2-D planes that are segmented.

    Attributes:
        channel: channel indices to use from the channel axis C (or, without one, from
            the colour samples S): one is taken as it is; several are each scaled to
            [0, 1] by their 0.5/99.5 percentiles and averaged. None: an image with
            several channels is refused, colour is averaged.
        z_axis, t_axis, c_axis: the index of the stored array's axis that is Z, T or C,
            for files whose metadata does not say (tifffile names such axes Q or I),
            or says wrong.
    """

    channel: tuple[int, ...] | None = None
    z_axis: int | None = None
    t_axis: int | None = None
    c_axis: int | None = None

    def __post_init__(self) -> None:
        given = {
            k: v
            for k, v in (("z", self.z_axis), ("t", self.t_axis), ("c", self.c_axis))
            if v is not None
        }
        seen: dict[int, str] = {}
        for name, index in given.items():
            if index in seen:  # one axis cannot be two things; never pick one silently
                raise DataError(
                    f"--{seen[index]}-axis {index} and --{name}-axis {index} name the same "
                    "axis; give each axis one meaning"
                )
            seen[index] = name


#: The axes cellstack knows, in tifffile's letters: time, depth, channel, colour samples.
KNOWN_AXES = "TZCSYX"


@dataclass(frozen=True)
class _Plan:
    keep: tuple[int, ...]  # the stored axes that are not of length 1 (or are Y/X)
    axes: str  # their names
    channel_axis: str | None  # "C" or "S" when spec.channel selects from it
    lead: str  # the axes planes are stacked along ("", "Z", "T", "TZ")
    lead_shape: tuple[int, ...]
    size: tuple[int, int]  # (H, W)


def _axis_option(letter: str) -> str:
    """An axis option as both front ends spell it: ``z_axis (--z-axis)``."""
    return f"{letter.lower()}_axis (--{letter.lower()}-axis)"


def _plan(shape: tuple[int, ...], axes: str, spec: PlaneSpec, where: object) -> _Plan:
    """Check the axes of an image of ``shape`` against ``spec``; every shape that cannot
    be resolved is a :class:`DataError` naming the file, shape and axes found."""
    shape = tuple(int(n) for n in shape)
    found = f"shape {shape} with axes {axes!r}"
    if len(axes) != len(shape):
        raise DataError(f"{where}: axes {axes!r} do not match shape {shape}")
    names = list(axes.upper())
    for letter, index in (("Z", spec.z_axis), ("T", spec.t_axis), ("C", spec.c_axis)):
        if index is not None:
            if not -len(shape) <= index < len(shape):
                raise DataError(
                    f"{where}: {_axis_option(letter)} {index} is out of range for {found}"
                )
            if names[index] in "YX":
                # Typically a 2-D image in a folder of stacks: the option is meant for the
                # stacks, and this file's own axes leave nothing for it to name.
                raise DataError(
                    f"{where}: {_axis_option(letter)} {index} names this file's "
                    f"{names[index]} axis ({found}); it has no axis for that option: "
                    "predict such files without it (in a folder of their own)"
                )
            names[index] = letter
    keep = tuple(i for i, (a, n) in enumerate(zip(names, shape, strict=True)) if n > 1 or a in "YX")
    left = "".join(names[i] for i in keep)
    unknown = sorted(set(left) - set(KNOWN_AXES))
    if unknown:
        i = keep[left.index(unknown[0])]
        raise DataError(
            f"{where}: {found}: axis {unknown[0]} (length {shape[i]}, index {i}) is not "
            f"named in the file's metadata; say what it is: in Python "
            f"spec=PlaneSpec(z_axis={i}) (or t_axis, c_axis; axes='...' for an array), on "
            f"the command line --z-axis {i}, --t-axis {i} or --c-axis {i}"
        )
    repeated = sorted({a for a in left if left.count(a) > 1})
    if repeated or "Y" not in left or "X" not in left:
        raise DataError(
            f"{where}: {found} is not a set of 2-D planes (needs one Y and one X axis, each "
            "other axis once)"
        )
    if any(shape[i] == 0 for i in keep):
        raise DataError(f"{where}: image is empty ({found})")
    size = (shape[keep[left.index("Y")]], shape[keep[left.index("X")]])
    channel_axis = None
    if spec.channel is not None:
        channel_axis = "C" if "C" in left else "S" if "S" in left else None
        if channel_axis is None and "C" not in names and "S" not in names:
            raise DataError(
                f"{where}: a channel was chosen (channel= / --channel), but {found} has no "
                "channel axis"
            )
        # A named channel axis of length 1 (axes="TZCYX" with one C) is channel 0 alone.
        n = 1 if channel_axis is None else shape[keep[left.index(channel_axis)]]
        bad = [c for c in spec.channel if not 0 <= c < n]
        if bad:
            raise DataError(
                f"{where}: channel {bad[0]} does not exist; {found} has {n} channel"
                f"{'s' if n > 1 else ''} (0..{n - 1})"
            )
    else:
        # Several channels (C), or more samples than colour has (S), need a choice.
        for axis, most in (("C", 1), ("S", 4)):
            n = shape[keep[left.index(axis)]] if axis in left else 0
            if n > most:
                raise DataError(
                    f"{where}: {found} has {n} channels; choose one with channel=N in "
                    "Python or --channel N on the command line (or combine some: "
                    "channel=(0, 1), --channel 0,1)"
                )
    lead = "".join(a for a in "TZ" if a in left)
    lead_shape = tuple(shape[keep[left.index(a)]] for a in lead)
    return _Plan(keep, left, channel_axis, lead, lead_shape, size)


def plane_layout(
    path: str | Path, spec: PlaneSpec = PlaneSpec()
) -> tuple[str, tuple[int, ...], tuple[int, int]]:
    """``(lead_axes, lead_shape, (H, W))`` of an image file from its header alone: the
    axes its planes are stacked along (``""`` for one 2-D image, else some of ``"TZ"``)
    and their lengths. Makes every check :func:`read_planes` makes, before any pixels
    are read."""
    path = Path(path)
    shape, axes = _open(path, pixels=False)
    plan = _plan(tuple(shape), axes, spec, path)
    return plan.lead, plan.lead_shape, plan.size


def select_planes(
    array: np.ndarray, axes: str, spec: PlaneSpec = PlaneSpec(), where: object = "image"
) -> tuple[np.ndarray, str]:
    """``(planes, lead_axes)``: ``array`` (stored with ``axes``) as
    ``[*lead, H, W]`` or ``[*lead, H, W, S]`` (colour), its channels chosen by ``spec``.

    Length-1 axes are dropped whatever their name; the lead axes are T then Z. A single
    chosen channel keeps its dtype; several become float32 (each scaled, then averaged).
    """
    array = np.asarray(array)
    plan = _plan(array.shape, axes, spec, where)
    array = array.reshape([array.shape[i] for i in plan.keep])
    left = plan.axes
    if plan.channel_axis is not None:
        ax = left.index(plan.channel_axis)
        parts = [np.take(array, c, axis=ax) for c in spec.channel]
        left = left.replace(plan.channel_axis, "")
        array = parts[0] if len(parts) == 1 else np.mean([_unit(p) for p in parts], axis=0)
    order = [left.index(a) for a in (*plan.lead, "Y", "X")]
    if "S" in left:
        order.append(left.index("S"))
    array = np.transpose(array, order)
    if "S" in left and array.shape[-1] == 2:  # gray + alpha
        array = array[..., 0]
    if array.dtype.kind == "c" or array.dtype == bool:
        array = array.astype(np.uint8) if array.dtype == bool else np.abs(array)
    return array, plan.lead


def _unit(channel: np.ndarray) -> np.ndarray:
    """One channel scaled to [0, 1] by its 0.5/99.5 percentiles (finite pixels only)."""
    return to_gray_uint8(channel.reshape(-1, channel.shape[-1])).reshape(channel.shape) / 255.0


def read_planes(
    path: str | Path, spec: PlaneSpec = PlaneSpec(), limits: tuple[float, float] | None = None
) -> tuple[np.ndarray, str]:
    """An image file as uint8 planes ``[*lead, H, W]`` and their lead axes (``""``,
    ``"Z"``, ``"T"`` or ``"TZ"``), each plane scaled by :func:`to_gray_uint8` on its own
    (or by the fixed intensity ``limits``).

    Axes come from the file (tifffile's ``series[0].axes``: ImageJ, OME and plain
    TIFF), overridden by ``spec``; see :class:`PlaneSpec`.
    """
    path = Path(path)
    array, axes = _open(path, pixels=True)
    planes, lead = select_planes(array, axes, spec, path)
    return gray_planes(planes, lead, limits), lead


def read_channels(path: str | Path, spec: PlaneSpec = PlaneSpec()) -> tuple[np.ndarray, str]:
    """Every channel of an image file in its raw values, for measuring cells:
    float32 ``[C, *lead, H, W]`` and the lead axes, the planes cut as
    :func:`read_planes` cuts them (``spec``'s axes; its channel choice is ignored).

    C is the length of the file's channel axis (C), else its colour samples (S, alpha
    dropped), else 1.
    """
    from dataclasses import replace

    path = Path(path)
    array, axes = _open(path, pixels=True)
    names = list(axes.upper())
    if spec.c_axis is not None and -len(names) <= spec.c_axis < len(names):
        names[spec.c_axis] = "C"
    if "C" not in names and "S" not in names:
        planes, lead = select_planes(array, axes, replace(spec, channel=None), path)
        return planes[None].astype(np.float32), lead
    plan = _plan(array.shape, axes, replace(spec, channel=(0,)), path)
    n = 1
    if plan.channel_axis is not None:
        n = array.shape[plan.keep[plan.axes.index(plan.channel_axis)]]
        if plan.channel_axis == "S" and n in (2, 4):  # gray + alpha, RGBA
            n -= 1
    channels = [
        select_planes(array, axes, replace(spec, channel=(k,)), path)[0].astype(np.float32)
        for k in range(n)
    ]
    return np.stack(channels), plan.lead


def gray_planes(
    planes: np.ndarray, lead: str, limits: tuple[float, float] | None = None
) -> np.ndarray:
    """uint8 ``[*lead, H, W]`` from ``[*lead, H, W(, S)]`` planes, one plane at a time
    (:func:`to_gray_uint8`)."""
    n = len(lead)
    flat = planes.reshape(-1, *planes.shape[n:])
    gray = [to_gray_uint8(p, limits) for p in flat]
    return np.stack(gray).reshape(*planes.shape[:n], *flat.shape[1:3])


def _one_plane(array: np.ndarray, axes: str, path: Path) -> np.ndarray:
    """``array`` with axes ``axes`` as [H, W] or [H, W, C]; a stack is an error."""
    if any(n > 1 and a not in "YXS" for a, n in zip(axes, array.shape, strict=True)):
        # Said before the axis checks, whose advice (--z-axis ...) only predict takes.
        raise DataError(_stack_message(path, array.shape, axes))
    planes, lead = select_planes(array, axes, PlaneSpec(), path)
    if lead:
        raise DataError(_stack_message(path, array.shape, axes))
    return planes


def _stack_message(path: Path, shape: tuple[int, ...], axes: str) -> str:
    return (
        f"{path}: shape {tuple(shape)} with axes {axes!r} is not one 2-D image (Y, X and "
        "optional RGB samples S); predict segments stacks plane by plane, training and "
        "evaluation read one plane per file"
    )


def image_size(path: str | Path) -> tuple[int, int]:
    """``(H, W)`` of a single-plane image from its header only, after the same checks
    of its axes and frames as :func:`read_image` makes (so a stack is refused before
    any work)."""
    path = Path(path)
    shape, axes = _open(path, pixels=False)
    plan = _plan(tuple(shape), axes, PlaneSpec(), path)
    if plan.lead:
        raise DataError(_stack_message(path, tuple(shape), axes))
    return plan.size


def _gray64(image: np.ndarray) -> np.ndarray:
    """float64[H, W]: colour averaged over its first three channels (alpha ignored).
    float64 and, later, rounding: uint8 v, uint16 257*v and float v/255 give the same
    bytes."""
    img = np.asarray(image)
    if img.ndim == 3:
        img = img[..., :3].astype(np.float32).mean(axis=-1)
    return img.astype(np.float64)


def _percentiles(gray: np.ndarray, finite: np.ndarray) -> tuple[float, float] | None:
    if not finite.any():
        return None
    lo, hi = np.percentile(gray[finite], [0.5, 99.5])
    return float(lo), float(hi)


def intensity_limits(image: np.ndarray) -> tuple[float, float] | None:
    """The 0.5 and 99.5 percentiles of ``image``'s finite pixels (colour averaged), or
    None when it has none: the range :func:`to_gray_uint8` maps to 0..255. Computed
    once on a sample of a large image, they scale all of its blocks alike."""
    gray = _gray64(image)
    return _percentiles(gray, np.isfinite(gray))


def to_gray_uint8(image: np.ndarray, limits: tuple[float, float] | None = None) -> np.ndarray:
    """Convert any image from :func:`read_image` to uint8[H, W].

    One rule for every dtype, so the same pixels give the same cells whether they are
    stored as uint8, uint16 or float (0-1 or 0-255): colour is averaged over its first
    three channels (alpha ignored), then the plane is rescaled so that its 0.5 and 99.5
    percentiles map to 0 and 255 (as Cellpose and StarDist normalise). Dim 16-bit
    microscopy becomes visible and an 8-bit image with a narrow range is stretched the
    same way. NaN and infinite pixels are left out of the percentiles and become 0; a
    constant plane becomes 0. ``limits`` (lo, hi) replaces the plane's own percentiles
    (:func:`intensity_limits` of a whole image, for its blocks).
    """
    img = _gray64(image)
    finite = np.isfinite(img)
    if not finite.any():
        return np.zeros(img.shape, dtype=np.uint8)
    lo, hi = _percentiles(img, finite) if limits is None else limits
    img = np.where(finite, img, lo)
    if hi <= lo:
        return np.zeros(img.shape, dtype=np.uint8)
    return np.clip(np.round((img - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)


def write_png(path: str | Path, image: np.ndarray) -> None:
    """Write uint8/uint16 gray or uint8 RGB as PNG, atomically.

    zlib level 1, not PIL's 6: a 512x512 overlay took 17 ms instead of 59 ms, at the
    same file size (microscopy and outline images gain nothing from harder effort)."""
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(np.ascontiguousarray(image)).save(tmp, format="PNG", compress_level=1)


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
    from cellstack.data.limits import check_id

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a directory")
    found = sorted(
        p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    )
    seen: dict[str, Path] = {}
    for p in found:
        check_id(p.stem, str(folder))
        if p.stem in seen:
            raise DataError(
                f"{folder}: {seen[p.stem].name} and {p.name} share the id {p.stem!r}; "
                "rename one (their outputs would overwrite each other)"
            )
        seen[p.stem] = p
    return found
