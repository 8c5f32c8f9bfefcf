"""Fixtures for the bad-input and fault probes: a tiny trained run, small data, and a
``cli`` helper that runs the real command line and checks the one-line-error contract.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from cellstack.cli import main


@dataclass
class Outcome:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys):
    """``cli(*args)`` runs ``cellstack args...`` in-process and returns its Outcome.

    ``cli.fails(*args, match=...)`` also asserts the error contract: exit status 2, one
    line on stderr starting ``error:`` that contains ``match``, no traceback.
    """

    def run(*args) -> Outcome:
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return Outcome(code, captured.out, captured.err)

    def fails(*args, match: str) -> Outcome:
        res = run(*args)
        lines = [line for line in res.err.splitlines() if line.startswith("error:")]
        assert res.code == 2, f"exit {res.code}, stderr: {res.err}"
        assert len(lines) == 1, res.err
        assert "Traceback" not in res.err
        assert match in lines[0], f"{match!r} not in {lines[0]!r}"
        return res

    run.fails = fails
    return run


def checksums(root: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``root``."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def data(base_data, tmp_path) -> Path:
    """A private copy of the small dataset (tests may damage it)."""
    return Path(shutil.copytree(base_data, tmp_path / "data"))


@pytest.fixture
def run(base_run, tmp_path) -> Path:
    """A private copy of the finished run."""
    return Path(shutil.copytree(base_run, tmp_path / "run"))


@pytest.fixture
def images(base_data, tmp_path) -> Path:
    """A folder of two input images."""
    dst = tmp_path / "images"
    dst.mkdir()
    for p in sorted((base_data / "train").glob("*.png"))[:2]:
        shutil.copy(p, dst / p.name)
    return dst


class Payload:
    """Pickles as a call of ``os.system``: what a malicious model file carries."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))
