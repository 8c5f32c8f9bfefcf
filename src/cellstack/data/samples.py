"""Sample data shipped inside the package, for the demo, docs, exports and tests."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def sample_path(name: str) -> Path:
    """A sample label folder shipped with the package (``samples/nuclei``: two real
    mnfinder test images, MIT)."""
    return Path(str(resources.files("cellstack") / "samples" / name))
