import numpy as np

from cellstack.data.synthetic import generate_image
from cellstack.evaluation.metric import score_image
from cellstack.inference.baseline import otsu_instances
from cellstack.inference.overlay import outline_overlay, side_by_side


def test_otsu_finds_isolated_blobs():
    img = np.full((60, 80), 120, np.uint8)
    img[10:20, 10:20] = 60  # a dark cell
    img[35:48, 50:62] = 200  # a bright one
    labels = otsu_instances(img)
    assert labels.max() == 2
    assert labels[15, 15] > 0 and labels[40, 55] > 0 and labels[55, 5] == 0


def test_otsu_on_synthetic_cort_finds_cells_and_empty_image_gives_none():
    synth = generate_image(np.random.default_rng(3), "cort", (200, 260))
    labels = otsu_instances(synth.image)
    assert labels.max() > 0
    assert score_image(synth.labels, labels).tp[0] > 0
    assert otsu_instances(np.full((30, 30), 128, np.uint8), min_size=50).max() == 0


def test_overlay_draws_outlines_in_class_colours():
    img = np.zeros((20, 20), np.uint8)
    labels = np.zeros((20, 20), np.int32)
    labels[5:10, 5:10] = 1
    labels[12:18, 12:18] = 2
    rgb = outline_overlay(img, labels, classes=np.array([0, 0, 1]))
    assert rgb.shape == (20, 20, 3)
    assert tuple(rgb[5, 7]) != tuple(rgb[12, 14]) and rgb[5, 7].any() and rgb[12, 14].any()
    assert not rgb[7, 7].any()  # interior untouched
    assert side_by_side(rgb, rgb).shape == (20, 44, 3)
