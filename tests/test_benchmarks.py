"""benchmarks/: every benchmark of every suite builds its arguments, and the shared
harness runs one end to end (arguments, machine line, table, JSON report)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parents[1] / "benchmarks"
SUITES = ("speed", "scale", "accuracy", "learning")


@pytest.fixture
def harness(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    monkeypatch.setattr(sys, "argv", ["benchmarks/suite.py"])
    import harness

    monkeypatch.setattr(harness, "_ENTRY", [])
    return harness


@pytest.mark.parametrize(
    ("suite", "name"),
    [(s, p.stem) for s in SUITES for p in sorted((BENCH / "suites" / s).glob("[!_]*.py"))],
)
def test_every_benchmark_parses_its_arguments(harness, suite, name, capsys):
    with pytest.raises(SystemExit) as done:
        harness.run_suite(suite, "doc", [name.replace("_", "-"), "--help"])
    assert done.value.code == 0
    assert "--out" in capsys.readouterr().out


def test_a_suite_lists_its_benchmarks_and_refuses_an_unknown_one(harness, capsys):
    with pytest.raises(SystemExit) as done:
        harness.run_suite("speed", "Speed.", [])
    assert done.value.code == 2
    listing = capsys.readouterr().out
    assert "predict" in listing and "frames" in listing
    with pytest.raises(SystemExit) as done:
        harness.run_suite("speed", "Speed.", ["nope"])
    assert "no benchmark 'nope'" in str(done.value.code)


def test_a_benchmark_runs_end_to_end_through_its_suite(tmp_path):
    out = tmp_path / "post.json"
    cmd = [sys.executable, str(BENCH / "speed.py"), "postprocess", "--cells", "40"]
    done = subprocess.run(
        [*cmd, "--repeats", "1", "--out", str(out)], capture_output=True, text=True, check=True
    )
    report = json.loads(out.read_text())
    assert {"machine", "date", "command"} <= report.keys()
    assert report["command"].startswith("speed.py postprocess")
    assert report["cells"] == 40 and report["seconds"]
    assert "| step | seconds |" in done.stdout
    assert not list(tmp_path.glob("*.partial"))


def test_timing_and_table_helpers(harness, capsys):
    calls = []
    times = harness.seconds(lambda: calls.append(1), repeats=3, warmup=2)
    assert len(times) == 3 and len(calls) == 5 and min(times) >= 0
    harness.print_table(["a", "b"], [["x", 0.12345], ["y", 2]], digits=2)
    assert capsys.readouterr().out.splitlines() == [
        "| a | b |",
        "|---|---|",
        "| x | 0.12 |",
        "| y | 2 |",
    ]
    assert "cores" in harness.machine_line(threads=2) and "2 threads" in harness.machine_line(2)


def test_a_report_reads_back_without_its_run_lines(harness, tmp_path):
    """A resumable benchmark continues from its report: the machine line, date and
    command written beside its rows do not come back as rows."""
    path = tmp_path / "r.json"
    harness.write_report(path, {"RPE1": {"score": 0.5}}, machine="a machine")
    written = json.loads(path.read_text())
    assert written["machine"] == "a machine" and written["RPE1"] == {"score": 0.5}
    assert harness.read_report(path) == {"RPE1": {"score": 0.5}}
    assert harness.read_report(tmp_path / "none.json") == {}
