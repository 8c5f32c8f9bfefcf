"""timm encoders with a feature pyramid (FPN).

The encoder is any timm model with ``features_only`` support; we take its four feature
maps at reductions 4, 8, 16, 32 (C2..C5) and add an FPN with one extra max-pooled level.
With ``stem_stride=1`` the stride of the encoder's first convolution is removed, so the
maps come at reductions 2, 4, 8, 16 (and 32 for the extra level): twice the resolution
for small cells without resizing the image, the original solution's key trick.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from cellstack.errors import CellstackError

#: Backbones we document and test; any timm model with features_only also works.
KNOWN_BACKBONES = (
    "resnet18",
    "resnet50",
    "resnext101_32x4d",
    "resnext101_64x4d",
    "efficientnet_b0",
    "efficientnet_b4",
    "efficientnet_b5",
    "efficientnet_b6",
)
#: ImageNet statistics (the timm encoders' training normalisation), RGB.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _create_encoder(name: str, pretrained: bool, pretrained_path: str | None) -> nn.Module:
    import timm

    from cellstack.modeling.imagenet import PACKAGED, load_packaged

    if pretrained and pretrained_path is None and name in PACKAGED:
        # Offline: the weights come from an installed package, not from the hub.
        encoder = timm.create_model(name, features_only=True, out_indices=(1, 2, 3, 4))
        load_packaged(encoder, name)
        return encoder
    kwargs = {"features_only": True, "out_indices": (1, 2, 3, 4)}
    if pretrained_path is not None:
        path = Path(pretrained_path)
        if not path.is_file():
            raise CellstackError(f"{path}: backbone weights file not found")
        kwargs["pretrained_cfg_overlay"] = {"file": str(path)}
        pretrained = True
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except RuntimeError as exc:
        if "Unknown model" in str(exc) or "Invalid model" in str(exc):
            raise CellstackError(f"unknown backbone {name!r} (any timm model name)") from None
        if pretrained_path is not None:
            raise CellstackError(
                f"{pretrained_path}: cannot load weights for {name} ({exc})"
            ) from None
        raise
    except Exception as exc:
        if not pretrained:
            raise
        raise CellstackError(
            f"cannot download ImageNet weights for {name} ({type(exc).__name__}); offline? "
            "Set model.backbone.pretrained_path=FILE or model.backbone.pretrained=false"
        ) from None


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups (fewer when ``channels`` is not a multiple of 32), as
    He et al. used to train detectors from scratch: its statistics are per sample, so
    batches of one or two crops normalise as well as large ones."""
    return nn.GroupNorm(math.gcd(32, channels), channels)


def batch_to_group_norm(module: nn.Module, name: str) -> nn.Module:
    """``module`` with every ``nn.BatchNorm2d`` replaced by :func:`group_norm`, keeping
    its affine weights (so ImageNet weights still initialise the scales and shifts).
    timm's ``BatchNormAct2d`` (EfficientNets) becomes GroupNorm followed by the same
    dropout and activation.

    Raises:
        CellstackError: the encoder uses another normalisation layer, which cannot be
            swapped faithfully.
    """
    from timm.layers import BatchNormAct2d

    for child_name, child in module.named_children():
        if type(child) in (nn.BatchNorm2d, BatchNormAct2d):
            gn = group_norm(child.num_features)
            with torch.no_grad():
                gn.weight.copy_(child.weight)
                gn.bias.copy_(child.bias)
            if type(child) is BatchNormAct2d:
                gn = nn.Sequential(gn, child.drop, child.act)
            setattr(module, child_name, gn)
        elif isinstance(child, nn.modules.batchnorm._BatchNorm):
            raise CellstackError(
                f"model.norm=group: {name} uses {type(child).__name__}, which cannot be "
                "replaced by GroupNorm; use a ResNet/ResNeXt backbone or model.norm=batch"
            )
        else:
            batch_to_group_norm(child, name)
    return module


class TimmFPN(nn.Module):
    """A timm encoder with an FPN.

    Args:
        name: timm model name.
        pretrained: load ImageNet weights through timm.
        pretrained_path: local encoder weights (implies pretrained).
        stem_stride: 1 removes the first convolution's stride (doubles resolution).
        out_channels: FPN width.
        freeze_bn: freeze batch-norm statistics and parameters.
        norm: "batch" keeps the encoder's BatchNorm and a plain FPN; "group" swaps the
            encoder's BatchNorm for GroupNorm and adds GroupNorm to the FPN convs.

    Attributes:
        strides: tuple[int, ...] stride of each output level, e.g. (2, 4, 8, 16, 32).
        out_channels: channels of every output level.
        level_names: keys of the output dict, finest first ("0".."3", "pool").
    """

    def __init__(
        self,
        name: str,
        *,
        pretrained: bool = False,
        pretrained_path: str | None = None,
        stem_stride: int = 1,
        out_channels: int = 256,
        freeze_bn: bool = False,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        self.body = _create_encoder(name, pretrained, pretrained_path)
        if norm == "group":
            batch_to_group_norm(self.body, name)
        reductions = list(self.body.feature_info.reduction())
        if stem_stride == 1:
            stem = next(m for m in self.body.modules() if isinstance(m, nn.Conv2d))
            if stem.stride != (2, 2):
                raise CellstackError(
                    f"{name}: its first convolution has stride {stem.stride}, not 2"
                )
            stem.stride = (1, 1)
            reductions = [r // 2 for r in reductions]
        self.fpn = FeaturePyramidNetwork(
            list(self.body.feature_info.channels()),
            out_channels,
            extra_blocks=LastLevelMaxPool(),
            norm_layer=group_norm if norm == "group" else None,
        )
        self.strides = (*reductions, reductions[-1] * 2)
        self.out_channels = out_channels
        self.level_names = ("0", "1", "2", "3", "pool")
        self.freeze_bn = freeze_bn
        if freeze_bn:
            for m in self.body.modules():
                if isinstance(m, nn.BatchNorm2d):
                    for p in m.parameters():
                        p.requires_grad_(False)

    def train(self, mode: bool = True) -> TimmFPN:
        super().train(mode)
        if self.freeze_bn:  # frozen BN keeps its running statistics in training too
            for m in self.body.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        return self

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        """float32[B, 3, H, W] normalised, H and W divisible by the largest stride ->
        ``{"0": float32[B, C, H/s0, W/s0], ..., "pool": ...}``."""
        feats = self.body(x)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats)))
