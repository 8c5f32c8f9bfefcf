"""What every benchmark shares: its arguments, the machine line, timing, child
processes, training a run (or resuming it), the table and the JSON report.

A benchmark is a module under ``benchmarks/suites/<suite>/`` with a ``main()`` that reads
its arguments with :func:`arguments`; a suite's script (``benchmarks/speed.py`` ...) runs
it by name through :func:`run_suite`. Reports land in ``benchmarks/results/`` (untracked),
written whole or not at all.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"

#: ``[script, name]`` of the benchmark running now (set by :func:`run_suite`), so a
#: benchmark can start itself again in a child process (:func:`again`).
_ENTRY: list[str] = []


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


def arguments(doc: str, report: str, *, threads: int | None = 2) -> argparse.ArgumentParser:
    """The parser every benchmark starts from: its description (the docstring's first
    paragraph), ``--out`` (the JSON report, default ``benchmarks/results/REPORT.json``)
    and, unless ``threads`` is None, ``--threads`` (torch's intra-op threads)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=RESULTS / f"{report}.json", help="JSON report")
    if threads is not None:
        parser.add_argument("--threads", type=int, default=threads, help="torch threads")
    return parser


def start(args: argparse.Namespace) -> str:
    """Set torch's threads to ``args.threads`` (where the benchmark has it) and return
    the machine line the report and the table carry."""
    threads = getattr(args, "threads", None)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    return machine_line(threads)


def seconds(fn: Callable[[], object], repeats: int, warmup: int = 1) -> list[float]:
    """Wall seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def again(*args: object) -> list[str]:
    """The command that runs the current benchmark again with ``args`` (a worker in its
    own process, so its peak memory is its own)."""
    if not _ENTRY:
        raise RuntimeError("again() needs a benchmark started by run_suite")
    return [sys.executable, *_ENTRY, *map(str, args)]


def child(command: Sequence[object], *, echo: bool = False, env: dict | None = None) -> dict:
    """Run ``command`` and return the JSON object on the last line of its output; the
    lines before it are printed when ``echo``. A failed child stops the benchmark with
    the end of its error output."""
    done = subprocess.run(list(map(str, command)), capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.exit(f"{' '.join(map(str, command[-4:]))}: failed\n{done.stderr[-3000:]}")
    lines = done.stdout.strip().splitlines()
    if echo:
        print("\n".join(lines[:-1]))
    return json.loads(lines[-1])


def train_or_resume(
    cfg: object,
    data: Path,
    run: Path,
    hooks: Sequence[object] = (),
    stop_after: int | None = None,
    progress: bool = False,
) -> float:
    """Train the config ``cfg`` on ``data`` into ``run``, resume it from its checkpoint
    (which holds the config it started with) after an interruption, or keep it when it
    has finished; ``stop_after`` iterations at most this call (a chunk, for sessions
    with a time limit). Returns the seconds spent (NaN for a finished run: nothing
    trained). A run folder left without a checkpoint (killed in its first steps)
    starts again."""
    import shutil

    from cellstack.engine.trainer import train
    from cellstack.modeling import runfolder

    if (run / runfolder.FINAL).is_file():
        return float("nan")
    resume = (run / runfolder.CHECKPOINT).is_file()
    if run.exists() and not resume:
        shutil.rmtree(run)
    t0 = time.perf_counter()
    train(
        None if resume else cfg,
        data,
        run,
        resume=resume,
        progress=progress,
        hooks=list(hooks),
        stop_after=stop_after,
    )
    return time.perf_counter() - t0


def step_seconds(cfg: object, data: Path, steps: int, run: Path) -> float:
    """Seconds per training step of ``cfg`` on ``data``: ``steps`` steps timed after 3
    warm-up steps, trained in the scratch folder ``run`` (removed after)."""
    import dataclasses
    import shutil

    from cellstack.engine.loop import HookBase
    from cellstack.engine.trainer import train

    times: list[float] = []

    class Clock(HookBase):
        def after_step(self, loop) -> None:
            times.append(time.perf_counter())

    short = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, iterations=steps + 3))
    shutil.rmtree(run, ignore_errors=True)
    train(short, data, run, progress=False, hooks=[Clock()])
    shutil.rmtree(run, ignore_errors=True)
    return (times[-1] - times[2]) / (len(times) - 3)


def evaluate_source(
    source: object, folder: Path, out: Path, overrides: Sequence[str] = ()
) -> tuple[list, dict, dict, float]:
    """Predict a label folder's ``images/`` with ``source`` (a run, built-in or
    ensemble; ``predict.*`` ``overrides``) into ``out`` and score the labels:
    ``(records, predictions, evaluate's report as a dict, predict's seconds)``."""
    from cellstack.data.layouts import load_dataset, load_predictions
    from cellstack.evaluation.report import evaluate
    from cellstack.inference.predict import PredictOptions, predict_folder

    records = load_dataset(folder)
    options = PredictOptions(overrides=tuple(overrides))
    t0 = time.perf_counter()
    predict_folder(
        source, folder / "images", out, options, device="cpu", progress=False, overwrite=True
    )
    seconds = time.perf_counter() - t0
    preds = load_predictions(out / "labels", records)
    return records, preds, evaluate(records, preds, progress=False).to_dict(), seconds


def evaluate_otsu(records: list) -> tuple[dict, dict]:
    """The Otsu baseline's ``(predictions, evaluate's report as a dict)`` on ``records``."""
    from cellstack.data.dataset import load_sample
    from cellstack.data.masks import sparse_from_labels
    from cellstack.evaluation.report import evaluate
    from cellstack.inference.baseline import otsu_instances

    preds = {r.image_id: sparse_from_labels(otsu_instances(load_sample(r)[0])) for r in records}
    return preds, evaluate(records, preds, progress=False).to_dict()


def print_table(header: Sequence[str], rows: Sequence[Sequence[object]], digits: int = 3) -> None:
    """Print a Markdown table (floats to ``digits`` decimals), as docs/ quotes it."""

    def cell(value: object) -> str:
        return f"{value:.{digits}f}" if isinstance(value, float) else str(value)

    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(cell(v) for v in row) + " |")


#: The keys :func:`write_report` adds to every report.
META = ("machine", "date", "command")


def read_report(path: Path) -> dict:
    """A report :func:`write_report` wrote, without its :data:`META` keys (what a
    resumable benchmark continues from); {} when there is none."""
    if not path.is_file():
        return {}
    return {k: v for k, v in json.loads(path.read_text()).items() if k not in META}


def write_report(path: Path, report: dict, machine: str | None = None) -> None:
    """Write ``report`` as JSON to ``path`` with the machine line, the date and the
    command (:data:`META`; paths and other objects as text), whole or not at all, and
    say where."""
    full = {
        "machine": machine or machine_line(),
        "date": datetime.date.today().isoformat(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        **report,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(full, indent=1, default=str))
    partial.replace(path)
    print(f"wrote {path}")


def run_suite(suite: str, doc: str, argv: Sequence[str] | None = None) -> None:
    """Run ``NAME [ARGS]`` of ``benchmarks/suites/SUITE/`` (``NAME.py``'s ``main()``,
    which parses ARGS), or list the suite's benchmarks with their first lines."""
    argv = list(sys.argv[1:] if argv is None else argv)
    folder = BENCH / "suites" / suite
    names = sorted(p.stem for p in folder.glob("*.py") if p.stem != "__init__")
    if not argv or argv[0] in ("-h", "--help"):
        print(doc.strip() + "\n\nbenchmarks (NAME --help for each one's arguments):")
        for name in names:
            text = (folder / f"{name}.py").read_text()
            first = text.split('"""')[1].strip().splitlines()[0] if '"""' in text else ""
            print(f"  {name.replace('_', '-'):<18}{first}")
        sys.exit(0 if argv else 2)
    name = argv[0].replace("-", "_")
    if name not in names:
        sys.exit(f"{Path(sys.argv[0]).name}: no benchmark {argv[0]!r}; one of {', '.join(names)}")
    _ENTRY[:] = [sys.argv[0], argv[0]]
    sys.argv = [f"{Path(sys.argv[0]).name} {argv[0]}", *argv[1:]]
    importlib.import_module(f"suites.{suite}.{name}").main()
