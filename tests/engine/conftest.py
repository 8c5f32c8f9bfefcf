import pytest

from cellstack.data.synthetic import synthesize


@pytest.fixture(scope="session")
def small_data(tmp_path_factory):
    """6 synthetic 96x112 images (Sartorius layout) for training tests."""
    out = tmp_path_factory.mktemp("train_data")
    synthesize(out, 6, seed=3, shape=(96, 112), progress=False)
    return out
