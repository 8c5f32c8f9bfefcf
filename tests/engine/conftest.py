import pytest

from cellstack.data.synthetic import synthesize
from tests.modeling.conftest import TINY

#: A tiny model on small crops: training tests take seconds.
FAST = [
    *TINY,
    "data.crop_size=64",
    "train.batch_size=2",
    "train.num_workers=0",
    "train.log_every=1",
    "train.lr=0.001",
    "model.rpn.pre_nms_top_n_test=200",
    "model.rpn.post_nms_top_n_test=100",
    "predict.max_detections=50",
]


@pytest.fixture(scope="session")
def small_data(tmp_path_factory):
    """6 synthetic 96x112 images (Sartorius layout) for training tests."""
    out = tmp_path_factory.mktemp("train_data")
    synthesize(out, 6, seed=3, shape=(96, 112), progress=False)
    return out
