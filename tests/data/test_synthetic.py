import numpy as np
import pytest

from cellstack.data.sartorius import read_train_csv
from cellstack.data.synthetic import generate_image, synthesize


def _stats(labels):
    ids = np.unique(labels[labels > 0])
    areas = np.array([(labels == i).sum() for i in ids])
    elong = []
    for i in ids:
        ys, xs = np.nonzero(labels == i)
        ev = np.linalg.eigvalsh(np.cov(np.stack([xs, ys])) + 1e-6 * np.eye(2))
        elong.append(np.sqrt(ev[1] / ev[0]))
    return len(ids), areas, np.array(elong)


def test_cell_types_look_like_the_real_ones():
    stats = {
        t: _stats(generate_image(np.random.default_rng(1), t).labels)
        for t in ("shsy5y", "astro", "cort")
    }
    n = {t: s[0] for t, s in stats.items()}
    area = {t: np.median(s[1]) for t, s in stats.items()}
    elong = {t: np.median(s[2]) for t, s in stats.items()}
    assert n["shsy5y"] > n["cort"] > n["astro"]  # dense, sparse, few
    assert n["shsy5y"] > 100
    assert area["astro"] > 3 * area["shsy5y"] and area["astro"] > 3 * area["cort"]  # large
    assert elong["shsy5y"] > 1.6 > elong["cort"]  # elongated vs round


def test_images_look_like_phase_contrast():
    synth = generate_image(np.random.default_rng(2), "cort")
    img, fg = synth.image.astype(float), synth.labels > 0
    from scipy import ndimage

    ring = ndimage.binary_dilation(fg, iterations=2) & ~fg
    far = ~ndimage.binary_dilation(fg, iterations=8)
    assert img[ring].mean() > img[far].mean() + 5  # bright halo
    assert img[fg].mean() < img[ring].mean() - 10  # darker cells
    assert synth.image.dtype == np.uint8 and synth.image.shape == (520, 704)


def test_deterministic_per_seed(tmp_path):
    synthesize(tmp_path / "a", 3, seed=5, shape=(64, 80), progress=False)
    synthesize(tmp_path / "b", 3, seed=5, shape=(64, 80), progress=False)
    synthesize(tmp_path / "c", 3, seed=6, shape=(64, 80), progress=False)
    a, b, c = ((tmp_path / x / "train.csv").read_bytes() for x in "abc")
    assert a == b and a != c
    pngs = sorted((tmp_path / "a" / "train").glob("*.png"))
    assert [p.read_bytes() for p in pngs] == [
        (tmp_path / "b" / "train" / p.name).read_bytes() for p in pngs
    ]


def test_dataset_layout_and_metadata(synth_dir):
    records = read_train_csv(synth_dir / "train.csv")
    assert len(records) == 9
    assert {r.cell_type for r in records} == {"shsy5y", "astro", "cort"}
    assert len({r.sample_id for r in records}) < 9  # samples hold several images
    for rec in records:
        assert rec.image_path.is_file()
        label = rec.label_image()
        # Exact ground truth: no overlaps, every listed cell present.
        masks = rec.sparse_masks()
        assert masks.sum(axis=0).max() <= 1
        assert len(np.unique(label)) - 1 == len(rec.rles)
    header = (synth_dir / "train.csv").read_text().splitlines()[0]
    assert header == (
        "id,annotation,width,height,cell_type,plate_time,sample_date,sample_id,elapsed_timedelta"
    )


def test_unknown_type_and_bad_count(tmp_path):
    with pytest.raises(ValueError, match="unknown synthetic cell type"):
        synthesize(tmp_path, 1, cell_types=("hela",), progress=False)
    with pytest.raises(ValueError, match="at least 1"):
        synthesize(tmp_path, 0, progress=False)


def test_dense_sheet_in_oblique_light():
    synth = generate_image(np.random.default_rng(3), "sheet", (210, 576))
    n, areas, _ = _stats(synth.labels)
    diameter = 2 * np.sqrt(np.median(areas) / np.pi)
    assert 20 < diameter < 36 and n > 80  # dense 25-30 px cells, as the real frames
    labels = synth.labels
    touching = (labels[:, 1:] != labels[:, :-1]) & (labels[:, 1:] > 0) & (labels[:, :-1] > 0)
    assert touching.sum() > 1000  # neighbours share borders: no gaps between cells
    # Relief: opposite borders of a cell differ in brightness along the light direction,
    # with no phase halo (mean brightness around cells ~ inside them).
    img = synth.image.astype(float)
    gy, gx = np.gradient(img)
    assert max(abs(gx[labels > 0].mean()), abs(gy[labels > 0].mean())) < 1.0
    assert np.hypot(gx, gy)[labels > 0].mean() > 1.5


def test_fluorescent_nuclei_are_bright_on_dark():
    synth = generate_image(np.random.default_rng(4), "nuclei", (256, 256))
    fg = synth.labels > 0
    n, areas, _ = _stats(synth.labels)
    assert synth.image[fg].mean() > synth.image[~fg].mean() + 40
    assert 6 < 2 * np.sqrt(np.median(areas) / np.pi) < 18 and n > 20


@pytest.mark.parametrize("cell_type", ["cyto", "macrophage", "neuron"])
def test_whole_cells_in_a_cytoplasm_stain(cell_type):
    sizes, contrasts = [], []
    for seed in range(4):
        synth = generate_image(np.random.default_rng(seed), cell_type, (256, 256))
        fg = synth.labels > 0
        _, areas, _ = _stats(synth.labels)
        sizes.append(2 * np.sqrt(np.median(areas) / np.pi))
        contrasts.append(np.median(synth.image[fg]) - np.median(synth.image[~fg]))
        assert synth.image.dtype == np.uint8 and synth.labels.max() >= 1
    assert 14 < np.median(sizes) < 50  # whole cells: larger than the nuclei look
    assert min(contrasts) > 5  # stained cells brighter than the background, even when dim


def test_membrane_stain_outlines_a_confluent_sheet():
    synth = generate_image(np.random.default_rng(5), "membrane", (256, 256))
    labels, img = synth.labels, synth.image.astype(float)
    from cellstack.data.synthetic import _cell_interiors

    depth, _ = _cell_interiors(labels)
    assert (labels > 0).mean() > 0.6  # confluent
    # bright outlines: the pixels at a cell's outline outshine its interior
    assert img[(labels > 0) & (depth <= 1.5)].mean() > img[(labels > 0) & (depth >= 4)].mean() + 10


def test_whole_cell_densities_span_sparse_to_confluent():
    cover = [
        (generate_image(np.random.default_rng(s), "cyto", (256, 256)).labels > 0).mean()
        for s in range(12)
    ]
    assert min(cover) < 0.2 and max(cover) > 0.45
