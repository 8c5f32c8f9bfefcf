"""The detector skeleton: preprocess -> backbone/FPN -> RPN -> RoI heads.

Images go in as a list of float tensors ``[C, H, W]`` in [0, 1] (C = 1 or 3; grayscale
is repeated to three channels), at their native size: no resize, only zero-mean padding
to a multiple of the largest stride. Predictions come out as one
:class:`~cellstack.structures.Instances` per image with ``boxes`` (float32[N, 4] xyxy,
image pixels), ``scores``, ``classes`` (int64 class index into ``class_names``) and
``roi_masks`` (float32[N, M, M] mask probabilities on each box's grid, M = 2 x
``model.roi.mask_pool``: 28 x 28 with the default pool of 14, 56 x 56 with 28; not
pasted: the predictor pastes after any ensembling).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork

from cellstack.errors import CellstackError
from cellstack.modeling.anchors import ProposalParams, RPNOutputs, select_proposals
from cellstack.modeling.backbone import IMAGENET_MEAN, IMAGENET_STD, TimmFPN
from cellstack.modeling.heads.base import RoIHeads
from cellstack.modeling.heads.layers import BoxHead, MaskHead, inference_layout
from cellstack.modeling.heads.results import RoIFeatures, Window
from cellstack.modeling.heads.select import BoxParams, select_detections
from cellstack.structures import Instances


class CellDetector(nn.Module):
    """Mask R-CNN-style instance segmentation of cells.

    Args:
        backbone: encoder + FPN (gives ``strides`` and ``level_names``).
        rpn: torchvision RegionProposalNetwork over all FPN levels.
        roi_heads: box and mask heads (Mask R-CNN, Cascade or HTC); their poolers use the
            first four levels, HTC's semantic branch all five.
        class_names: the cell types, in label order.
        proposal_params, box_params: inference proposal and box selection.

    Inference is split into steps that an ensemble can call model by model and view by
    view: :meth:`preprocess`, :meth:`features`, :meth:`rpn_outputs`,
    :meth:`level_anchors` + :func:`select_proposals`, then the RoI heads'
    ``predict_boxes`` and ``predict_masks``. ``forward`` chains them for one model.
    """

    def __init__(
        self,
        *,
        backbone: TimmFPN,
        rpn: RegionProposalNetwork,
        roi_heads: RoIHeads,
        class_names: Sequence[str],
        proposal_params: ProposalParams | None = None,
        box_params: BoxParams | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.rpn = rpn
        self.roi_heads = roi_heads
        self.class_names = tuple(class_names)
        self.proposal_params = proposal_params or ProposalParams()
        self.box_params = box_params or BoxParams()
        #: Autocast dtype of the backbone at inference (None: float32); the predictor
        #: sets it from ``predict.amp`` and the device.
        self.feature_autocast: torch.dtype | None = None

    def class_specific_keys(self) -> set[str]:
        """State-dict keys whose meaning depends on the classes: every box head's class
        logits (and its class-specific box deltas) and every mask head's logits."""
        keys = set()
        for name, module in self.named_modules():
            if isinstance(module, BoxHead):
                layers = ["cls_score"] if module.class_agnostic else ["cls_score", "bbox_pred"]
            elif isinstance(module, MaskHead):
                layers = ["logits"]
            else:
                continue
            keys |= {f"{name}.{layer}.{p}" for layer in layers for p in ("weight", "bias")}
        return keys

    @property
    def size_divisor(self) -> int:
        return max(self.backbone.strides)

    def preprocess(self, images: Sequence[torch.Tensor]) -> ImageList:
        """Normalise, repeat gray to RGB, pad to a common size divisible by the strides."""
        if len(images) == 0:
            raise CellstackError("no images to process")
        sizes = []
        for img in images:
            if img.ndim != 3 or img.shape[0] not in (1, 3):
                raise CellstackError(
                    f"images must be float [C, H, W] with C = 1 or 3, got {tuple(img.shape)}"
                )
            sizes.append((int(img.shape[1]), int(img.shape[2])))
        d = self.size_divisor
        h = max(s[0] for s in sizes)
        w = max(s[1] for s in sizes)
        h, w = -(-h // d) * d, -(-w // d) * d
        # Constants, not buffers: every tensor a detector holds is in its state dict, so
        # weights can be dropped and loaded again (an ensemble's weight budget).
        device = images[0].device
        mean = torch.tensor(IMAGENET_MEAN, device=device).view(3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=device).view(3, 1, 1)
        batch = images[0].new_zeros((len(images), 3, h, w), dtype=torch.float32)  # 0 = mean
        for i, img in enumerate(images):
            img = img.float()
            if img.shape[0] == 1:
                img = img.expand(3, -1, -1)
            batch[i, :, : img.shape[1], : img.shape[2]] = (img - mean) / std
        return ImageList(batch, sizes)

    def features(self, images: ImageList) -> dict[str, torch.Tensor]:
        """FPN levels float32[B, C, H / s, W / s] (channels-last in memory at inference on
        CPU: :func:`~cellstack.modeling.heads.layers.inference_layout`). In eval mode with
        ``feature_autocast`` set (a dtype, e.g. float16 on CUDA), the backbone and FPN
        run under autocast and their outputs come back as float32 for the heads."""
        if self.training:
            return self.backbone(images.tensors)
        tensors = inference_layout(images.tensors)
        if self.feature_autocast is None:
            return self.backbone(tensors)
        with torch.autocast(tensors.device.type, dtype=self.feature_autocast):
            feats = self.backbone(tensors)
        return {k: v.float() for k, v in feats.items()}

    def roi_levels(self, feats: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """The FPN levels in order, finest first, for the RoI heads."""
        return [feats[k] for k in self.backbone.level_names]

    def forward(
        self,
        images: Sequence[torch.Tensor],
        targets: Sequence[dict] | None = None,
        *,
        box_params: BoxParams | None = None,
    ) -> dict[str, torch.Tensor] | list[Instances]:
        """Training (``targets`` given, module in train mode): a dict of losses
        ``rpn_cls, rpn_box`` and the heads' (:meth:`HeadLosses.named`: ``cls, box, mask``
        for Mask R-CNN, ``s0.cls ... s2.mask`` for cascades, ``semantic`` for HTC).
        Inference: one Instances per image.

        Targets per image: ``boxes`` float32[N, 4] xyxy, ``classes`` int64[N] class index,
        ``masks`` uint8[N, H, W]. ``box_params`` (inference only) replaces the model's
        own box selection for this call.
        """
        image_list = self.preprocess(images)
        feats = self.features(image_list)
        if self.training:
            if targets is None:
                raise CellstackError("training needs targets")
            targets = [dict(t) for t in targets]
            proposals, rpn_losses = self.rpn(image_list, feats, targets)
            proposals = [p.detach() for p in proposals]
            losses = self.roi_heads.losses(
                self.roi_heads.prepare(self.roi_levels(feats)),
                proposals,
                targets,
                image_list.image_sizes,
            )
            return {
                "rpn_cls": rpn_losses["loss_objectness"],
                "rpn_box": rpn_losses["loss_rpn_box_reg"],
                **losses.named(),
            }
        proposals = self.propose(image_list, feats)
        return self.detect(
            self.roi_heads.prepare(self.roi_levels(feats)),
            proposals,
            image_windows(image_list),
            box_params,
        )

    def propose(
        self,
        image_list: ImageList,
        feats: dict[str, torch.Tensor],
        params: ProposalParams | None = None,
    ) -> list[torch.Tensor]:
        """Test-time proposals: per image float[P, 4] xyxy, best first (``params``:
        default the model's ``proposal_params``)."""
        return select_proposals(
            self.rpn_outputs(feats),
            self.level_anchors(image_list, feats),
            self.rpn.box_coder,
            image_windows(image_list),
            params or self.proposal_params,
        )

    def rpn_outputs(self, feats: dict[str, torch.Tensor]) -> RPNOutputs:
        objectness, deltas = self.rpn.head(list(feats.values()))
        return RPNOutputs(objectness, deltas)

    def level_anchors(
        self, image_list: ImageList, feats: dict[str, torch.Tensor]
    ) -> list[torch.Tensor]:
        """Per level float[H_l * W_l * A, 4] xyxy anchors of the padded batch."""
        levels = list(feats.values())
        anchors = self.rpn.anchor_generator(image_list, levels)[0]
        counts = [f.shape[-2] * f.shape[-1] * self.rpn.head.cls_logits.out_channels for f in levels]
        return list(anchors.split(counts))

    def detect(
        self,
        feats: RoIFeatures,
        proposals: list[torch.Tensor],
        windows: list[Window],
        box_params: BoxParams | None = None,
    ) -> list[Instances]:
        """Boxes and RoI masks from proposals (inference, one view)."""
        box_params = box_params or self.box_params
        preds = self.roi_heads.predict_boxes(feats, proposals, windows)
        selected = [
            select_detections(p, box_params, win) for p, win in zip(preds, windows, strict=True)
        ]
        masks = self.roi_heads.predict_masks(
            feats, [s[0] for s in selected], [s[2] for s in selected]
        )
        return [
            Instances((int(win[3]), int(win[2])), boxes=b, scores=s, classes=lab, roi_masks=m)
            for (b, s, lab), m, win in zip(selected, masks, windows, strict=True)
        ]


def image_windows(image_list: ImageList) -> list[Window]:
    """``(0, 0, w, h)`` of each image of the padded batch."""
    return [(0.0, 0.0, float(w), float(h)) for h, w in image_list.image_sizes]
