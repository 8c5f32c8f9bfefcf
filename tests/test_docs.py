"""The documentation's code runs."""

from __future__ import annotations


def test_the_api_notebook_runs(base_run, monkeypatch, capsys):
    import runpy
    from pathlib import Path

    notebook = Path(__file__).parents[1] / "docs" / "api_example.py"
    monkeypatch.setattr("sys.argv", [str(notebook), str(base_run)])
    runpy.run_path(str(notebook), run_name="__main__")
    out = capsys.readouterr().out
    assert "Z-stack labels: (3, 160, 224)" in out and "cells per image:" in out
