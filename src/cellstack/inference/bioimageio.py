"""A cellstack model as one image-to-labels module, what a bioimage.io model package runs.

:class:`LabelModel` is the package's architecture (``pytorch_state_dict`` weights,
``import_from: cellstack.inference.bioimageio``): built from the run's config, class
names, thresholds and object statistics (the package's ``kwargs``), it holds the
detector's weights (its state dict is the package's weight file) and maps raw
intensities float32[B, 1, Y, X] to instance labels int32[B, 1, Y, X] (0 = background,
ids 1..N by decreasing score): the intensity scaling, the model, post-processing and
the label image, as ``cellstack predict`` does, inside ``forward``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from cellstack.config import config_from_dict
from cellstack.errors import CellstackError
from cellstack.inference.thresholds import Thresholds
from cellstack.modeling.build import build_trained


class LabelModel(nn.Module):
    """Raw images to instance labels with a cellstack detector (see the module).

    Args:
        config: the run's resolved config as a dict (``config_to_dict``).
        class_names: the cell types.
        thresholds: the post-processing thresholds (``Thresholds.to_dict``).
        data_stats: the training objects' statistics (``data_stats.json``), or None.
    """

    def __init__(
        self,
        config: dict,
        class_names: list[str],
        thresholds: dict,
        data_stats: dict | None = None,
    ) -> None:
        super().__init__()
        self.cfg = config_from_dict(config)
        self.class_names = tuple(class_names)
        self.thresholds = Thresholds.from_dict(thresholds, "the package's thresholds")
        self.data_stats = data_stats or None
        self.detector = build_trained(self.cfg, self.class_names, self.data_stats)
        self._segmenter = None  # built at the first call, again on another device

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """int32[B, 1, Y, X] labels of float[B, 1, Y, X] raw intensities."""
        from cellstack.inference.segmenter import Segmenter
        from cellstack.inference.sources import Source, trained_sizes

        if image.ndim != 4 or image.shape[1] != 1:
            raise CellstackError(
                f"LabelModel takes float[B, 1, Y, X] images, got {tuple(image.shape)}"
            )
        if self._segmenter is None or self._segmenter.device != image.device:
            source = Source(
                self.detector.eval(),
                self.class_names,
                self.cfg,
                self.thresholds,
                None,
                **trained_sizes(self.data_stats, Path("the package")),
            )
            self._segmenter = Segmenter(source, device=image.device)
        segmenter = self._segmenter
        planes = image[:, 0].detach().float().cpu().numpy()
        labels = np.stack([segmenter(plane).labels for plane in planes]).astype(np.int32)
        return torch.from_numpy(labels[:, None]).to(image.device)
