"""Inference: predictors, tiling, flip TTA, ensembling, post-processing, overlays."""
