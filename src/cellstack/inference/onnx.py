"""A detector whose networks run in onnxruntime (``pip install 'cellstack[onnx]'``).

An exported model (``cellstack export MODEL OUT.onnx --format onnx``) is one ONNX graph
holding every learnt layer of a Mask R-CNN or Cascade detector as independent branches,
each with its own inputs and outputs:

- ``image`` float32[B, 3, H, W] (normalised and padded, as
  :meth:`~cellstack.modeling.detector.CellDetector.preprocess` gives it) ->
  ``feature{k}``: the FPN levels, finest first;
- ``level{k}`` (the FPN levels) -> ``objectness{k}``, ``deltas{k}``: the RPN head;
- ``box_features`` float32[K, C, P, P] (RoIAligned) -> ``class_logits{s}``,
  ``box_deltas{s}`` for every stage ``s``;
- ``mask_features`` float32[K, C, M, M] -> ``mask_logits{s}`` for every stage with a
  mask head.

Each call asks for one branch's outputs and feeds empty tensors to the other inputs
(onnxruntime computes only what the asked outputs need). What lies between the
branches (anchors, proposal and box selection, RoIAlign, post-processing) is
cellstack's own code, the same as for a PyTorch model, so both give the same cells.
The run's config, class names, thresholds and object statistics travel in the
graph's metadata (:data:`META_KEYS`).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import nn

from cellstack.errors import CellstackError

#: Metadata keys of an exported model (JSON text each).
META_KEYS = (
    "cellstack.config",
    "cellstack.class_names",
    "cellstack.thresholds",
    "cellstack.data_stats",
    "cellstack.versions",
)
#: Architectures whose learnt layers are plain branches (HTC's heads feed one another).
ARCHS = ("maskrcnn", "cascade")
#: The ONNX operator set exported to.
OPSET = 17


def require_onnxruntime() -> Any:
    """onnxruntime, or a one-line error naming the extra."""
    try:
        import onnxruntime
    except ImportError:
        raise CellstackError(
            "ONNX models run in onnxruntime: pip install 'cellstack[onnx]'"
        ) from None
    return onnxruntime


class OrtGraph:
    """An exported model's onnxruntime session: :meth:`run` one branch.

    Args:
        path: the ``.onnx`` file. Its intra-op threads are torch's, so both back ends
            use what the user gave.
    """

    def __init__(self, path: Path) -> None:
        ort = require_onnxruntime()
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        # PyTorch runs between the branches (RoIAlign, selection): threads that spin
        # waiting for the next branch would take its cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own types for a bad file
            raise CellstackError(f"{path}: not a model onnxruntime can load ({exc})") from None
        self.path = path
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        # Empty tensors of each input's rank and fixed sizes, fed to the branches not run.
        # (batch 0; a free spatial size 64, which every stride divides).
        self._empty = {
            i.name: np.zeros(
                [0, *(d if isinstance(d, int) else 64 for d in i.shape[1:])], np.float32
            )
            for i in self.session.get_inputs()
        }

    def run(self, outputs: list[str], **inputs: torch.Tensor) -> list[torch.Tensor]:
        """The ``outputs`` of the branch fed by ``inputs`` (float32 tensors)."""
        feed = dict(self._empty)
        device = torch.device("cpu")
        for name, tensor in inputs.items():
            feed[name] = tensor.detach().float().contiguous().cpu().numpy()
            device = tensor.device
        return [torch.from_numpy(a).to(device) for a in self.session.run(outputs, feed)]


class OrtBackbone(nn.Module):
    """The encoder + FPN branch, with the attributes the detector reads
    (``strides``, ``out_channels``, ``level_names``)."""

    def __init__(self, graph: OrtGraph, template: nn.Module) -> None:
        super().__init__()
        self.graph = graph
        self.strides = template.strides
        self.out_channels = template.out_channels
        self.level_names = template.level_names

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        names = [f"feature{k}" for k in range(len(self.level_names))]
        return dict(zip(self.level_names, self.graph.run(names, image=x), strict=True))


class OrtRPNHead(nn.Module):
    """The RPN head branch: per level objectness and box deltas."""

    def __init__(self, graph: OrtGraph, template: nn.Module, levels: int) -> None:
        super().__init__()
        self.graph = graph
        self.levels = levels
        # What the detector reads of the head: anchors per location.
        self.cls_logits = SimpleNamespace(out_channels=template.cls_logits.out_channels)

    def forward(self, x: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        n = self.levels
        names = [f"objectness{k}" for k in range(n)] + [f"deltas{k}" for k in range(n)]
        out = self.graph.run(names, **{f"level{k}": f for k, f in enumerate(x)})
        return out[:n], out[n:]


class OrtBoxHead(nn.Module):
    """Stage ``stage``'s box head branch: ``(class logits, box deltas)``."""

    def __init__(self, graph: OrtGraph, template: nn.Module, stage: int) -> None:
        super().__init__()
        self.graph = graph
        self.stage = stage
        self.class_agnostic = template.class_agnostic

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.stage
        logits, deltas = self.graph.run([f"class_logits{s}", f"box_deltas{s}"], box_features=x)
        return logits, deltas


class OrtMaskHead(nn.Module):
    """Stage ``stage``'s mask head branch: ``(mask logits, None)``."""

    def __init__(self, graph: OrtGraph, stage: int) -> None:
        super().__init__()
        self.graph = graph
        self.stage = stage

    def forward(
        self, x: torch.Tensor, previous: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, None]:
        (logits,) = self.graph.run([f"mask_logits{self.stage}"], mask_features=x)
        return logits, None


def read_metadata(graph: OrtGraph) -> dict[str, Any]:
    """The exported run's ``config``, ``class_names``, ``thresholds``, ``data_stats``
    and ``versions`` from the graph's metadata.

    Raises:
        CellstackError: a key is missing or is not JSON (not a cellstack export).
    """
    out = {}
    for key in META_KEYS:
        text = graph.metadata.get(key)
        if text is None:
            raise CellstackError(
                f"{graph.path}: not a cellstack model (no {key} in its metadata); export "
                "one with cellstack export MODEL OUT.onnx --format onnx"
            )
        try:
            out[key.removeprefix("cellstack.")] = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CellstackError(f"{graph.path}: metadata {key} is not JSON ({exc})") from None
    return out


def attach(model: nn.Module, graph: OrtGraph) -> nn.Module:
    """``model`` (a CellDetector of the exported architecture, weights unread) with its
    learnt layers replaced by the graph's branches; returns it."""
    levels = len(model.backbone.level_names)
    model.rpn.head = OrtRPNHead(graph, model.rpn.head, levels)
    model.backbone = OrtBackbone(graph, model.backbone)
    for s, stage in enumerate(model.roi_heads.stages):
        stage.box_head = OrtBoxHead(graph, stage.box_head, s)
        if stage.mask_head is not None:
            stage.mask_head = OrtMaskHead(graph, s)
    return model
