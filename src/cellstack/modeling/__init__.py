"""Modeling: timm backbones with an FPN, RPN, Mask R-CNN / Cascade / HTC heads."""
