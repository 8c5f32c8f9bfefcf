"""What blocks and folders share on Dask: one task runner and one resume marker.

:class:`TaskRunner` runs a task function over argument tuples on a Dask client (or in
this process, one after another, without one): the model is sent to every worker once,
a task's :class:`~cellstack.errors.CellstackError` stops the job with one line that
names the task, and every pending task is cancelled on the way out (Ctrl-C included).

A job's marker (:func:`open_job`) is a small JSON file that says what an unfinished run
in an output folder was doing; the same command again resumes it, another job there is
refused.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cellstack.errors import CellstackError
from cellstack.fileio import atomic_write

#: The marker's file name, inside a job's work folder.
JOB = "job.json"


class TaskRunner:
    """Runs tasks on ``client`` (None: here), each called as ``fn(shared, *args)``.

    Args:
        client: a ``dask.distributed.Client`` or None.
        shared: the first argument of every task (the model): scattered to every
            worker once, on the first :meth:`map` that uses it, and kept there.
    """

    def __init__(self, client: Any, shared: Any) -> None:
        self.client = client
        self.shared = shared
        self._scattered = None

    def map(
        self,
        fn: Callable,
        args: Sequence[tuple],
        describe: Callable[[int, Exception], str],
        bar,
        first: Any = None,
    ) -> list:
        """``[fn(first, *a) for a in args]`` (``first`` defaults to ``shared``), in
        the order of ``args``, advancing the progress bar ``bar`` per task.

        Raises:
            CellstackError: ``describe(k, exc)``, the message of task ``k``'s error.
        """
        if self.client is None:
            lead = self.shared if first is None else first
            results = []
            for k, a in enumerate(args):
                try:
                    results.append(fn(lead, *a))
                except CellstackError as exc:
                    raise CellstackError(describe(k, exc)) from None
                bar.update(1)
            return results
        from distributed import as_completed

        if first is None and self._scattered is None:
            # Sent once; every worker deserialises it once and keeps it for its tasks.
            self._scattered = self.client.scatter(self.shared, broadcast=True)
        head = self._scattered if first is None else first
        futures = [self.client.submit(fn, head, *a, pure=False) for a in args]
        index = {f.key: k for k, f in enumerate(futures)}
        results: list = [None] * len(futures)
        try:
            for future in as_completed(futures):
                k = index[future.key]
                try:
                    results[k] = future.result()
                except CellstackError as exc:
                    raise CellstackError(describe(k, exc)) from None
                bar.update(1)
        finally:
            for f in futures:
                f.cancel()
        return results


def open_job(work: Path, job: dict, refusal: str) -> bool:
    """Whether ``work`` holds the marker of an unfinished run of this same ``job`` (a
    JSON-able description: geometry, source, images), to resume.

    Raises:
        CellstackError: ``refusal`` (naming the output folder and what to do), when the
            marker there is another job's.
    """
    marker = work / JOB
    if not marker.is_file():
        return False
    if json.loads(marker.read_text("utf-8")) != job:
        raise CellstackError(refusal)
    return True


def start_job(work: Path, job: dict) -> None:
    """Write ``job``'s marker into ``work`` (created), atomically."""
    work.mkdir(parents=True, exist_ok=True)
    with atomic_write(work / JOB) as f:
        json.dump(job, f)
