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

import json
import shutil
import time
from pathlib import Path
from typing import Any

from cellstack.data.images import PlaneSpec
from cellstack.distributed.cluster import limit_threads
from cellstack.errors import CellstackError
from cellstack.fileio import atomic_write, output_lock
from cellstack.inference.export import PARTS, PredictionWriter
from cellstack.inference.run import PredictSummary, check_predict_inputs, prepare_output
from cellstack.inference.segmenter import Segmenter

#: The job a parts folder belongs to (source and images): a resumed run must match it.
JOB = "job.json"


def _image_task(
    segmenter: Segmenter, image_id: str, path: str, out: str, options: dict, spec: PlaneSpec
) -> int:
    """On a worker: predict one image, write its outputs and its done mark; its cells."""
    limit_threads()
    writer = PredictionWriter(out, segmenter.class_names, **options)
    (result,) = segmenter.iter_many([path], spec=spec, progress=False)
    writer.add(image_id, result)
    writer.save_part(image_id)
    return len(result)


def predict_images(
    source: str | Path,
    images: str | Path,
    out: str | Path,
    *,
    client: Any,
    overrides: tuple[str, ...] = (),
    device: str = "cpu",
    overwrite: bool = False,
    allow_unfinished: bool = False,
    diameter: float | None = None,
    scale: float | None = None,
    spec: PlaneSpec | None = None,
    save_rois: bool = False,
    overlays: bool = True,
    label_dtype: str = "int32",
    save_geojson: bool = False,
    save_ome_zarr: bool = False,
    progress: bool = True,
) -> PredictSummary:
    """Predict every image of ``images`` on the workers of the Dask ``client`` into
    ``out`` (the outputs of :func:`~cellstack.inference.run.predict_folder`, the same
    files). Resumes an interrupted run of the same source and images in ``out``.

    ``device``: where the workers run the model (``cuda`` with one GPU per worker).
    """
    from distributed import as_completed
    from tqdm import tqdm

    spec = spec or PlaneSpec()
    todo = check_predict_inputs(images, spec, diameter, scale, label_dtype)
    out = Path(out)
    job = {"source": str(source), "images": [i for i, _ in todo]}
    options = {
        "overlays": overlays,
        "save_rois": save_rois,
        "label_dtype": label_dtype,
        "save_geojson": save_geojson,
        "save_ome_zarr": save_ome_zarr,
    }
    t0 = time.perf_counter()
    with output_lock(out, "cellstack predict"):
        done = _resume_or_prepare(out, job, [p for _, p in todo], overwrite)
        seg = Segmenter.load(
            source,
            device=device,
            diameter=diameter,
            scale=scale,
            overrides=overrides,
            allow_unfinished=allow_unfinished,
        )
        missing = [(i, p) for i, p in todo if i not in done]
        if done:
            print(f"resuming: {len(done)} of {len(todo)} images done, {len(missing)} to go")
        model = client.scatter(seg, broadcast=True)  # once per worker, kept there
        futures = {
            client.submit(_image_task, model, i, str(p), str(out), options, spec, pure=False): i
            for i, p in missing
        }
        bar = tqdm(
            total=len(todo), initial=len(done), desc="images", unit="img", disable=not progress
        )
        try:
            with bar:
                for future in as_completed(futures):
                    try:
                        future.result()
                    except CellstackError as exc:
                        # exc names the file already (every reader's errors do)
                        raise CellstackError(
                            f"{exc} (image {futures[future]!r}; the images done so far are "
                            "kept: run the same command again to finish)"
                        ) from None
                    bar.update(1)
        finally:
            for f in futures:
                f.cancel()
        writer = PredictionWriter(out, seg.class_names, **options)
        order = [i for i, _ in todo]
        merged = writer.merged([PredictionWriter.load_part(out, i) for i in order], order)
        merged.close(inputs=dict(todo))
        shutil.rmtree(out / PARTS)
    n_cells = len(merged.coco)
    return PredictSummary(out, len(todo), n_cells, time.perf_counter() - t0)


def _resume_or_prepare(out: Path, job: dict, inputs: list[Path], overwrite: bool) -> set[str]:
    """The image ids already done by an interrupted run of the same job (after which
    ``out`` is as it left it), or an empty set with ``out`` prepared as
    :func:`~cellstack.inference.run.prepare_output` does."""
    marker = out / PARTS / JOB
    if marker.is_file() and not overwrite:
        if json.loads(marker.read_text("utf-8")) != job:
            raise CellstackError(
                f"{out}: holds an unfinished run of another source or other images; run that "
                "command again to finish it, or pass --overwrite to start over"
            )
        return PredictionWriter.done_parts(out) - {Path(JOB).stem}
    prepare_output(out, inputs, overwrite)
    # Listed in the manifest like every output, so --overwrite removes it too.
    PredictionWriter(out, []).target(PARTS, JOB)
    with atomic_write(marker) as f:
        json.dump(job, f)
    return set()
