import pytest
import torch

from cellstack.config import load_config

TINY = [
    "model.backbone.name=resnet18",
    "model.backbone.fpn_channels=16",
    "model.roi.fc_dim=32",
    "model.roi.mask_convs=1",
    "model.roi.mask_dim=16",
    "model.rpn.post_nms_top_n_train=200",
    "model.roi.batch_size_per_image=64",
    # Tests that train check thresholds themselves; the automatic search has its own.
    "train.auto_thresholds=false",
]


@pytest.fixture
def tiny_cfg():
    return load_config(None, TINY)


def two_cells(h=64, w=96):
    """An image with a dark and a bright square cell, and its target."""
    img = torch.full((1, h, w), 0.5)
    img[:, 10:22, 10:30] = 0.2
    img[:, 40:58, 50:70] = 0.8
    masks = torch.zeros(2, h, w, dtype=torch.uint8)
    masks[0, 10:22, 10:30] = 1
    masks[1, 40:58, 50:70] = 1
    target = {
        "boxes": torch.tensor([[10.0, 10, 30, 22], [50, 40, 70, 58]]),
        "classes": torch.tensor([0, 1]),
        "masks": masks,
    }
    return img, target


def random_rpn_outputs(model, image: torch.Tensor, seed: int):
    """``(image_list, anchors, outputs)``: ``model``'s anchors for ``image`` and random
    RPN outputs of their shapes (logits N(0, 1), deltas N(0, 0.3)), for proposal tests
    that need many distinct candidate boxes."""
    from cellstack.modeling.anchors import RPNOutputs

    image_list = model.preprocess([image])
    feats = model.features(image_list)
    anchors = model.level_anchors(image_list, feats)
    g = torch.Generator().manual_seed(seed)
    raw = model.rpn_outputs(feats)
    outputs = RPNOutputs(
        [torch.randn(o.shape, generator=g) for o in raw.objectness],
        [torch.randn(d.shape, generator=g) * 0.3 for d in raw.deltas],
    )
    return image_list, anchors, outputs
