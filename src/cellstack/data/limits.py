"""The limits every reader applies to what a data file declares: image sizes and ids.

A leaf module (it imports nothing of ``data/``), so every format's reader and the image
reader check against one rule.
"""

from __future__ import annotations

from cellstack.errors import CellstackError, DataError
from cellstack.fileio import check_name

# 2**28 pixels (16384 x 16384): larger frames are refused before anything is allocated
# for them; a whole-slide image needs tiling by the user.
MAX_PIXELS = 2**28


def check_image_size(height: int, width: int, where: str) -> None:
    """Refuse a declared image size that is not positive or too large to hold."""
    if height <= 0 or width <= 0:
        raise DataError(f"{where}: image size {width}x{height} must be positive")
    if height * width > MAX_PIXELS:
        raise DataError(
            f"{where}: image size {width}x{height} is over the limit of {MAX_PIXELS} pixels"
        )


def check_id(name: str, where: str) -> str:
    """:func:`~cellstack.fileio.check_name` for ids read from data: ``name``, or its
    refusal as a :class:`DataError` naming ``where`` (the file, row or image)."""
    try:
        return check_name(name, where)
    except CellstackError as exc:
        raise DataError(str(exc)) from None
