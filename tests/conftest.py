"""Shared fixtures: small synthetic datasets made once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings

from cellstack.config import load_config
from cellstack.data.synthetic import synthesize
from tests.modeling.conftest import TINY

# The property-based probes (tests/reliability/test_fuzz.py): a few hundred examples a
# reader in `make test`, thousands from benchmarks/fuzz.py (HYPOTHESIS_PROFILE=long).
# No deadline (a shared CI machine's pauses are not the bound: each reader's own input
# limits keep an example fast) and no example database written into the checkout.
settings.register_profile("default", max_examples=200, deadline=None, database=None)
settings.register_profile("long", max_examples=5000, deadline=None, database=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

#: A tiny model that trains in seconds on small images: the suite's one fast setting.
FAST = [
    *TINY,
    "data.crop_size=64",
    "train.batch_size=2",
    "train.num_workers=0",
    "train.log_every=1",
    "train.lr=0.001",
    "model.rpn.pre_nms_top_n_test=100",
    "model.rpn.post_nms_top_n_test=50",
    "predict.max_detections=20",
]


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


@pytest.fixture(scope="session")
def base_data(tmp_path_factory) -> Path:
    """4 synthetic 80x96 images."""
    out = tmp_path_factory.mktemp("rel_data")
    synthesize(out, 4, seed=5, shape=(80, 96), progress=False)
    return out


@pytest.fixture(scope="session")
def base_run(base_data, tmp_path_factory) -> Path:
    """A finished 2-iteration run of a tiny model."""
    from cellstack.engine.trainer import train

    run = tmp_path_factory.mktemp("rel_run") / "run"
    cfg = load_config(None, [*FAST, "train.iterations=2", "train.eval_every=0"])
    train(cfg, base_data, run, progress=False)
    return run


@pytest.fixture(scope="session")
def small_data(tmp_path_factory):
    """6 synthetic 96x112 images (Sartorius layout) for training tests."""
    out = tmp_path_factory.mktemp("train_data")
    synthesize(out, 6, seed=3, shape=(96, 112), progress=False)
    return out
