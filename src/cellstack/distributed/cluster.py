"""The Dask cluster a job runs on: an existing one (``--scheduler ADDRESS``, or a
``Client`` the caller holds), or a ``LocalCluster`` of ``--workers N`` processes with
one thread each (torch uses that one thread: workers share the cores, not oversubscribe
them). On a SLURM/LSF/PBS cluster, start the workers with ``dask-jobqueue`` and pass
its scheduler address; with GPUs, one worker per GPU (``dask-cuda``'s
``LocalCUDACluster`` sets ``CUDA_VISIBLE_DEVICES`` per worker)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from cellstack.errors import CellstackError


def dask_distributed():
    """The ``distributed`` package, or a one-line error saying how to install it."""
    try:
        import distributed
    except ImportError:
        raise CellstackError(
            "--workers and --scheduler need Dask: pip install 'cellstack[distributed]'"
        ) from None
    return distributed


@contextlib.contextmanager
def open_client(
    workers: int | None = None, scheduler: str | None = None, *, threads: int = 1
) -> Iterator[Any]:
    """A ``distributed.Client``: connected to ``scheduler``, or to a new
    ``LocalCluster`` of ``workers`` processes (closed on exit). None when neither is
    given (the caller runs in-process)."""
    if workers is None and scheduler is None:
        yield None
        return
    if workers is not None and scheduler is not None:
        raise CellstackError("give --workers N (a local cluster) or --scheduler ADDRESS, not both")
    distributed = dask_distributed()
    if scheduler is not None:
        try:
            client = distributed.Client(scheduler, timeout="30s")
        except OSError as exc:
            raise CellstackError(f"--scheduler {scheduler}: cannot connect ({exc})") from None
        with client:
            yield client
        return
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise CellstackError(f"--workers must be an integer >= 1, got {workers!r}")
    cluster = distributed.LocalCluster(
        n_workers=workers,
        threads_per_worker=threads,
        processes=True,
        dashboard_address=None,
        silence_logs=logging.ERROR,
    )
    with cluster, distributed.Client(cluster) as client:
        yield client


def limit_threads() -> None:
    """One torch thread per Dask worker thread: workers share the machine's cores."""
    import torch

    try:
        from distributed import get_worker

        threads = get_worker().state.nthreads
    except (ImportError, ValueError):
        return  # not on a worker: the process's own setting stands
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
