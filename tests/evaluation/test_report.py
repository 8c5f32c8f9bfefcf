import json

import numpy as np
import pytest

from cellstack.data.sartorius import read_train_csv
from cellstack.evaluation.report import evaluate


def test_truth_against_itself_and_against_nothing(synth_dir, tmp_path):
    records = read_train_csv(synth_dir / "train.csv")
    report = evaluate(records, {r.image_id: r.sparse_masks() for r in records})
    assert report.score == 1.0 and report.ap == 1.0
    assert set(report.per_cell_type) == {"shsy5y", "astro", "cort"}
    assert sum(report.counts.values()) == len(records)
    report.write_json(tmp_path / "r.json")
    data = json.loads((tmp_path / "r.json").read_text())
    assert {"score", "per_image", "per_cell_type", "ap", "ap50"} <= set(data)
    with pytest.warns(UserWarning, match="no prediction"):
        empty = evaluate(records, {})
    assert empty.score == 0.0
    assert "all" in empty.table()


def test_per_cell_type_is_the_mean_of_its_images(synth_dir):
    records = read_train_csv(synth_dir / "train.csv")
    half = {r.image_id: r.sparse_masks()[: len(r.rles) // 2] for r in records}
    report = evaluate(records, half)
    for cell_type, value in report.per_cell_type.items():
        ids = [r.image_id for r in records if r.cell_type == cell_type]
        assert value == pytest.approx(np.mean([report.per_image[i] for i in ids]))
    assert report.score == pytest.approx(np.mean(list(report.per_image.values())))
