import torch

from cellstack.modeling.poolers import AlignedMultiScaleRoIAlign


def test_levels_follow_mmdet_finest_scale():
    pooler = AlignedMultiScaleRoIAlign((2, 4, 8, 16), 7, finest_scale=56)
    boxes = torch.tensor(
        [[0, 0, 20, 20], [0, 0, 111, 111], [0, 0, 113, 113], [0, 0, 300, 300], [0, 0, 2000, 2000]],
        dtype=torch.float32,
    )
    assert pooler.map_levels(boxes).tolist() == [0, 0, 1, 2, 3]


def test_flipped_image_gives_flipped_roi_features():
    # The original lost accuracy to a half-pixel shift here; aligned=True fixes it.
    torch.manual_seed(0)
    feat = torch.rand(1, 4, 32, 48)
    pooler = AlignedMultiScaleRoIAlign((2,), 7)
    width = 48 * 2
    box = torch.tensor([[13.0, 7.0, 41.5, 30.0]])
    mirrored = torch.tensor([[width - 41.5, 7.0, width - 13.0, 30.0]])
    a = pooler([feat], [box])
    b = pooler([feat.flip(-1)], [mirrored])
    torch.testing.assert_close(a, b.flip(-1))


def test_empty_boxes():
    pooler = AlignedMultiScaleRoIAlign((2, 4), 5)
    out = pooler([torch.rand(2, 3, 8, 8), torch.rand(2, 3, 4, 4)], [torch.zeros(0, 4)] * 2)
    assert out.shape == (0, 3, 5, 5)
