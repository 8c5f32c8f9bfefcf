"""``cellstack export``: a trained model (a run, a built-in, a tuned folder) as one file
another runtime loads. ``onnx``: the graph :mod:`cellstack.inference.onnx` describes,
with the run's config, class names, thresholds and object statistics in its metadata;
``cellstack predict OUT.onnx`` and ``Segmenter.load("OUT.onnx")`` run it in onnxruntime.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import nn

from cellstack.config import config_to_dict
from cellstack.errors import CellstackError
from cellstack.fileio import atomic_path
from cellstack.inference.onnx import ARCHS, OPSET
from cellstack.inference.sources import load_source
from cellstack.modeling.detector import CellDetector

#: What ``cellstack export --format`` writes.
FORMATS = ("onnx",)


class _Branches(nn.Module):
    """Every learnt layer of a detector as independent branches (the graph's layout:
    :mod:`cellstack.inference.onnx`)."""

    def __init__(self, model: CellDetector) -> None:
        super().__init__()
        self.model = model
        self.levels = len(model.backbone.level_names)

    def forward(self, image, *rest):
        levels, box_x, mask_x = rest[: self.levels], rest[self.levels], rest[self.levels + 1]
        features = tuple(self.model.backbone(image).values())
        objectness, deltas = self.model.rpn.head(list(levels))
        heads = []
        for stage in self.model.roi_heads.stages:
            heads += list(stage.box_head(box_x))
            if stage.mask_head is not None:
                heads.append(stage.mask_head(mask_x)[0])
        return (*features, *objectness, *deltas, *heads)


def _names(model: CellDetector) -> tuple[list[str], list[str]]:
    """The graph's input and output names, in :class:`_Branches`' order."""
    n = len(model.backbone.level_names)
    inputs = ["image", *(f"level{k}" for k in range(n)), "box_features", "mask_features"]
    outputs = [f"feature{k}" for k in range(n)]
    outputs += [f"objectness{k}" for k in range(n)] + [f"deltas{k}" for k in range(n)]
    for s, stage in enumerate(model.roi_heads.stages):
        outputs += [f"class_logits{s}", f"box_deltas{s}"]
        if stage.mask_head is not None:
            outputs.append(f"mask_logits{s}")
    return inputs, outputs


def export_onnx(source: str | Path, out: str | Path, overrides: tuple[str, ...] = ()) -> Path:
    """Write ``source`` (a run folder, a built-in's name or a tuned model folder; with
    ``predict.*`` ``overrides``) as an ONNX file at ``out``, whole or not at all.

    Raises:
        CellstackError: an ensemble or CV folder (export one model), an architecture
            whose heads feed one another (HTC), or the ``onnx`` package missing.
    """
    try:
        import onnx
    except ImportError:
        raise CellstackError(
            "ONNX export needs the onnx package: pip install 'cellstack[onnx]'"
        ) from None
    from cellstack.modeling.builtin import resolve_run
    from cellstack.modeling.runfolder import read_data_stats, versions

    src = load_source(source, overrides)
    if not isinstance(src.model, CellDetector):
        raise CellstackError(
            f"{source}: an ensemble; export each of its models (one run, built-in or "
            "tuned folder at a time)"
        )
    if src.cfg.model.arch not in ARCHS:
        raise CellstackError(
            f"{source}: model.arch={src.cfg.model.arch} cannot be exported to ONNX (its "
            f"heads feed one another); {', '.join(ARCHS)} can"
        )
    model = src.model.eval()
    heads = model.roi_heads
    channels = model.backbone.out_channels
    image = torch.zeros(1, 3, 4 * model.size_divisor, 4 * model.size_divisor)
    with torch.no_grad():  # traced next: no inference-mode tensors
        levels = [f.contiguous() for f in model.backbone(image).values()]
    box_x = torch.zeros(2, channels, heads.box_pooler.output_size, heads.box_pooler.output_size)
    mask_x = torch.zeros(2, channels, heads.mask_pooler.output_size, heads.mask_pooler.output_size)
    inputs, outputs = _names(model)
    dynamic = {"image": {0: "batch", 2: "height", 3: "width"}}
    dynamic |= {f"level{k}": {0: "batch", 2: f"h{k}", 3: f"w{k}"} for k in range(len(levels))}
    dynamic |= {"box_features": {0: "boxes"}, "mask_features": {0: "masks"}}
    run = resolve_run(source, quiet=True)
    stats = read_data_stats(run) if run.is_dir() else None
    metadata = {
        "cellstack.config": config_to_dict(src.cfg),
        "cellstack.class_names": list(src.class_names),
        "cellstack.thresholds": src.thresholds.to_dict(),
        "cellstack.data_stats": stats or {},
        "cellstack.versions": versions(),
    }
    out = Path(out)
    with atomic_path(out) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on its own deprecation
        torch.onnx.export(
            _Branches(model),
            (image, *levels, box_x, mask_x),
            str(tmp),
            dynamo=False,
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=dynamic,
            opset_version=OPSET,
        )
        graph = onnx.load(str(tmp))
        for key, value in metadata.items():
            entry = graph.metadata_props.add()
            entry.key, entry.value = key, json.dumps(value)
        graph.producer_name = "cellstack"
        onnx.save(graph, str(tmp))
    return out
