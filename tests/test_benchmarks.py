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


def test_packed_fields_hold_whole_nuclei_touching_and_cut_by_the_border(tmp_path, monkeypatch):
    """The dense case made of real nuclei (issue 42): every source nucleus the source's
    border cuts is left out, the field is confluent, its nuclei never overlap (one label
    per pixel, each a copied nucleus brighter than the background), the field's border
    cuts some, and a seed gives the same field."""
    import numpy as np
    import tifffile

    from cellstack.data.synthetic import generate_image

    monkeypatch.syspath_prepend(str(BENCH))
    import train_builtin

    source = tmp_path / "source"
    for sub in ("images", "labels"):
        (source / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for k in range(2):
        img = generate_image(rng, "nuclei", (160, 160))
        tifffile.imwrite(source / "images" / f"s{k}.tif", img.image)
        tifffile.imwrite(source / "labels" / f"s{k}.tif", img.labels.astype(np.int32))

    def cut_by_border(labels: np.ndarray) -> np.ndarray:
        edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
        return edge[edge > 0]

    sources = [tifffile.imread(p) for p in sorted((source / "labels").glob("*.tif"))]
    cut = sum(len(cut_by_border(lab)) for lab in sources)
    every = sum(len(np.unique(lab)) - 1 for lab in sources)
    nuclei = train_builtin.whole_nuclei([source])
    assert cut > 0 and 0 < len(nuclei) <= every - cut
    assert all(m.shape == p.shape and m.any() for p, m, _, _ in nuclei)

    image, labels = train_builtin.packed_field(np.random.default_rng(3), nuclei, size=128)
    assert image.shape == labels.shape == (128, 128) and image.dtype == np.uint8
    assert (labels > 0).mean() > 0.5  # confluent
    ids = np.unique(labels[labels > 0])
    assert np.array_equal(ids, np.arange(1, len(ids) + 1)) and len(ids) >= 10
    assert len(cut_by_border(labels)) >= 4  # nuclei cut as a camera's field cuts them
    assert np.median(image[labels > 0]) > np.median(image[labels == 0]) + 20
    again = train_builtin.packed_field(np.random.default_rng(3), nuclei, size=128)
    assert np.array_equal(again[1], labels) and np.array_equal(again[0], image)
