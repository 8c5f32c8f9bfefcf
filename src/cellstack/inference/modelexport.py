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
from cellstack.inference.sources import Source, load_source
from cellstack.modeling.detector import CellDetector


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


def describe(source: str | Path, overrides: tuple[str, ...] = ()) -> tuple[Source, dict]:
    """``source`` (a run folder, a built-in's name or a tuned model folder, with
    ``predict.*`` ``overrides``) loaded, and what every export carries of it as plain
    JSON values: ``config``, ``class_names``, ``thresholds`` and ``data_stats``.

    Raises:
        CellstackError: an ensemble or a CV folder (export one model at a time).
    """
    from cellstack.modeling.builtin import resolve_run
    from cellstack.modeling.runfolder import read_data_stats

    src = load_source(source, overrides)
    if not isinstance(src.model, CellDetector):
        raise CellstackError(
            f"{source}: an ensemble; export each of its models (one run, built-in or "
            "tuned folder at a time)"
        )
    run = resolve_run(source, quiet=True)
    described = {
        "config": config_to_dict(src.cfg),
        "class_names": list(src.class_names),
        "thresholds": src.thresholds.to_dict(),
        "data_stats": (read_data_stats(run) if run.is_dir() else None) or {},
    }
    return src, json.loads(json.dumps(described))  # as a YAML or JSON file gives it back


def _example_inputs(model: CellDetector) -> tuple[torch.Tensor, ...]:
    """Inputs of every branch to trace the graph with: a small image, its FPN levels
    and two RoIs' pooled box and mask features."""
    heads, channels = model.roi_heads, model.backbone.out_channels
    image = torch.zeros(1, 3, 4 * model.size_divisor, 4 * model.size_divisor)
    with torch.no_grad():  # traced next: no inference-mode tensors
        levels = [f.contiguous() for f in model.backbone(image).values()]
    box, mask = heads.box_pooler.output_size, heads.mask_pooler.output_size
    return image, *levels, torch.zeros(2, channels, box, box), torch.zeros(2, channels, mask, mask)


def _dynamic_axes(levels: int) -> dict[str, dict[int, str]]:
    """The inputs' free sizes: batch and pixels of the image and its levels, RoIs."""
    dynamic = {"image": {0: "batch", 2: "height", 3: "width"}}
    dynamic |= {f"level{k}": {0: "batch", 2: f"h{k}", 3: f"w{k}"} for k in range(levels)}
    return dynamic | {"box_features": {0: "boxes"}, "mask_features": {0: "masks"}}


