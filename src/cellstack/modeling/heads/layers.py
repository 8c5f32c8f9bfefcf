"""The RoI heads' layers: the box head (shared FCs, class logits, box deltas) and the
mask head (convs, a 2x deconvolution, per-class logits)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def inference_layout(x: torch.Tensor) -> torch.Tensor:
    """``x`` (float[N, C, H, W]) in channels-last memory on CPU, as is: same values.

    oneDNN's CPU convolutions run channels-last faster, and every later conv follows
    its input's layout: ``nuclei`` on 512x512 nuclei images, 2 cores, ran 1.3-1.5x faster
    end to end with identical labels (``benchmarks/speed.py folder``). Only inference
    asks for it: training keeps the default layout that its optimizer state and DDP's
    gradient buckets were made for."""
    if x.device.type != "cpu" or x.dim() != 4:
        return x
    return x.contiguous(memory_format=torch.channels_last)


class BoxHead(nn.Module):
    """Two shared FC layers, then class logits and box deltas.

    Output of ``forward``: ``(logits float[K, C+1], deltas float[K, R*4])`` where class 0
    is background and ``R`` is ``C+1`` (class-specific regression) or 1 (class-agnostic).
    """

    def __init__(
        self,
        in_channels: int,
        pool: int,
        fc_dim: int,
        num_classes: int,
        *,
        class_agnostic: bool = False,
    ) -> None:
        super().__init__()
        self.class_agnostic = class_agnostic
        self.fc1 = nn.Linear(in_channels * pool * pool, fc_dim)
        self.fc2 = nn.Linear(fc_dim, fc_dim)
        self.cls_score = nn.Linear(fc_dim, num_classes + 1)
        self.bbox_pred = nn.Linear(fc_dim, 4 if class_agnostic else (num_classes + 1) * 4)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        for layer in (self.cls_score, self.bbox_pred):
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.relu(self.fc2(F.relu(self.fc1(x.flatten(1)))))
        return self.cls_score(x), self.bbox_pred(x)


class MaskHead(nn.Module):
    """3x3 convs, a 2x deconvolution and per-class 1x1 logits: [K, C, 2S, 2S].

    ``forward(x, previous=None)`` returns ``(logits, feature)`` where ``feature`` is the
    output of the convolutions (before upsampling). Mask R-CNN and Cascade ignore it and
    never pass ``previous``; HTC's information flow (:class:`~cellstack.modeling.heads.
    htc.FlowMaskHead`) feeds it to the next stage.
    """

    def __init__(
        self,
        in_channels: int,
        num_convs: int,
        num_classes: int,
        dim: int = 256,
        *,
        group_norm: bool = False,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(num_convs):
            layers.append(nn.Conv2d(in_channels if i == 0 else dim, dim, 3, padding=1))
            if group_norm:  # per-RoI statistics: no dependence on the batch
                layers.append(nn.GroupNorm(math.gcd(32, dim), dim))
            layers.append(nn.ReLU())
        self.convs = nn.Sequential(*layers)
        self.feature_channels = dim if num_convs else in_channels
        self.upsample = nn.ConvTranspose2d(self.feature_channels, dim, 2, stride=2)
        self.logits = nn.Conv2d(dim, num_classes, 1)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(
        self, x: torch.Tensor, previous: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if previous is not None:
            raise ValueError("this mask head takes no previous-stage features")
        feature = self.convs(x)
        return self.logits(F.relu(self.upsample(feature))), feature
