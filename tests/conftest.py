"""Shared fixtures: small synthetic datasets made once per test session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cellstack.data.synthetic import synthesize


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """9 small (160x224) synthetic images of all three types, plus LIVECell json."""
    out = tmp_path_factory.mktemp("synth")
    synthesize(out, 9, seed=7, shape=(160, 224), livecell=True, progress=False)
    return out


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def random_labels(rng: np.random.Generator, shape=(40, 50), n=12) -> np.ndarray:
    """A label image int32[H, W] of n random non-overlapping rectangles-ish blobs."""
    labels = np.zeros(shape, dtype=np.int32)
    for i in range(1, n + 1):
        y, x = rng.integers(0, shape[0] - 6), rng.integers(0, shape[1] - 6)
        h, w = rng.integers(2, 8), rng.integers(2, 8)
        region = labels[y : y + h, x : x + w]
        region[region == 0] = i
    return labels
