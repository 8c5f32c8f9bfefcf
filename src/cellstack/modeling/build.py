"""Build a detector from the config: the only place that reads ``ModelConfig``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead

from cellstack.config import AUTO, Config, ModelConfig, PredictConfig
from cellstack.errors import CellstackError
from cellstack.modeling.anchors import CentredAnchorGenerator, ProposalParams
from cellstack.modeling.backbone import TimmFPN
from cellstack.modeling.detector import CellDetector
from cellstack.modeling.heads.base import RoIHeads
from cellstack.modeling.heads.cascade import CASCADE_STAGES, CascadeHeads, StageSpec, cascade_stages
from cellstack.modeling.heads.htc import FlowMaskHead, HTCHeads, SemanticHead
from cellstack.modeling.heads.layers import BoxHead, MaskHead
from cellstack.modeling.heads.mask_rcnn import MaskRCNNHeads
from cellstack.modeling.heads.select import BoxParams
from cellstack.modeling.poolers import AlignedMultiScaleRoIAlign

if TYPE_CHECKING:
    from cellstack.data.stats import ObjectStats


def build_trained(cfg: Config, class_names: Sequence[str], stats: dict | None) -> CellDetector:
    """The detector a trained model's weights go into: its config's architecture with a
    random encoder (no ImageNet weights read, whatever ``pretrained`` says) and the
    proposal and detection budgets of the objects it trained on (``stats``, its
    ``data_stats.json``; None when unrecorded). For runs, built-ins, exported ONNX
    files and bioimage.io packages alike."""
    from cellstack.data.stats import ObjectStats

    return build_model(
        cfg.model,
        class_names,
        cfg.predict,
        encoder_weights=False,
        trained_on=ObjectStats.recorded(stats),
    )


def build_model(
    cfg: ModelConfig,
    class_names: Sequence[str],
    predict: PredictConfig | None = None,
    *,
    encoder_weights: bool = True,
    trained_on: ObjectStats | None = None,
) -> CellDetector:
    """A detector for ``class_names`` (cell types, in label order) with random heads.

    ``encoder_weights=False`` builds the encoder with random weights whatever
    ``model.backbone.pretrained`` says: for a caller that loads trained weights next
    (a run being loaded for prediction needs neither network nor weight package).
    ``trained_on``: the training objects' statistics (at the model's scale); with them
    the test-time proposal budget and the detections kept grow with a pass's area
    (:func:`proposal_density`).
    """

    if not class_names:
        raise CellstackError("a model needs at least one class (cell type)")
    predict = predict or PredictConfig()
    for key, value in (
        ("model.backbone.stem_stride", cfg.backbone.stem_stride),
        ("model.rpn.anchor_scale", cfg.rpn.anchor_scale),
        ("model.roi.mask_pool", cfg.roi.mask_pool),
        ("predict.max_detections", predict.max_detections),
    ):
        if value == AUTO:
            raise CellstackError(
                f"{key} is 'auto': it is derived from the training data when `cellstack "
                "train` starts; give a number to build a model without data"
            )
    bb = cfg.backbone
    backbone = TimmFPN(
        bb.name,
        pretrained=bb.pretrained and encoder_weights,
        pretrained_path=bb.pretrained_path if encoder_weights else None,
        stem_stride=bb.stem_stride,
        out_channels=bb.fpn_channels,
        freeze_bn=bb.freeze_bn,
        norm=cfg.norm,
    )
    r = cfg.rpn
    sizes = tuple((float(r.anchor_scale * s),) for s in backbone.strides)
    anchors = CentredAnchorGenerator(sizes, (tuple(r.aspect_ratios),) * len(sizes))
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
    heads = build_roi_heads(cfg, backbone, len(class_names))
    proposals_per_mp = proposal_density(r.post_nms_top_n_test, trained_on)
    return CellDetector(
        backbone=backbone,
        rpn=rpn,
        roi_heads=heads,
        class_names=class_names,
        proposal_params=ProposalParams(
            pre_nms_top_n=r.pre_nms_top_n_test,
            nms_iou=predict.rpn_nms_iou,
            score_thresh=predict.rpn_score_thresh,
            post_nms_top_n=r.post_nms_top_n_test,
            per_megapixel=proposals_per_mp,
        ),
        box_params=BoxParams(
            predict.box_score_thresh,
            predict.box_nms_iou,
            predict.max_detections,
            predict.score_mode,
            per_megapixel=proposal_density(predict.max_detections, trained_on),
        ),
    )


def proposal_density(proposals: int, trained_on: ObjectStats | None) -> float:
    """Test-time proposals (or detections) per 10**6 pixels that keep a dense pass
    uncapped.

    ``proposals`` (``model.rpn.post_nms_top_n_test``, or ``predict.max_detections``)
    served the training image with the most objects; a pass of any size gets at least
    as many per object at the densest training image's density: ``proposals /
    max_objects_per_image * max_objects_per_megapixel``. A 1024 px tile thus has the
    budget of four 512 px ones, whatever tiling or block size predicts it; a 700x1100
    frame in one pass keeps as many cells as its tiles did (a fixed 348 detections had
    cut a dense one to 340 of 1,316 nuclei). The extra detections cost no mask-head
    time below the score threshold (:meth:`Predictor.final_box_params` drops them
    first). 0 (the fixed count) without statistics.
    """
    if trained_on is None or trained_on.max_objects_per_image < 1:
        return 0.0
    return proposals * trained_on.max_objects_per_megapixel / trained_on.max_objects_per_image


def build_roi_heads(cfg: ModelConfig, backbone: TimmFPN, num_classes: int) -> RoIHeads:
    """The RoI heads of ``cfg.arch`` on ``backbone``'s levels (all but the pooled one)."""
    roi = cfg.roi
    gn = cfg.norm == "group" or roi.mask_norm == "group"
    channels = backbone.out_channels
    roi_strides = backbone.strides[:-1]
    poolers = {
        "box_pooler": AlignedMultiScaleRoIAlign(
            roi_strides, roi.box_pool, finest_scale=roi.finest_scale
        ),
        "mask_pooler": AlignedMultiScaleRoIAlign(
            roi_strides, roi.mask_pool, finest_scale=roi.finest_scale
        ),
    }
    sampling = {
        "batch_size_per_image": roi.batch_size_per_image,
        "positive_fraction": roi.positive_fraction,
    }
    if cfg.arch == "maskrcnn":
        return MaskRCNNHeads(
            **poolers,
            box_head=BoxHead(channels, roi.box_pool, roi.fc_dim, num_classes),
            mask_head=MaskHead(
                channels, roi.mask_convs, num_classes, dim=roi.mask_dim, group_norm=gn
            ),
            num_classes=num_classes,
            fg_iou=roi.fg_iou,
            **sampling,
        )
    specs = [
        StageSpec(iou, weight, spec.bbox_weights)
        for iou, weight, spec in zip(
            roi.stage_ious, roi.stage_loss_weights, CASCADE_STAGES, strict=False
        )
    ]

    def box_head() -> BoxHead:
        return BoxHead(channels, roi.box_pool, roi.fc_dim, num_classes, class_agnostic=True)

    if cfg.arch == "cascade":
        stages = cascade_stages(
            specs,
            box_head,
            lambda i: MaskHead(
                channels, roi.mask_convs, num_classes, dim=roi.mask_dim, group_norm=gn
            ),
            stage_masks=roi.stage_masks,
            **sampling,
        )
        return CascadeHeads(**poolers, stages=stages, num_classes=num_classes)
    if cfg.arch == "htc":
        stages = cascade_stages(
            specs,
            box_head,
            lambda i: FlowMaskHead(
                channels,
                roi.mask_convs,
                num_classes,
                dim=roi.mask_dim,
                with_previous=i > 0,
                group_norm=gn,
            ),
            stage_masks=True,
            **sampling,
        )
        return HTCHeads(
            **poolers,
            stages=stages,
            num_classes=num_classes,
            semantic_head=SemanticHead(
                channels, len(backbone.strides), fusion_level=roi.semantic_level
            ),
            semantic_stride=backbone.strides[roi.semantic_level],
            semantic_weight=roi.semantic_weight,
        )
    raise CellstackError(f"model.arch {cfg.arch!r} is not one of maskrcnn, cascade, htc")
