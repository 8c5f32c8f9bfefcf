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
