import pytest

from cellstack.data.folds import grouped_stratified_folds, read_folds_csv, write_folds_csv
from cellstack.data.records import ImageRecord
from cellstack.errors import CellstackError


def _records(n_samples=30):
    out = []
    for s in range(n_samples):
        cell_type = ("shsy5y", "astro", "cort")[s % 3]
        for j in range(1 + s % 3):
            out.append(ImageRecord(f"{s}-{j}", None, 10, 10, cell_type, f"sample{s}"))
    return out


def test_groups_stay_together_and_types_balance(tmp_path):
    records = _records()
    folds = grouped_stratified_folds(records, 5, seed=1)
    by_sample = {}
    for r in records:
        by_sample.setdefault(r.sample_id, set()).add(folds[r.image_id])
    assert all(len(f) == 1 for f in by_sample.values())
    for cell_type in ("shsy5y", "astro", "cort"):
        counts = [
            sum(1 for r in records if r.cell_type == cell_type and folds[r.image_id] == k)
            for k in range(5)
        ]
        assert max(counts) - min(counts) <= 3, counts
    write_folds_csv(tmp_path / "folds.csv", records, folds)
    assert read_folds_csv(tmp_path / "folds.csv") == folds
    assert grouped_stratified_folds(records, 5, seed=1) == folds


def test_too_few_samples():
    with pytest.raises(CellstackError, match="3 samples cannot fill 5 folds"):
        grouped_stratified_folds(_records(3), 5)
    with pytest.raises(CellstackError, match="at least 2 folds"):
        grouped_stratified_folds(_records(3), 1)
