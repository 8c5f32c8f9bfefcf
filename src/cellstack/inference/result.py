"""What segmenting an image returns: :class:`Result` (labels, the cells of each plane,
the object table), consumed by export, Dask blocks, napari and the API's users."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cellstack.errors import CellstackError
from cellstack.structures import Instances

#: Columns of :attr:`Result.table`, in order. ``bbox_*`` are half-open pixel ranges
#: (``bbox_y1``/``bbox_x1`` one past the last row/column), centroids in pixels
#: (row, column) of the mask's pixel centres.
TABLE_COLUMNS = (
    "label",
    "cell_type",
    "score",
    "area",
    "centroid_y",
    "centroid_x",
    "bbox_y0",
    "bbox_x0",
    "bbox_y1",
    "bbox_x1",
)


@dataclass(frozen=True)
class Result:
    """The cells of one image, or of every plane of a stack.

    Attributes:
        labels: int32[*lead, H, W] instance ids, 0 = background; in a 2-D image ids
            1..N follow decreasing score, in a stack they run on across planes so that
            every id is one object.
        planes: the post-processed cells of each plane (``pixels``: flat indices
            into the plane; ``classes``: cell-type indices), one per plane in C order;
            :attr:`instances` is the one of a 2-D image.
        table: per-object columns (:data:`TABLE_COLUMNS`, then one column per lead
            axis, e.g. ``z``) as numpy arrays: ``pandas.DataFrame(result.table)`` and
            napari's Labels ``features`` take it as it is.
        image: uint8[*lead, H, W], the scaled planes the model saw.
        lead: the axes planes are stacked along: ``""`` (one 2-D image), ``"Z"``,
            ``"T"`` or ``"TZ"``.
        class_names: the model's cell types.
    """

    labels: np.ndarray
    planes: tuple[Instances, ...]
    table: dict[str, np.ndarray]
    image: np.ndarray
    lead: str
    class_names: tuple[str, ...]

    @property
    def instances(self) -> Instances:
        """The cells of a 2-D image (for a stack: :attr:`planes`)."""
        if self.lead:
            raise AttributeError(
                f"a {self.lead}YX stack has one Instances per plane: use result.planes"
            )
        return self.planes[0]

    def __len__(self) -> int:
        """The number of cells."""
        return len(self.table["label"])

    def to_anndata(
        self,
        channels: np.ndarray | None = None,
        channel_names: Sequence[str] | None = None,
        image_id: str = "image",
    ):
        """The cells as an ``anndata.AnnData`` (``pip install 'cellstack[tables]'``):
        one row per cell, ``obs`` the object table with ``image_id``, ``X`` each
        channel's mean intensity over the cell, ``obsm["spatial"]`` the centroids as
        (x, y) pixels (:mod:`~cellstack.inference.tables`).

        Args:
            channels: float[C, *lead, H, W] raw intensities on the labels' pixel grid,
                e.g. ``cellstack.data.images.read_channels(path)[0]``, or [*lead, H, W]
                for one channel. None: the planes the model saw (:attr:`image`, uint8
                after scaling), one channel named ``model_input``.
            channel_names: C names (default ``channel_0``, ``channel_1``, ...).
            image_id: the image's id in ``obs`` and in the cells' names.
        """
        from cellstack.inference.tables import anndata_of, channel_means

        if channels is None:
            channels, channel_names = self.image[None], channel_names or ["model_input"]
        channels = np.asarray(channels)
        if channels.shape == self.labels.shape:
            channels = channels[None]
        names = list(channel_names or (f"channel_{k}" for k in range(len(channels))))
        if len(names) != len(channels):
            raise CellstackError(f"{len(names)} channel names for {len(channels)} channels")
        means = channel_means(self.labels, self.table["label"], channels)
        return anndata_of(self.table, means, names, image_id)


def object_table(
    labels: np.ndarray, inst: Instances, class_names: Sequence[str], first_id: int = 1
) -> dict[str, np.ndarray]:
    """Per-object columns (:data:`TABLE_COLUMNS`) of a plane's cells.

    Args:
        labels: int32[H, W] with instance ``k`` painted as ``first_id + k``.
        inst: the plane's post-processed instances (``scores``, ``classes``).
        class_names: names of the cell-type indices.
        first_id: the label id of the first instance.
    """
    from scipy import ndimage

    n = len(inst)
    ids = np.arange(first_id, first_id + n, dtype=np.int64)
    local = np.where(labels > 0, labels - (first_id - 1), 0).ravel()
    h, w = labels.shape
    rows, cols = np.divmod(np.arange(h * w), w)
    area = np.bincount(local, minlength=n + 1)[1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        cy = np.bincount(local, weights=rows, minlength=n + 1)[1:] / area
        cx = np.bincount(local, weights=cols, minlength=n + 1)[1:] / area
    boxes = np.zeros((n, 4), dtype=np.int64)
    for k, sl in enumerate(ndimage.find_objects(local.reshape(h, w), max_label=n)):
        if sl is not None:
            boxes[k] = (sl[0].start, sl[1].start, sl[0].stop, sl[1].stop)
    names = np.asarray(class_names, dtype=object)
    return {
        "label": ids,
        "cell_type": names[np.asarray(inst.classes, dtype=np.int64)] if n else names[:0],
        "score": np.asarray(inst.scores, dtype=np.float32),
        "area": area.astype(np.int64),
        "centroid_y": cy,
        "centroid_x": cx,
        "bbox_y0": boxes[:, 0],
        "bbox_x0": boxes[:, 1],
        "bbox_y1": boxes[:, 2],
        "bbox_x1": boxes[:, 3],
    }
