"""A run's training log: ``log.csv`` rows and the ``training.png`` plot."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from cellstack.engine.schedule import LOSS_NAMES
from cellstack.fileio import atomic_path, atomic_write, open_text

LOG_COLUMNS = ("iteration", "lr", "loss", *LOSS_NAMES, "val_score", "seconds")


def read_log(path: Path) -> list[dict[str, str]]:
    """The rows of a run's ``log.csv`` (the columns of :data:`LOG_COLUMNS`, as text;
    "" where a row has no value), whole rows only: a cut last line is dropped."""
    with open_text(path, "run log") as f:
        # A kill mid-append can leave a cut last line: keep whole rows only.
        return [
            r
            for r in csv.DictReader(f)
            if (r.get("iteration") or "").isdigit() and None not in r.values()
        ]


class RunLog:
    """``RUN/log.csv``: one row per logged iteration; on resume, rows past it are cut.

    Rows are appended as they come (a kill loses at most the row being written, and a
    cut last line is dropped when the run resumes).
    """

    def __init__(self, path: Path, start: int) -> None:
        self.path = path
        rows = []
        if start > 0 and path.is_file():
            rows = [r for r in read_log(path) if int(r["iteration"]) <= start]
        with atomic_write(path, newline="") as f:
            writer = csv.DictWriter(f, fieldnames=LOG_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        self.rows = rows

    def add(self, row: dict) -> None:
        row = {k: row.get(k, "") for k in LOG_COLUMNS}
        self.rows.append(row)
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=LOG_COLUMNS).writerow(row)


def smooth(values: list[float], span: int = 10) -> np.ndarray:
    """Exponential moving average with the weight of a ``span``-point window, bias-
    corrected at the start (as TensorBoard smooths curves)."""
    alpha = 2 / (span + 1)
    out, acc, norm = [], 0.0, 0.0
    for v in values:
        acc = (1 - alpha) * acc + alpha * v
        norm = (1 - alpha) * norm + alpha
        out.append(acc / norm)
    return np.asarray(out)


def plot_log(rows: list[dict], path: Path) -> None:
    """Losses (log scale; raw faint, smoothed bold) and validation score against
    iteration, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for k, name in enumerate(("loss", *LOSS_NAMES)):
        points = [
            (int(r["iteration"]), float(r[name])) for r in rows if r.get(name) not in ("", None)
        ]
        if points:
            xs, ys = zip(*points, strict=True)
            colour = f"C{k}"
            ax.plot(xs, ys, color=colour, lw=0.6, alpha=0.3)
            span = max(len(ys) // 5, 3)
            ax.plot(xs, smooth(list(ys), span), color=colour, label=name, lw=2.2 if k == 0 else 1.2)
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss (smoothed; raw values faint)")
    ax.legend(loc="upper right", fontsize=8)
    val = [(int(r["iteration"]), float(r["val_score"])) for r in rows if r["val_score"] != ""]
    if val:
        ax2 = ax.twinx()
        ax2.plot(*zip(*val, strict=True), "ko-", label="val score")
        ax2.set_ylabel("validation score (competition metric)")
        ax2.legend(loc="upper center", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
