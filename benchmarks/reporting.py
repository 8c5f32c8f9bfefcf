"""What every benchmark does with its figures: one JSON file under benchmarks/results/."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), for a table's machine line."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line(threads: int | None = None) -> str:
    """What a timing was measured on: CPU, cores, memory (and the threads used)."""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    line = f"{cpu_name()}, {os.cpu_count()} cores, {memory:.0f} GB"
    return line if threads is None else f"{line}, {threads} threads"


def write_report(path: Path, report: dict) -> None:
    """Write ``report`` (the arguments and the measured rows) as JSON to ``path``
    (folders made; paths and other objects written as text) and say where."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str))
    print(f"wrote {path}")
