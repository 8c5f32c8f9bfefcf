"""Beyond one machine, on Dask: images larger than memory block by block
(:func:`segment`), and folders of images over many workers (:func:`predict_images`).

Needs ``dask.distributed`` (``pip install 'cellstack[distributed]'``); clusters come
from Dask itself (a ``LocalCluster``, or ``dask-jobqueue`` for SLURM/LSF/PBS, passed as
``client=``). Training over several processes is PyTorch DDP instead
(:mod:`cellstack.ddp`).
"""

from __future__ import annotations

from typing import Any

__all__ = ["open_client", "predict_images", "segment", "segment_in_memory"]

_WHERE = {
    "segment": "cellstack.distributed.blocks",
    "segment_in_memory": "cellstack.distributed.blocks",
    "predict_images": "cellstack.distributed.folders",
    "open_client": "cellstack.distributed.cluster",
}


def __getattr__(name: str) -> Any:
    # Lazily: importing the package must not import dask (an optional extra).
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'cellstack.distributed' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
