"""Property-based probes of every reader of a user's file and of the public API's
arguments: whatever the input, it reads correctly (the same values back where a round
trip exists) or raises a :class:`CellstackError` in bounded time; never another
exception type, never a signal.

``make test`` runs the ``default`` profile (tests/conftest.py: a few hundred examples a
reader); ``benchmarks/fuzz.py`` runs the ``long`` one.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from cellstack.errors import CellstackError


def costly(share: int):
    """Settings of a probe whose example runs a model: 1/``share`` of the profile's
    examples, and the fixtures it takes (a finished tiny run, read only) shared by them."""
    return settings(
        max_examples=max(10, settings.default.max_examples // share),
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )


SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**64), 2**64),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
)
JSON = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=16,
)


def _with_file(suffix: str, content: bytes | str):
    """A temporary folder holding ``file{suffix}`` with ``content``; the folder path."""
    folder = tempfile.TemporaryDirectory()
    path = Path(folder.name) / f"file{suffix}"
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8", errors="surrogatepass")
    else:
        path.write_bytes(content)
    return folder, path


def _dumps(obj) -> str:
    return json.dumps(obj, allow_nan=True)


# ---------------------------------------------------------------------------- COCO json

H, W = 12, 16
COORDS = st.lists(
    st.one_of(
        st.floats(-40, 40),
        st.floats(allow_nan=True, allow_infinity=True),
        st.integers(-(10**12), 10**12),
        SCALARS,
    ),
    max_size=10,
)
SEGMENTATIONS = st.one_of(
    st.lists(COORDS, max_size=3),
    st.fixed_dictionaries(
        {
            "size": st.one_of(st.just([H, W]), JSON),
            "counts": st.one_of(
                st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=12),
                st.lists(st.integers(-3, H * W + 3), max_size=6),
                JSON,
            ),
        }
    ),
    JSON,
)
IMAGES = st.fixed_dictionaries(
    {
        "id": st.one_of(st.integers(0, 2), JSON),
        "file_name": st.one_of(st.sampled_from(["a.png", "b_1.tif", "../c.png", ""]), JSON),
        "height": st.one_of(st.just(H), st.integers(-1, 40), JSON),
        "width": st.one_of(st.just(W), st.integers(-1, 40), JSON),
    }
)
ANNOTATIONS = st.fixed_dictionaries(
    {
        "id": st.integers(0, 9),
        "image_id": st.one_of(st.integers(0, 2), JSON),
        "category_id": st.one_of(st.integers(0, 2), JSON),
        "segmentation": SEGMENTATIONS,
    }
)
COCO = st.fixed_dictionaries(
    {
        "images": st.one_of(st.lists(IMAGES, max_size=3), JSON),
        "annotations": st.one_of(st.lists(ANNOTATIONS, max_size=5), JSON),
        "categories": st.one_of(
            st.lists(st.fixed_dictionaries({"id": st.integers(0, 2), "name": SCALARS}), max_size=2),
            JSON,
        ),
    }
)


@given(doc=st.one_of(COCO, JSON), raw=st.one_of(st.none(), st.binary(max_size=64)))
def test_coco_json_reads_or_is_refused(doc, raw):
    from cellstack.data.livecell import read_coco_instances

    folder, path = _with_file(".json", raw if raw is not None else _dumps(doc))
    with folder:
        try:
            records = read_coco_instances(path)
        except CellstackError:
            return
        for rec in records:
            masks = rec.sparse_masks()
            assert masks.shape == (len(rec.rles), rec.height * rec.width)
            assert all(n > 0 for n in np.diff(masks.indptr))  # no empty annotation kept


def test_deeply_nested_json_is_refused_at_once():
    import time

    from cellstack.data.livecell import read_coco_instances

    for text in ("[" * 100_000 + "]" * 100_000, '{"images": ' + "[" * 100_000):
        folder, path = _with_file(".json", text)
        with folder:
            t0 = time.perf_counter()
            with pytest.raises(CellstackError, match="nested deeper than 32 levels"):
                read_coco_instances(path)
            assert time.perf_counter() - t0 < 5  # was 27 s and 10 GB, or a kill


@given(doc=JSON, chunk=st.sampled_from([1, 2, 3, 7, 4096]))
def test_json_depth_is_counted_outside_strings_across_chunks(doc, chunk):
    from cellstack.data import coco

    def depth(obj) -> int:
        if isinstance(obj, list | dict):
            values = obj.values() if isinstance(obj, dict) else obj
            return 1 + max((depth(v) for v in values), default=0)
        return 0

    d = depth(doc)
    assume(d > 0)
    folder, path = _with_file(".json", _dumps(doc))
    saved, coco._CHUNK = coco._CHUNK, chunk
    try:
        with folder:
            coco.check_json_depth(path, d)
            with pytest.raises(CellstackError):
                coco.check_json_depth(path, d - 1)
    finally:
        coco._CHUNK = saved


# ------------------------------------------------------------------ Sartorius CSV / RLE

CSV_FIELDS = st.one_of(
    st.text(alphabet="0123456789 ", max_size=12),
    st.text(alphabet="0123456789 -.e", max_size=10),
    st.text(max_size=6),
)


@given(
    rows=st.lists(
        st.tuples(
            st.sampled_from(["img", "img2", "", "../x", "a b"]),
            CSV_FIELDS,
            st.one_of(st.just(str(W)), CSV_FIELDS),
            st.one_of(st.just(str(H)), CSV_FIELDS),
            st.sampled_from(["shsy5y", "", "x,y"]),
        ),
        max_size=5,
    ),
    header=st.sampled_from(["id,annotation,width,height,cell_type", "id,annotation", "x,y,z"]),
)
def test_sartorius_csv_reads_or_is_refused(rows, header):
    import csv
    import io

    from cellstack.data.sartorius import read_train_csv

    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(header.split(","))
    writer.writerows(rows)
    folder, path = _with_file(".csv", text.getvalue())
    with folder:
        try:
            records = read_train_csv(path)
        except CellstackError:
            return
        for rec in records:
            assert rec.sparse_masks().shape[1] == rec.height * rec.width


@given(masks=hnp.arrays(bool, st.tuples(st.integers(0, 4), st.integers(1, 9), st.integers(1, 9))))
def test_sartorius_rle_round_trip(masks):
    from cellstack.data import rle
    from cellstack.data.sartorius import read_train_csv, write_train_csv

    masks = masks[[m.any() for m in masks]]
    n, h, w = masks.shape
    rows = [
        {"id": "img", "annotation": rle.encode(m), "width": w, "height": h, "cell_type": "x"}
        for m in masks
    ]
    folder = tempfile.TemporaryDirectory()
    with folder:
        path = Path(folder.name) / "train.csv"
        write_train_csv(path, rows)
        if n == 0:  # a header and no rows: no annotated image
            with pytest.raises(CellstackError, match="no rows"):
                read_train_csv(path)
            return
        (rec,) = read_train_csv(path)
        back = rec.sparse_masks().toarray().reshape(n, h, w)
        assert np.array_equal(back, masks)


# -------------------------------------------------------------------------- label images

LABEL_DTYPES = st.sampled_from(
    [np.uint8, np.uint16, np.int8, np.int32, np.int64, np.uint32, np.float32, np.float64]
)


@given(
    label=hnp.arrays(
        LABEL_DTYPES,
        hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=6),
        elements={"allow_nan": True, "allow_infinity": True},
    )
)
def test_label_images_read_back_or_are_refused(label):
    import tifffile

    from cellstack.data.labels import read_label_image

    folder = tempfile.TemporaryDirectory()
    with folder:
        path = Path(folder.name) / "label.tif"
        tifffile.imwrite(path, label)
        try:
            got = read_label_image(path)
        except CellstackError:
            return
        assert got.dtype == np.int32 and got.ndim == 2
        plain = np.squeeze(label) if label.ndim > 2 else label
        if plain.ndim == 2 and np.all(plain >= 0) and np.all(plain <= np.iinfo(np.int32).max):
            assert np.array_equal(got, plain.astype(np.int64))


@given(raw=st.binary(max_size=300), suffix=st.sampled_from([".tif", ".png", ".tiff"]))
def test_corrupt_label_files_are_refused(raw, suffix):
    from cellstack.data.labels import read_label_image

    folder, path = _with_file(suffix, raw)
    with folder:
        with pytest.raises(CellstackError):
            read_label_image(path)


# ------------------------------------------------------------ thresholds and ensembles

KEYS = ["mask_thresh", "score_thresh", "mask_nms_iou", "min_size", "convex_refill", "mask_offset"]
PARAMS = st.dictionaries(st.sampled_from([*KEYS, "nope"]), SCALARS, max_size=4)
THRESHOLDS = st.one_of(
    st.fixed_dictionaries(
        {"default": PARAMS},
        optional={"per_type": st.dictionaries(st.sampled_from(["cell", "x"]), PARAMS, max_size=2)},
    ),
    JSON,
)


def _yaml_text(doc, text) -> str:
    return text if text is not None else yaml.safe_dump(doc)


@given(doc=THRESHOLDS, text=st.one_of(st.none(), st.text(max_size=40)))
def test_thresholds_yaml_reads_or_is_refused(doc, text):
    from cellstack.inference.thresholds import read_thresholds

    folder, path = _with_file(".yaml", _yaml_text(doc, text))
    with folder:
        try:
            thresholds = read_thresholds(path)
        except CellstackError:
            return
        for params in (thresholds.default, *thresholds.per_type.values()):
            assert 0 < params.mask_thresh < 1 and 0 <= params.score_thresh <= 1


ENSEMBLES = st.fixed_dictionaries(
    {
        "models": st.one_of(
            st.lists(st.sampled_from(["RUN", "nope", "", "RUN/.."]), max_size=3), JSON
        )
    },
    optional={
        "flips": st.one_of(
            st.lists(st.sampled_from(["none", "h", "v", "hv", "x"]), max_size=3), JSON
        ),
        "postprocess": st.one_of(THRESHOLDS, JSON),
        "type_models": JSON,
        "weights_budget_mb": SCALARS,
        "nope": SCALARS,
    },
)


@costly(4)
@given(doc=st.one_of(ENSEMBLES, JSON), text=st.one_of(st.none(), st.text(max_size=30)))
def test_ensemble_yaml_loads_or_is_refused(base_run, doc, text):
    from cellstack.inference.sources import load_source

    content = _yaml_text(doc, text).replace("RUN", str(base_run))
    folder, path = _with_file(".yaml", content)
    with folder:
        try:
            source = load_source(path)
        except CellstackError:
            return
        assert source.model is not None


@given(
    content=st.one_of(
        JSON.map(_dumps),
        st.fixed_dictionaries({k: SCALARS for k in ("diameter_median", "box_p95", "area_p1")}).map(
            _dumps
        ),
        st.binary(max_size=40),
    )
)
def test_data_stats_json_reads_or_is_refused(content):
    from cellstack.data.stats import ObjectStats
    from cellstack.inference.sources import trained_sizes
    from cellstack.modeling.runfolder import read_data_stats

    folder, path = _with_file(".json", content)
    with folder:
        path.rename(path.parent / "data_stats.json")
        try:
            sizes = trained_sizes(read_data_stats(path.parent), path.parent)
        except CellstackError:
            return
        assert all(v is None or (math.isfinite(v) and v > 0) for v in sizes.values())
        try:
            data = json.loads(content)
        except (ValueError, UnicodeDecodeError, RecursionError):
            return
        stats = ObjectStats.recorded(data)
        assert stats is None or math.isfinite(stats.diameter_median)


# -------------------------------------------------------------------------- public API

ARRAYS = hnp.arrays(
    st.sampled_from([np.uint8, np.int32, np.int64, np.float32, np.float64, bool]),
    hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5),
    elements={"allow_nan": True, "allow_infinity": True},
)
ANY = st.one_of(ARRAYS, JSON, st.builds(object))


@given(y_true=ANY, y_pred=ANY, thresh=st.one_of(st.floats(-1, 1.5), SCALARS))
def test_matching_reads_or_refuses_its_arguments(y_true, y_pred, thresh):
    from cellstack.evaluation.matching import matching

    try:
        m = matching(y_true, y_pred, thresh)
    except CellstackError:
        return
    assert 0 <= m.tp <= min(m.n_true, m.n_pred)


@given(
    labels=hnp.arrays(
        np.int32, st.tuples(st.integers(1, 8), st.integers(1, 8)), elements=st.integers(0, 5)
    )
)
def test_matching_a_label_image_with_itself_is_perfect(labels):
    from cellstack.evaluation.matching import matching

    m = matching(labels, labels)
    assert m.tp == m.n_true == m.n_pred == len(np.unique(labels[labels > 0]))
    assert m.fp == m.fn == 0
    if labels.any():  # the foreground as one sparse mask
        sparse = sp.csr_matrix(labels.ravel()[None] > 0)
        assert matching(sparse, sparse).fp == 0


@pytest.fixture(scope="module")
def segmenter(base_run):
    import cellstack

    return cellstack.Segmenter.load(base_run, device="cpu")


@costly(3)
@given(
    image=st.one_of(
        hnp.arrays(
            st.sampled_from([np.uint8, np.uint16, np.float32, np.float64, np.int64]),
            hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=20),
            elements={"allow_nan": True, "allow_infinity": True},
        ),
        JSON,
    ),
    axes=st.one_of(st.none(), st.text(alphabet="ZYXCTQS", max_size=5), SCALARS),
    channel=st.one_of(
        st.none(), st.integers(-2, 3), st.lists(st.integers(-1, 3), max_size=3), SCALARS
    ),
    normalize=st.one_of(st.booleans(), st.tuples(st.floats(), st.floats()), SCALARS),
    diameter=st.one_of(st.none(), st.floats(), SCALARS),
)
def test_segmenter_call_reads_or_refuses_its_arguments(
    segmenter, image, axes, channel, normalize, diameter
):
    try:
        result = segmenter(
            image, axes=axes, channel=channel, normalize=normalize, diameter=diameter
        )
    except CellstackError:
        return
    assert result.labels.dtype == np.int32


@costly(5)
@given(
    path=st.one_of(st.sampled_from(["RUN", "nope", "", "RUN/model.pt"]), SCALARS),
    device=st.one_of(st.sampled_from(["cpu", "auto", "cuda:7", "gpu", "mps"]), SCALARS),
    diameter=st.one_of(st.none(), st.floats(), SCALARS),
    batch_size=st.one_of(st.none(), st.integers(-2, 4), SCALARS),
)
def test_segmenter_load_reads_or_refuses_its_arguments(
    base_run, path, device, diameter, batch_size
):
    import cellstack

    if path == "RUN":
        path = base_run
    elif isinstance(path, str) and path.startswith("RUN"):
        path = str(base_run) + path[3:]
    try:
        seg = cellstack.Segmenter.load(
            path, device=device, diameter=diameter, batch_size=batch_size
        )
    except CellstackError:
        return
    assert seg.device.type in ("cpu", "cuda", "mps")


@costly(8)
@given(
    images=st.one_of(
        st.lists(
            hnp.arrays(np.uint8, st.tuples(st.integers(8, 24), st.integers(8, 24))), max_size=2
        ),
        JSON,
    ),
    labels=st.one_of(
        st.lists(
            hnp.arrays(
                st.sampled_from([np.int32, np.float64, bool]),
                st.tuples(st.integers(8, 24), st.integers(8, 24)),
                elements={"allow_nan": True},
            ),
            max_size=2,
        ),
        JSON,
    ),
)
def test_optimize_thresholds_reads_or_refuses_its_arguments(segmenter, images, labels):
    try:
        tuned, result = segmenter.optimize_thresholds(images, labels, scales=False)
    except CellstackError:
        return
    assert result.after >= 0 and tuned is not None
