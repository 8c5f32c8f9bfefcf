"""Multi-scale RoIAlign with ``aligned=True``.

torchvision's ``MultiScaleRoIAlign`` calls ``roi_align(..., aligned=False)``, which
samples half a pixel off: a box and its mirror image then see features that are not
mirrors of each other, which cost the original solution accuracy under flip TTA. We
always align, and map RoIs to levels as mmdet does (the original's setting): a RoI of
scale ``sqrt(w * h)`` goes to level ``floor(log2(scale / finest_scale))`` clamped to the
available levels, so RoIs under ``2 * finest_scale`` px use the finest map.

Training on CPU pools through :func:`roi_align_matrix` instead of torchvision's kernel:
RoIAlign is linear in the features, ``pooled = A @ features`` with ``A`` a sparse
matrix of bilinear weights (the same samples and weights as ``roi_align(aligned=True)``
with adaptive sampling, to rounding), so its backward is ``A.T @ grad``: two sparse
products, each weight applied to a whole row of channels (contiguous in channels-last
features), where torchvision's CPU backward scatters every sample of every RoI channel
by channel (11% of a Mask R-CNN training step, ``benchmarks/speed.py train
--profile``; pooling alone is 3-4x faster, docs/benchmarks.md). Without gradients, and
on GPUs, torchvision's kernel runs.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import roi_align


class AlignedMultiScaleRoIAlign(nn.Module):
    """Pool RoI features from the FPN levels.

    Args:
        strides: stride of each pooled level, finest first (e.g. (2, 4, 8, 16)).
        output_size: side of the pooled square.
        finest_scale: see the module docstring (mmdet default 56).
        sampling_ratio: samples per bin side (0 = adaptive, mmdet's default).
    """

    def __init__(
        self,
        strides: tuple[int, ...],
        output_size: int,
        *,
        finest_scale: float = 56.0,
        sampling_ratio: int = 0,
    ) -> None:
        super().__init__()
        self.strides = tuple(strides)
        self.output_size = output_size
        self.finest_scale = finest_scale
        self.sampling_ratio = sampling_ratio

    def map_levels(self, boxes: torch.Tensor) -> torch.Tensor:
        """int64[K] level index of each box float32[K, 4] xyxy."""
        wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=1e-6)
        scale = torch.sqrt(wh[:, 0] * wh[:, 1])
        level = torch.floor(torch.log2(scale / self.finest_scale + 1e-6))
        return level.clamp(0, len(self.strides) - 1).to(torch.int64)

    def forward(self, features: list[torch.Tensor], boxes: list[torch.Tensor]) -> torch.Tensor:
        """Pool features for every box.

        Args:
            features: one float[B, C, H_l, W_l] map per level, finest first.
            boxes: per image, float[K_i, 4] xyxy in input-image pixels.

        Returns:
            float[sum K_i, C, S, S], boxes in image order.
        """
        rois = torch.cat(
            [torch.cat([b.new_full((len(b), 1), i), b], dim=1) for i, b in enumerate(boxes)]
        )
        first = features[0]
        out = first.new_zeros((len(rois), first.shape[1], self.output_size, self.output_size))
        if len(rois) == 0:
            return out
        levels = self.map_levels(rois[:, 1:])
        for level, (feat, stride) in enumerate(zip(features, self.strides, strict=False)):
            idx = torch.nonzero(levels == level).squeeze(1)
            if len(idx) == 0:
                continue
            if _as_matrix(feat, self.sampling_ratio):
                pooled = matrix_roi_align(feat, rois[idx], self.output_size, 1.0 / stride)
            else:
                pooled = roi_align(
                    feat,
                    rois[idx],
                    self.output_size,
                    spatial_scale=1.0 / stride,
                    sampling_ratio=self.sampling_ratio,
                    aligned=True,
                )
            out[idx] = pooled.to(out.dtype)
        return out


def _as_matrix(feat: torch.Tensor, sampling_ratio: int) -> bool:
    """Whether to pool ``feat`` with :func:`matrix_roi_align`: on CPU, when gradients
    flow (training), with adaptive sampling (the only kind the matrix builds)."""
    return (
        feat.device.type == "cpu"
        and feat.requires_grad
        and torch.is_grad_enabled()
        and sampling_ratio == 0
    )


def _axis_samples(
    start: torch.Tensor, length: torch.Tensor, size: int, grid: torch.Tensor, g_max: int, n: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bilinear taps along one axis of ``size`` bins for K RoIs: ``(index int64[K, size,
    2 * g_max], weight float[K, size, 2 * g_max])``, the low then the high neighbour of
    each of ``g_max`` samples per bin, weights divided by the RoI's ``grid`` samples per
    bin; samples past a RoI's own ``grid``, or outside ``[-1, n]``, weigh 0 (torchvision's
    rules: clamp below 0, and from ``n - 1`` on both neighbours are the last pixel)."""
    g = torch.arange(g_max, dtype=start.dtype, device=start.device)
    i = torch.arange(size, dtype=start.dtype, device=start.device)
    bin_len = (length / size)[:, None, None]
    v = (
        start[:, None, None]
        + i[None, :, None] * bin_len
        + (g + 0.5) * bin_len / grid[:, None, None]
    )
    valid = (g < grid[:, None, None]) & (v >= -1.0) & (v <= n)
    v = v.clamp(min=0)
    low = v.floor()
    top = low >= n - 1
    low = torch.where(top, torch.full_like(low, n - 1), low)
    frac = torch.where(top, torch.zeros_like(v), v - low)
    low_i = low.to(torch.int64)
    high_i = torch.where(top, low_i, low_i + 1)
    w = valid.to(v.dtype) / grid[:, None, None].clamp(min=1)
    return torch.cat([low_i, high_i], -1), torch.cat([(1 - frac) * w, frac * w], -1)


def roi_align_matrix(
    rois: torch.Tensor, shape: tuple[int, int, int], output_size: int, spatial_scale: float
) -> torch.Tensor:
    """The sparse matrix of ``roi_align(..., sampling_ratio=0, aligned=True)``.

    Args:
        rois: float[K, 5] ``(image index, x1, y1, x2, y2)`` in input pixels.
        shape: ``(B, H, W)`` of the feature map.
        output_size: S, the side of each pooled square.
        spatial_scale: feature pixels per input pixel (1 / stride).

    Returns:
        A sparse COO float[K * S * S, B * H * W] (uncoalesced): row ``(k * S + y) * S + x``
        holds bin ``(y, x)`` of RoI k as weights over the flattened ``(b, h, w)`` pixels.
        Rows of RoIs with the same adaptive sample count are built together, so no RoI
        carries padding samples of a larger one.
    """
    n_images, height, width = shape
    s = output_size
    x1 = rois[:, 1] * spatial_scale - 0.5
    y1 = rois[:, 2] * spatial_scale - 0.5
    roi_w = rois[:, 3] * spatial_scale - 0.5 - x1
    roi_h = rois[:, 4] * spatial_scale - 0.5 - y1
    # Adaptive sampling: ceil(RoI side / S) samples per bin side (0 for an empty RoI).
    grid_h = torch.ceil(roi_h / s).clamp(min=0)
    grid_w = torch.ceil(roi_w / s).clamp(min=0)
    # RoIs are built in groups of one larger grid side, so few taps are padding.
    group = torch.maximum(grid_h, grid_w).to(torch.int64)
    rows, cols, vals = [], [], []
    image = rois[:, 0].to(torch.int64)
    for g_max in torch.unique(group).tolist():
        k = torch.nonzero(group == g_max).squeeze(1)
        if g_max == 0:
            continue  # empty RoIs pool to zeros
        yi, yw = _axis_samples(y1[k], roi_h[k], s, grid_h[k], g_max, height)
        xi, xw = _axis_samples(x1[k], roi_w[k], s, grid_w[k], g_max, width)
        # [K', S, S, taps_y, taps_x]: bin (y, x) of each RoI, each pair of taps.
        base = (image[k] * height)[:, None, None, None, None]
        col = (base + yi[:, :, None, :, None]) * width + xi[:, None, :, None, :]
        val = (yw[:, :, None, :, None] * xw[:, None, :, None, :]).reshape(-1)
        # Only non-zero weights are kept; a kept entry's row follows from its position.
        at = torch.nonzero(val).squeeze(1)
        taps = col.shape[-1] * col.shape[-2]
        rows.append(k[at // (s * s * taps)] * (s * s) + (at // taps) % (s * s))
        cols.append(col.reshape(-1)[at])
        vals.append(val[at])
    n_rows, n_cols = len(rois) * s * s, n_images * height * width
    if not rows:
        index = torch.zeros((2, 0), dtype=torch.int64, device=rois.device)
        values = rois.new_zeros(0)
    else:
        index = torch.stack([torch.cat(rows), torch.cat(cols)])
        values = torch.cat(vals)
    # The indices are in range by construction: torch's invariant checks would only cost.
    return torch.sparse_coo_tensor(index, values, (n_rows, n_cols), check_invariants=False)


class _SparseProduct(torch.autograd.Function):
    """``matrix @ dense`` with the gradient ``matrix.T @ grad`` for ``dense`` only."""

    @staticmethod
    def forward(ctx, dense: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
        ctx.matrix = matrix
        return torch.sparse.mm(matrix, dense)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return torch.sparse.mm(ctx.matrix.t(), grad.contiguous()), None


def matrix_roi_align(
    feat: torch.Tensor, rois: torch.Tensor, output_size: int, spatial_scale: float
) -> torch.Tensor:
    """``roi_align(feat, rois, output_size, spatial_scale, 0, aligned=True)`` as a sparse
    product (see the module docstring): float[K, C, S, S] (channels-last memory) from
    ``feat`` float[B, C, H, W] and ``rois`` float[K, 5]."""
    n, c, h, w = feat.shape
    matrix = roi_align_matrix(rois.detach(), (n, h, w), output_size, spatial_scale)
    # (B*H*W, C): a view of channels-last features (a copy otherwise).
    flat = feat.permute(0, 2, 3, 1).reshape(n * h * w, c)
    pooled = _SparseProduct.apply(flat, matrix.to(feat.dtype))
    return pooled.view(len(rois), output_size, output_size, c).permute(0, 3, 1, 2)
