"""Evaluation: mask matching, the competition metric, COCO AP and reports."""

from cellstack.evaluation.metric import IOU_THRESHOLDS, ImageScore, score_image

__all__ = ["IOU_THRESHOLDS", "ImageScore", "score_image"]
