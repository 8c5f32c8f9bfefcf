import numpy as np
import pytest

from cellstack.config import load_config
from cellstack.data.images import write_png
from cellstack.data.labels import write_label_tiff
from cellstack.data.layouts import load_dataset
from cellstack.data.stats import derive, measure
from cellstack.errors import CellstackError, DataError


def _discs(tmp_path, diameter: int, n_images: int = 2, shape=(200, 240)):
    """A label-image dataset of round cells of one diameter on a grid."""
    root = tmp_path / f"d{diameter}"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    step = int(diameter * 1.6)
    for k in range(n_images):
        labels = np.zeros(shape, np.int32)
        n = 0
        for cy in range(step // 2, shape[0] - diameter // 2, step):
            for cx in range(step // 2, shape[1] - diameter // 2, step):
                n += 1
                labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= (diameter / 2) ** 2] = n
        write_label_tiff(root / "labels" / f"im{k}.tif", labels)
        write_png(root / "images" / f"im{k}.png", np.where(labels > 0, 200, 60).astype(np.uint8))
    return load_dataset(root)


AUTO = [
    "model.backbone.stem_stride=auto",
    "model.rpn.anchor_scale=auto",
    "data.crop_size=auto",
    "predict.min_size=auto",
    "predict.max_detections=auto",
    "model.roi.mask_pool=auto",
    "model.roi.mask_norm=auto",
]


def test_measured_sizes_match_the_cells(tmp_path):
    stats = measure(_discs(tmp_path, 20))
    assert stats.diameter_median == pytest.approx(20, rel=0.1)
    assert stats.box_median == pytest.approx(21, abs=1.5)
    assert stats.images == 2 and stats.objects == 2 * stats.max_objects_per_image


def test_derived_settings_follow_the_object_size(tmp_path):
    small, _ = derive(load_config(None, AUTO), measure(_discs(tmp_path, 10)))
    large, derived = derive(load_config(None, AUTO), measure(_discs(tmp_path, 60)))
    # 10 px nuclei get smaller anchors, crops and minimum sizes than 60 px cells.
    assert small.model.rpn.anchor_scale < large.model.rpn.anchor_scale
    assert small.model.rpn.anchor_scale * 2 <= 12  # smallest anchor near 10 px
    assert small.data.crop_size < large.data.crop_size
    assert small.predict.min_size < large.predict.min_size
    assert small.predict.max_detections > large.predict.max_detections
    # 10 px nuclei need the finer stem (stride 2 levels); 60 px cells do not.
    assert (small.model.backbone.stem_stride, large.model.backbone.stem_stride) == (1, 2)
    assert set(derived) == {k.split("=")[0] for k in AUTO}
    assert all(
        isinstance(v, (int, float)) for k, v in derived.items() if k != "model.roi.mask_norm"
    )
    # Without a run to inherit from, the mask head is the original's (no norm).
    assert small.model.roi.mask_norm == large.model.roi.mask_norm == "none"


def test_only_auto_values_are_derived(tmp_path):
    cfg = load_config(None, ["data.crop_size=auto"])
    out, derived = derive(cfg, measure(_discs(tmp_path, 20)))
    assert list(derived) == ["data.crop_size"]
    assert out.model.rpn.anchor_scale == cfg.model.rpn.anchor_scale


def test_no_objects_is_an_error(tmp_path):
    recs = _discs(tmp_path, 20)
    root = recs[0].image_path.parent.parent
    for p in (root / "labels").iterdir():
        write_label_tiff(p, np.zeros((200, 240), np.int32))
    with pytest.raises(DataError, match="no annotated object"):
        measure(load_dataset(root))


def test_a_finetuned_run_inherits_the_mask_heads_norm(tmp_path):
    """A head with GroupNorm has other tensors than one without: a finetuned run that
    built the other kind would load only part of its start."""
    from cellstack.data.stats import inherit_sizes

    stats = measure(_discs(tmp_path, 20))
    source = load_config(None, ["model.roi.mask_norm=group"])
    cfg, out = inherit_sizes(load_config(None, ["model.roi.mask_norm=auto"]), stats, source, None)
    assert cfg.model.roi.mask_norm == out["model.roi.mask_norm"] == "group"
    # A value the user gave is theirs.
    cfg, out = inherit_sizes(load_config(None, ["model.roi.mask_norm=none"]), stats, source, None)
    assert cfg.model.roi.mask_norm == "none" and "model.roi.mask_norm" not in out


def test_auto_is_the_only_string_accepted():
    from cellstack.config import ConfigError

    with pytest.raises(ConfigError, match="expected a number or 'auto'"):
        load_config(None, ["data.crop_size=big"])
    with pytest.raises(ConfigError, match="not one of none, group, auto"):
        load_config(None, ["model.roi.mask_norm=batch"])


def test_every_scale_rule_shares_one_ratio_and_one_limit():
    """The trained/given diameter ratio and the 1/16..16 limit are decided once: a
    finetuning's inherited ``data.scale``, a calibration's scale search and predict's
    ``--diameter`` all go through them."""
    import dataclasses

    from cellstack.config.schema import MAX_RESIZE
    from cellstack.data.stats import ObjectStats, inherit_sizes, size_ratio, within_resize_limit
    from cellstack.inference.scale import resize_factor
    from cellstack.inference.tune import candidate_scales

    assert size_ratio(26.0, 13.0) == 2.0
    assert within_resize_limit(100.0) == MAX_RESIZE[1]
    assert within_resize_limit(1e-6) == MAX_RESIZE[0]
    assert max(candidate_scales(1.0, 1000.0, 1.0)) == MAX_RESIZE[1]
    assert min(candidate_scales(1.0, 1.0, 1000.0)) == MAX_RESIZE[0]
    # Cells 1,000 times smaller than the source's: the inherited scale stops at the limit.
    names = [f.name for f in dataclasses.fields(ObjectStats)]
    tiny = ObjectStats(**dict.fromkeys(names, 1.0))
    cfg = load_config(None, ["data.scale=auto"])
    inherited, _ = inherit_sizes(cfg, tiny, load_config(None), {"diameter_median": 1000.0})
    assert inherited.data.scale == MAX_RESIZE[1]
    # --diameter past the limit is refused by the same limit.
    source = type("S", (), {"diameter": 1000.0, "cfg": cfg})()
    with pytest.raises(CellstackError, match="outside 0.0625..16"):
        resize_factor(source, 1.0, None)
