"""Build a detector from the config: the only place that reads ``ModelConfig``."""

from __future__ import annotations

from collections.abc import Sequence

from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead

from cellstack.config import ModelConfig, PredictConfig
from cellstack.errors import CellstackError
from cellstack.modeling.backbone import TimmFPN
from cellstack.modeling.detector import CellDetector
from cellstack.modeling.heads.mask_rcnn import BoxHead, MaskHead, MaskRCNNHeads
from cellstack.modeling.poolers import AlignedMultiScaleRoIAlign


def build_model(
    cfg: ModelConfig, class_names: Sequence[str], predict: PredictConfig | None = None
) -> CellDetector:
    """A detector for ``class_names`` (cell types, in label order) with random heads."""
    if not class_names:
        raise CellstackError("a model needs at least one class (cell type)")
    if cfg.arch != "maskrcnn":
        raise CellstackError(f"model.arch {cfg.arch!r} is not available yet; use maskrcnn")
    predict = predict or PredictConfig()
    bb = cfg.backbone
    backbone = TimmFPN(
        bb.name,
        pretrained=bb.pretrained,
        pretrained_path=bb.pretrained_path,
        stem_stride=bb.stem_stride,
        out_channels=bb.fpn_channels,
        freeze_bn=bb.freeze_bn,
    )
    r = cfg.rpn
    sizes = tuple((float(r.anchor_scale * s),) for s in backbone.strides)
    anchors = AnchorGenerator(sizes, (tuple(r.aspect_ratios),) * len(sizes))
    rpn = RegionProposalNetwork(
        anchors,
        RPNHead(backbone.out_channels, len(r.aspect_ratios)),
        fg_iou_thresh=r.fg_iou,
        bg_iou_thresh=r.bg_iou,
        batch_size_per_image=r.batch_size_per_image,
        positive_fraction=r.positive_fraction,
        pre_nms_top_n={"training": r.pre_nms_top_n_train, "testing": r.pre_nms_top_n_test},
        post_nms_top_n={"training": r.post_nms_top_n_train, "testing": r.post_nms_top_n_test},
        nms_thresh=r.nms_iou,
    )
    roi = cfg.roi
    roi_strides = backbone.strides[:-1]
    heads = MaskRCNNHeads(
        box_pooler=AlignedMultiScaleRoIAlign(
            roi_strides, roi.box_pool, finest_scale=roi.finest_scale
        ),
        mask_pooler=AlignedMultiScaleRoIAlign(
            roi_strides, roi.mask_pool, finest_scale=roi.finest_scale
        ),
        box_head=BoxHead(backbone.out_channels, roi.box_pool, roi.fc_dim, len(class_names)),
        mask_head=MaskHead(
            backbone.out_channels, roi.mask_convs, len(class_names), dim=roi.mask_dim
        ),
        num_classes=len(class_names),
        fg_iou=roi.fg_iou,
        batch_size_per_image=roi.batch_size_per_image,
        positive_fraction=roi.positive_fraction,
    )
    return CellDetector(
        backbone=backbone,
        rpn=rpn,
        roi_heads=heads,
        class_names=class_names,
        box_score_thresh=predict.box_score_thresh,
        box_nms_iou=predict.box_nms_iou,
        max_detections=predict.max_detections,
    )
