"""The resize factor a prediction applies: ``diameter`` or ``scale``, checked once."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from cellstack.errors import CellstackError

if TYPE_CHECKING:
    from cellstack.inference.sources import Source


def resize_factor(source: Source | None, diameter: float | None, scale: float | None) -> float:
    """The resize factor for ``diameter`` or ``scale``, checked (the run's trained
    ``data.scale`` when neither): the one check of both arguments, wherever a user gives
    them (the API, ``predict``, napari).

    ``source`` None checks the arguments only (before a model is loaded)."""
    from cellstack.config.schema import MAX_RESIZE
    from cellstack.data.stats import size_ratio

    if diameter is not None and scale is not None:
        raise CellstackError("give diameter or scale, not both")
    for name, value in (("diameter", diameter), ("scale", scale)):
        if value is not None and not (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and math.isfinite(value)
            and value > 0
        ):
            raise CellstackError(f"{name} must be a positive finite number, got {value!r}")
    if diameter is None and scale is None:
        # A run trained with data.scale predicts at that scale unless told otherwise.
        trained = getattr(getattr(source, "cfg", None), "data", None)
        factor = float(trained.scale) if trained is not None and trained.scale != "auto" else 1.0
    elif diameter is None:
        factor = float(scale)
    elif source is None:
        return 1.0
    elif source.diameter is None:
        raise CellstackError(
            "this run did not record its training objects' diameter (data_stats.json); "
            "give scale instead of diameter"
        )
    else:
        factor = size_ratio(source.diameter, diameter)
    lo, hi = MAX_RESIZE
    if not lo <= factor <= hi:
        if diameter is not None:
            raise CellstackError(
                f"diameter {diameter:g} px against the {source.diameter:g} px the model "
                f"trained on means resizing by {factor:.4g}, outside {lo:g}..{hi:g}; "
                "diameter is the cells' size in pixels"
            )
        if scale is not None:
            raise CellstackError(
                f"scale {factor:.4g} is outside {lo:g}..{hi:g} (scale resizes the image "
                "before the model: 0.5 halves it)"
            )
        raise CellstackError(
            f"the run's data.scale {factor:.4g} is outside {lo:g}..{hi:g}; give scale"
        )
    return factor
