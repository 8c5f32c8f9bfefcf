"""Many images over many workers: ``cellstack predict SOURCE FOLDER --out DIR
--workers N | --scheduler ADDRESS``.

The model is loaded once here, sent to every worker once (Dask keeps it in each
worker's memory), and each task predicts one image and writes its outputs as
``cellstack predict`` does (:class:`~cellstack.inference.export.PredictionWriter`),
then a small summary ``.cellstack-parts/{id}.json``: the mark that the image is done.
The summaries (``submission.csv``, ``results.json``, ``inputs.json``) are written at
the end, in the images' order, and the marks removed.

A run that stopped (a crash, a lost machine, Ctrl-C, an unreadable image) leaves its
marks: the same command again predicts only the images without one. ``--overwrite``
starts over instead. A worker that dies is replaced and its task retried by Dask; an
image that fails with a data error stops the job with one line naming it.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cellstack.distributed.cluster import limit_threads
from cellstack.distributed.tasks import JOB, TaskRunner, open_job, start_job
from cellstack.fileio import output_lock
from cellstack.inference.export import PARTS, PredictionWriter
from cellstack.inference.predict import PredictOptions, PredictSummary, prepare_output

if TYPE_CHECKING:
    from cellstack.inference.segmenter import Segmenter


def _image_task(
    segmenter: Segmenter, image_id: str, path: str, out: str, options: PredictOptions
) -> int:
    """On a worker: predict one image, write its outputs and its done mark; its cells."""
    limit_threads()
    writer = PredictionWriter(out, segmenter.class_names, options.outputs, options.spec)
    (result,) = segmenter.iter_many([path], spec=options.spec, progress=False)
    writer.add(image_id, result, path)
    writer.save_part(image_id)
    return len(result)


def predict_images(
    source: str | Path,
    images: str | Path,
    out: str | Path,
    options: PredictOptions | None = None,
    *,
    client: Any,
    device: str = "cpu",
    overwrite: bool = False,
    progress: bool = True,
) -> PredictSummary:
    """Predict every image of ``images`` on the workers of the Dask ``client`` into
    ``out`` with ``options`` (the outputs of
    :func:`~cellstack.inference.predict.predict_folder`, the same files). Resumes an
    interrupted run of the same source and images in ``out``.

    ``device``: where the workers run the model (``cuda`` with one GPU per worker).
    """
    from tqdm import tqdm

    options = options or PredictOptions()
    todo = options.check_inputs(images)
    out = Path(out)
    job = {"source": str(source), "images": [i for i, _ in todo]}
    t0 = time.perf_counter()
    with output_lock(out, "cellstack predict"):
        done = _resume_or_prepare(out, job, [p for _, p in todo], overwrite)
        seg = options.load(source, device)
        missing = [(i, p) for i, p in todo if i not in done]
        if done:
            print(f"resuming: {len(done)} of {len(todo)} images done, {len(missing)} to go")
        bar = tqdm(
            total=len(todo), initial=len(done), desc="images", unit="img", disable=not progress
        )
        with bar:
            TaskRunner(client, seg).map(
                _image_task,
                [(i, str(p), str(out), options) for i, p in missing],
                lambda k, exc: (
                    f"{exc} (image {missing[k][0]!r}; the images done so far are kept: run the "
                    "same command again to finish)"
                ),  # exc names the file already (every reader's errors do)
                bar,
            )
        writer = PredictionWriter(out, seg.class_names, options.outputs, options.spec)
        order = [i for i, _ in todo]
        merged = writer.merged([PredictionWriter.load_part(out, i) for i in order], order)
        merged.close(inputs=dict(todo))
        shutil.rmtree(out / PARTS)
    n_cells = len(merged.coco)
    return PredictSummary(out, len(todo), n_cells, time.perf_counter() - t0)


def _resume_or_prepare(out: Path, job: dict, inputs: list[Path], overwrite: bool) -> set[str]:
    """The image ids already done by an interrupted run of the same job (after which
    ``out`` is as it left it), or an empty set with ``out`` prepared as
    :func:`~cellstack.inference.predict.prepare_output` does."""
    refusal = (
        f"{out}: holds an unfinished run of another source or other images; run that "
        "command again to finish it, or pass --overwrite to start over"
    )
    if not overwrite and open_job(out / PARTS, job, refusal):
        return PredictionWriter.done_parts(out) - {Path(JOB).stem}
    prepare_output(out, inputs, overwrite)
    # Listed in the manifest like every output, so --overwrite removes it too.
    PredictionWriter(out, []).target(PARTS, JOB)
    start_job(out / PARTS, job)
    return set()
