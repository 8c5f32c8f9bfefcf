"""What every benchmark does with its figures: one JSON file under benchmarks/results/."""

from __future__ import annotations

import json
from pathlib import Path


def write_report(path: Path, report: dict) -> None:
    """Write ``report`` (the arguments and the measured rows) as JSON to ``path``
    (folders made; paths and other objects written as text) and say where."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str))
    print(f"wrote {path}")
