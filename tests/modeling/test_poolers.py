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


def _rois(generator: torch.Generator, n: int, width: float, height: float) -> torch.Tensor:
    """float[n, 5] RoIs over 2 images: inside, across and beyond the borders, tiny, and
    the degenerate ones (zero and negative sides)."""
    centre = torch.rand(n, 2, generator=generator) * torch.tensor([width, height]) * 1.2 - 5
    side = torch.rand(n, 2, generator=generator) ** 2 * 90 + 0.3
    boxes = torch.cat([centre - side / 2, centre + side / 2], 1)
    boxes[:3] = torch.tensor([[10.0, 10, 10, 10], [30, 20, 25, 28], [-50, -50, -20, -30]])
    image = torch.randint(0, 2, (n, 1), generator=generator).float()
    return torch.cat([image, boxes], 1)


def test_matrix_roi_align_matches_torchvision_and_its_gradient():
    from torchvision.ops import roi_align

    from cellstack.modeling.poolers import matrix_roi_align

    generator = torch.Generator().manual_seed(0)
    feat = torch.randn(2, 6, 26, 35, generator=generator)
    feat = feat.contiguous(memory_format=torch.channels_last).requires_grad_()
    rois = _rois(generator, 300, 35 * 4, 26 * 4)
    for size in (7, 14):
        ref = roi_align(feat, rois, size, 0.25, 0, aligned=True)
        out = matrix_roi_align(feat, rois, size, 0.25)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
        grad = torch.randn(ref.shape, generator=generator)
        (want,) = torch.autograd.grad(ref, feat, grad)
        (got,) = torch.autograd.grad(out, feat, grad)
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)


def test_training_pools_through_the_matrix_and_predicting_through_torchvision():
    generator = torch.Generator().manual_seed(1)
    pooler = AlignedMultiScaleRoIAlign((4, 8), 7, finest_scale=8)  # both levels pool
    feats = [torch.randn(2, 3, 24, 32, generator=generator), torch.randn(2, 3, 12, 16)]
    boxes = [_rois(generator, 40, 128, 96)[:, 1:] for _ in range(2)]
    with torch.no_grad():
        plain = pooler(feats, boxes)  # torchvision's kernel
    trained = [f.clone().requires_grad_() for f in feats]
    pooled = pooler(trained, boxes)  # the sparse product
    torch.testing.assert_close(pooled, plain, atol=1e-5, rtol=1e-5)
    pooled.sum().backward()
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in trained)