def export_onnx(source: str | Path, out: str | Path, overrides: tuple[str, ...] = ()) -> Path:
    """Write ``source`` (a run folder, a built-in's name or a tuned model folder; with
    ``predict.*`` ``overrides``) as an ONNX file at ``out``, whole or not at all: the
    graph of :mod:`~cellstack.inference.onnx`, :func:`describe` and the package
    versions in its metadata (:data:`~cellstack.inference.onnx.META_KEYS`).

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
    from cellstack.modeling.runfolder import versions

    src, described = describe(source, overrides)
    if src.cfg.model.arch not in ARCHS:
        raise CellstackError(
            f"{source}: model.arch={src.cfg.model.arch} cannot be exported to ONNX (its "
            f"heads feed one another); {', '.join(ARCHS)} can"
        )
    model = src.model.eval()
    inputs, outputs = _names(model)
    metadata = {f"cellstack.{k}": v for k, v in {**described, "versions": versions()}.items()}
    out = Path(out)
    with atomic_path(out) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on its own deprecation
        torch.onnx.export(
            _Branches(model),
            _example_inputs(model),
            str(tmp),
            dynamo=False,
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=_dynamic_axes(len(model.backbone.level_names)),
            opset_version=OPSET,
        )
        graph = onnx.load(str(tmp))
        for key, value in metadata.items():
            entry = graph.metadata_props.add()
            entry.key, entry.value = key, json.dumps(value)
        graph.producer_name = "cellstack"
        onnx.save(graph, str(tmp))
    return out


def label_model(source: str | Path, overrides: tuple[str, ...] = ()) -> tuple[nn.Module, dict]:
    """``source`` as a :class:`~cellstack.inference.bioimageio.LabelModel` holding its
    weights, and the keyword arguments that build it again (:func:`describe`'s)."""
    from cellstack.inference.bioimageio import LabelModel

    src, kwargs = describe(source, overrides)
    model = LabelModel(**kwargs).eval()
    model.detector.load_state_dict(src.model.state_dict())
    return model, kwargs


def export_bioimageio(
    source: str | Path,
    out: str | Path,
    sample: str | Path | None = None,
    overrides: tuple[str, ...] = (),
    license: str | None = None,
) -> Path:
    """Write ``source`` (a run folder, a built-in's name or a tuned model folder) as a
    bioimage.io model package (spec 0.5, a zip) at ``out``, whole or not at all.

    The package: ``rdf.yaml``; the weights as a PyTorch state dict of
    :class:`~cellstack.inference.bioimageio.LabelModel` (architecture imported from
    cellstack, which the consumer installs); a test input (``sample``, default the
    package's sample nuclei image, as float32[1, 1, Y, X]) and the labels the model
    gives it; a cover (the sample with the cells' outlines); the model card and
    licences (a built-in's) or the run's config as documentation. ``license``: the
    weights' SPDX licence (default Apache-2.0 where the encoder started from ImageNet
    weights, the packaged ones' licence, else MIT, cellstack's); the data a model
    learnt from may ask for another: say it.

    Raises:
        CellstackError: an ensemble, or the bioimageio extra missing.
    """
    import tempfile

    try:
        from bioimageio.spec import save_bioimageio_package
    except ImportError:
        raise CellstackError(
            "bioimage.io export needs bioimageio.spec: pip install 'cellstack[bioimageio]'"
        ) from None
    from cellstack.modeling.builtin import resolve_run

    model, kwargs = label_model(source, overrides)
    name = Path(str(source)).name
    pretrained = kwargs["config"]["model"]["backbone"]["pretrained"]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        _package_files(work, model, resolve_run(source, quiet=True), name, sample)
        descr = _package_description(
            work, name, kwargs, license or ("Apache-2.0" if pretrained else "MIT")
        )
        out = Path(out)
        with atomic_path(out) as tmp_zip:
            save_bioimageio_package(descr, output_path=tmp_zip)
    return out


def _package_files(
    work: Path, model: nn.Module, run: Path, name: str, sample: str | Path | None
) -> None:
    """A package's files in ``work``: ``test_input.npy`` (``sample`` as float32[1, 1, Y,
    X]), ``test_output.npy`` (the labels ``model`` gives it), ``weights.pt``,
    ``cover.png`` and ``README.md`` (what goes in and out; a built-in's card and
    licences, else the run's config)."""
    import numpy as np

    from cellstack.data.images import read_image, to_gray_uint8, write_png
    from cellstack.data.samples import sample_path
    from cellstack.inference.overlay import outline_overlay
    from cellstack.modeling.builtin import CARD, LICENSES, is_builtin_folder

    if sample is None:
        sample = sorted((sample_path("nuclei") / "images").iterdir())[0]
    image = read_image(Path(sample))
    image = image.mean(axis=2) if image.ndim == 3 else image
    test_input = image.astype(np.float32)[None, None]
    with torch.inference_mode():
        labels = model(torch.from_numpy(test_input)).numpy()
    np.save(work / "test_input.npy", test_input)
    np.save(work / "test_output.npy", labels)
    torch.save(model.state_dict(), work / "weights.pt")
    write_png(work / "cover.png", outline_overlay(to_gray_uint8(image), labels[0, 0]))
    doc = [
        f"# cellstack model `{name}`\n",
        "Instance segmentation with cellstack (Mask R-CNN family). Input: one channel of "
        "raw intensities, float32 [batch, 1, y, x], any size; the model scales each image "
        "by its 0.5/99.5 percentiles itself (no preprocessing here). Output: int32 [batch, "
        "1, y, x] instance labels, 0 = background. The post-processing (mask thresholds, "
        "mask NMS, overlaps) runs inside the model's forward, so a consumer needs the "
        "cellstack package (`pip install cellstack`) and gets labels; without it there "
        "is nothing to run.\n",
    ]
    if is_builtin_folder(run):
        doc += [(run / part).read_text(encoding="utf-8") for part in (CARD, LICENSES)]
    else:
        doc.append("```json\n" + json.dumps(config_to_dict(model.cfg), indent=1) + "\n```\n")
    (work / "README.md").write_text("\n".join(doc), encoding="utf-8")


def _package_description(work: Path, name: str, kwargs: dict, license: str):
    """The ``bioimageio.spec`` model description (0.5) of :func:`_package_files`'
    files: one float32 image in, int32 labels of the same size out."""
    from bioimageio.spec.model import v0_5 as bio

    image_axes = [
        bio.SpaceInputAxis(id=bio.AxisId(a), size=bio.ParameterizedSize(min=64, step=16))
        for a in "yx"
    ]
    image_id = bio.TensorId("image")
    label_axes = [
        bio.SpaceOutputAxis(
            id=bio.AxisId(a), size=bio.SizeReference(tensor_id=image_id, axis_id=bio.AxisId(a))
        )
        for a in "yx"
    ]
    return bio.ModelDescr(
        name=f"cellstack {name}",
        description=(
            f"cellstack's {name} model: instance segmentation of "
            f"{', '.join(kwargs['class_names'])} into a label image"
        ),
        authors=[bio.Author(name="cellstack contributors")],
        cite=[
            bio.CiteEntry(
                text="He et al., Mask R-CNN, ICCV 2017", doi=bio.Doi("10.1109/ICCV.2017.322")
            )
        ],
        license=bio.LicenseId(license),
        documentation=bio.FileDescr(source=work / "README.md"),
        covers=[bio.FileDescr(source=work / "cover.png")],
        tags=["instance-segmentation", "cells", "nuclei", "2d", "cellstack"],
        inputs=[
            bio.InputTensorDescr(
                id=image_id,
                axes=[
                    bio.BatchAxis(),
                    bio.ChannelAxis(channel_names=[bio.Identifier("intensity")]),
                    *image_axes,
                ],
                test_tensor=bio.FileDescr(source=work / "test_input.npy"),
                data=bio.IntervalOrRatioDataDescr(type="float32"),
            )
        ],
        outputs=[
            bio.OutputTensorDescr(
                id=bio.TensorId("labels"),
                axes=[
                    bio.BatchAxis(),
                    bio.ChannelAxis(channel_names=[bio.Identifier("instance")]),
                    *label_axes,
                ],
                test_tensor=bio.FileDescr(source=work / "test_output.npy"),
                data=bio.IntervalOrRatioDataDescr(type="int32"),
            )
        ],
        weights=bio.WeightsDescr(
            pytorch_state_dict=bio.PytorchStateDictWeightsDescr(
                source=work / "weights.pt",
                architecture=bio.ArchitectureFromLibraryDescr(
                    callable=bio.Identifier("LabelModel"),
                    import_from="cellstack.inference.bioimageio",
                    kwargs=kwargs,
                ),
                pytorch_version=bio.Version(torch.__version__.split("+")[0]),
            )
        ),
    )
