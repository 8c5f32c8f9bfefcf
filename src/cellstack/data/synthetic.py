"""Synthetic microscopy images with exact instance masks.

Our stand-in for real data in tests, the demo and the benchmarks. Each cell type is one
:class:`CellType` row of :data:`TYPES` (its description, shape, density and look);
three phase-contrast ones mimic the Kaggle ones (:data:`CELL_TYPES`, the default), and
the others (:data:`OTHER_TYPES`) have other looks, so that defaults are not tuned to
phase contrast alone: oblique light, fluorescent nuclei, and fluorescent whole cells
(cytoplasm and membrane stains, with or without a nucleus channel). ``cellstack synth
--help`` lists them from the same table.

Phase-contrast rendering: a bright halo outside every cell boundary, a dark rim just
inside it, textured interiors, uneven illumination, out-of-focus ghosts and debris that
are not cells, blur and noise. Masks never overlap (a later cell only takes free pixels
and keeps its largest connected piece). Everything is drawn from one
``numpy.random.Generator``, so a seed gives the same dataset on every machine.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from scipy import ndimage

#: Kaggle's image size as (H, W).
DEFAULT_SHAPE = (520, 704)
_REFERENCE_AREA = DEFAULT_SHAPE[0] * DEFAULT_SHAPE[1]


@dataclass(frozen=True)
class SyntheticImage:
    """One generated image.

    Attributes:
        image: uint8[H, W] phase-contrast-like grayscale image.
        labels: int32[H, W] instance ids 1..N, 0 = background.
        cell_type: one of :data:`ALL_TYPES`.
    """

    image: np.ndarray
    labels: np.ndarray
    cell_type: str


# ---------------------------------------------------------------------------- shapes


def _blob_polygon(
    rng: np.random.Generator, radius: float, elongation: float, irregularity: float, angle: float
) -> np.ndarray:
    """Vertices float[K, 2] (x, y) around the origin of a smooth irregular blob."""
    theta = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    r = np.ones_like(theta)
    for k in range(2, 6):  # low harmonics: lumpy, never spiky
        r += rng.normal(0, irregularity / k) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    r = radius * np.clip(r, 0.45, None)
    x = r * np.cos(theta) * np.sqrt(elongation)
    y = r * np.sin(theta) / np.sqrt(elongation)
    c, s = np.cos(angle), np.sin(angle)
    return np.stack([c * x - s * y, s * x + c * y], axis=1)


def _process_path(
    rng: np.random.Generator, start: np.ndarray, angle: float, length: float, step: float = 3.0
) -> np.ndarray:
    """A wandering path float[K, 2] (x, y): a random walk with persistent direction."""
    n = max(2, int(length / step))
    turns = np.cumsum(rng.normal(0, 0.22, n))
    dirs = angle + turns
    steps = step * np.stack([np.cos(dirs), np.sin(dirs)], axis=1)
    return start + np.concatenate([np.zeros((1, 2)), np.cumsum(steps, axis=0)])


def _neurite(rng: np.random.Generator, body: np.ndarray, angle: float) -> list[tuple]:
    """shsy5y: sometimes a short neurite leaving from one tip of the body."""
    if rng.random() >= 0.35:
        return []
    tip = body[np.argmax(body @ np.array([np.cos(angle), np.sin(angle)]))]
    direction = angle + rng.normal(0, 0.3)
    return [(_process_path(rng, tip, direction, rng.uniform(8, 22), 2.0), 2, 1)]


def _edge_towards(body: np.ndarray, a: float, inset: float) -> np.ndarray:
    """The body's outline point farthest along direction ``a``, pulled in to ``inset`` of
    its distance from the centre: where a process leaves the cell."""
    return body[np.argmax(body @ np.array([np.cos(a), np.sin(a)]))] * inset


def _astro_processes(rng: np.random.Generator, body: np.ndarray, angle: float) -> list[tuple]:
    """astro: 2-6 long thin tapering processes, a third of them branched once."""
    paths = []
    for _ in range(rng.integers(2, 7)):
        a = rng.uniform(0, 2 * np.pi)
        path = _process_path(rng, _edge_towards(body, a, 0.7), a, rng.uniform(35, 150))
        paths.append((path, int(rng.integers(4, 8)), 2))
        if rng.random() < 0.35 and len(path) > 6:  # one branch
            k = int(rng.integers(len(path) // 3, len(path) - 2))
            branch = _process_path(rng, path[k], a + rng.choice([-0.8, 0.8]), rng.uniform(20, 60))
            paths.append((branch, 3, 2))
    return paths


def _neuron_neurites(rng: np.random.Generator, body: np.ndarray, angle: float) -> list[tuple]:
    """neuron: 2-5 thin neurites of 20-90 px leaving the soma in any direction."""
    paths = []
    for _ in range(rng.integers(2, 6)):
        a = rng.uniform(0, 2 * np.pi)
        path = _process_path(rng, _edge_towards(body, a, 0.8), a, rng.uniform(20, 90), 2.5)
        paths.append((path, 3, 1))
    return paths


def _lamellipodia(rng: np.random.Generator, body: np.ndarray, angle: float) -> list[tuple]:
    """macrophage: 0-4 short broad protrusions (lamellipodia, filopodia)."""
    paths = []
    for _ in range(rng.integers(0, 5)):
        a = rng.uniform(0, 2 * np.pi)
        path = _process_path(rng, _edge_towards(body, a, 0.8), a, rng.uniform(6, 20), 2.0)
        paths.append((path, 7, 2))
    return paths


@dataclass(frozen=True)
class CellType:
    """One synthetic cell type: what it looks like and how its cells are drawn.

    Attributes:
        name: the type's name (``synth --cell-types``, the records' cell type).
        description: one line for docs and ``--help``.
        look: ``phase`` (phase contrast), ``relief`` (oblique light),
            ``fluorescence`` (nuclei), ``cytoplasm`` or ``membrane`` (whole cells in
            fluorescence: a cytoplasm or membrane stain, half of the images with a
            nucleus channel averaged in, as ``--channel C N`` reads a two-channel file).
        count: cells tried per Kaggle-sized (704x520) image, uniform in this range
            (scaled with the image area).
        min_kept: a cell whose largest free piece is under this share of it is dropped.
        clumps: ``(count range, spread range px)`` of the clumps 80% of the cells
            gather in (neighbours roughly aligned); None: spread uniformly.
        radius, elongation, irregularity: the body's blob (:func:`_blob_polygon`).
        processes: extra thin paths per cell (neurites, processes), or None.
        phase: the phase-contrast look: halo brightness, halo width, rim darkness,
            centre darkness, interior offset, texture.
        sheet: a confluent sheet of Voronoi cells instead of placed blobs.
    """

    name: str
    description: str
    look: str
    count: tuple[float, float] = (0.0, 0.0)
    min_kept: float = 0.0
    clumps: tuple[tuple[int, int], tuple[float, float]] | None = None
    radius: tuple[float, float] = (0.0, 0.0)
    elongation: tuple[float, float] = (1.0, 1.0)
    irregularity: float = 0.0
    processes: Callable[[np.random.Generator, np.ndarray, float], list[tuple]] | None = None
    phase: tuple[float, ...] = ()
    sheet: bool = False


#: Every synthetic cell type, by name, in the order ``--help`` lists them.
TYPES = {
    t.name: t
    for t in (
        CellType(
            "shsy5y",
            "many small elongated cells in dense touching clumps, locally aligned, some with "
            "a short neurite",
            "phase",
            count=(110, 320),
            min_kept=0.55,  # dense: cells press against each other
            clumps=((2, 7), (35, 110)),
            radius=(5.0, 8.5),
            elongation=(1.8, 3.6),
            irregularity=0.12,
            processes=_neurite,
            phase=(34.0, 1.8, 16.0, 10.0, 4.0, 7.0),
        ),
        CellType(
            "astro",
            "few large irregular flat cells with long thin tapering processes, low contrast "
            "and textured",
            "phase",
            count=(6, 22),
            min_kept=0.6,
            radius=(12, 22),
            elongation=(1.0, 1.7),
            irregularity=0.3,
            processes=_astro_processes,
            phase=(16.0, 1.5, 8.0, 2.0, 6.0, 9.0),
        ),
        CellType(
            "cort",
            "small round sparse cells with the dark centre and bright halo of a rounded cell",
            "phase",
            count=(15, 70),
            min_kept=0.85,  # sparse: they rarely touch
            radius=(5.0, 9.0),
            elongation=(1.0, 1.35),
            irregularity=0.06,
            phase=(42.0, 2.2, 12.0, 22.0, -2.0, 5.0),
        ),
        CellType(
            "sheet",
            "a dense confluent sheet of touching polygonal cells (22-32 px) under oblique "
            "(DIC-like) light: a relief, bright facing the light, dark on the other side",
            "relief",
            sheet=True,
        ),
        CellType(
            "nuclei",
            "widefield fluorescent nuclei (8-16 px) on a dark background, dim and bright, "
            "touching in clusters, some out of focus; masks the exact outlines",
            "fluorescence",
            count=(250, 700),
            min_kept=0.7,
            clumps=((3, 9), (30, 90)),
            radius=(4.0, 8.0),
            elongation=(1.0, 1.5),
            irregularity=0.05,
        ),
        CellType(
            "cyto",
            "round to oval whole cells (18-32 px) in a cytoplasm stain, sparse to confluent "
            "in clumps, dim to saturated, the nucleus darker or brighter; half with a "
            "nucleus channel averaged in",
            "cytoplasm",
            count=(15, 500),
            min_kept=0.6,
            clumps=((2, 8), (30, 120)),
            radius=(9.0, 16.0),
            elongation=(1.0, 1.6),
            irregularity=0.12,
        ),
        CellType(
            "macrophage",
            "spread irregular whole cells (25-45 px) with short broad protrusions in a "
            "cytoplasm stain, sparse to touching",
            "cytoplasm",
            count=(8, 90),
            min_kept=0.6,
            clumps=((2, 6), (40, 140)),
            radius=(12.0, 22.0),
            elongation=(1.0, 2.2),
            irregularity=0.35,
            processes=_lamellipodia,
        ),
        CellType(
            "neuron",
            "small somata (14-24 px) with 2-5 thin neurites in a cytoplasm stain, sparse",
            "cytoplasm",
            count=(10, 70),
            min_kept=0.6,
            radius=(7.0, 12.0),
            elongation=(1.0, 1.5),
            irregularity=0.12,
            processes=_neuron_neurites,
        ),
        CellType(
            "membrane",
            "a confluent sheet of polygonal cells (22-32 px) in a membrane stain: bright "
            "outlines, dim interiors, some gaps",
            "membrane",
            sheet=True,
        ),
    )
}
#: The Kaggle-like phase-contrast types: ``synth``'s default.
CELL_TYPES = tuple(name for name, t in TYPES.items() if t.look == "phase")
#: Cell types with other imaging looks (relief, fluorescence).
OTHER_TYPES = tuple(name for name, t in TYPES.items() if t.look != "phase")
ALL_TYPES = tuple(TYPES)


def cell_type_of(name: str) -> CellType:
    """The :class:`CellType` called ``name``.

    Raises:
        ValueError: no such type.
    """
    if name not in TYPES:
        raise ValueError(f"unknown synthetic cell type {name!r}; choose from {ALL_TYPES}")
    return TYPES[name]


def _draw_cell(
    rng: np.random.Generator, cell_type: str, angle: float
) -> tuple[np.ndarray, np.ndarray]:
    """Rasterise one cell on a local patch.

    Returns:
        ``(mask, origin)``: bool[h, w] patch and the (x, y) offset of the cell's
        centre inside it.
    """
    pad = 6
    kind = cell_type_of(cell_type)
    body = _blob_polygon(
        rng, rng.uniform(*kind.radius), rng.uniform(*kind.elongation), kind.irregularity, angle
    )
    paths = kind.processes(rng, body, angle) if kind.processes is not None else []
    points = np.concatenate([body] + [p for p, _, _ in paths])
    lo = np.floor(points.min(axis=0)) - pad
    hi = np.ceil(points.max(axis=0)) + pad
    size = (hi - lo).astype(int) + 1
    mask = np.zeros((size[1], size[0]), dtype=np.uint8)
    shift = 4  # cv2 sub-pixel drawing: coordinates in 1/16 pixel
    scale = 1 << shift
    cv2.fillPoly(mask, [np.round((body - lo) * scale).astype(np.int32)], 1, cv2.LINE_8, shift)
    for path, width_start, width_end in paths:
        widths = np.linspace(width_start, width_end, len(path) - 1)
        pts = np.round((path - lo) * scale).astype(np.int32)
        for a, b, w in zip(pts[:-1], pts[1:], widths, strict=True):
            cv2.line(mask, tuple(a), tuple(b), 1, max(1, round(w)), cv2.LINE_8, shift)
    return mask.astype(bool), -lo


def _place(
    labels: np.ndarray,
    mask: np.ndarray,
    centre: np.ndarray,
    origin: np.ndarray,
    instance_id: int,
    min_kept: float,
) -> bool:
    """Paint ``mask`` into ``labels`` on free pixels only; return whether it was kept.

    The cell keeps its largest connected piece of free pixels, and is dropped when that
    is under ``min_kept`` of its area or under 12 pixels (too small to annotate).
    """
    h, w = labels.shape
    x0, y0 = np.round(centre - origin).astype(int)
    ys = slice(max(y0, 0), min(y0 + mask.shape[0], h))
    xs = slice(max(x0, 0), min(x0 + mask.shape[1], w))
    if ys.start >= ys.stop or xs.start >= xs.stop:
        return False
    patch = mask[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]
    free = patch & (labels[ys, xs] == 0)
    pieces, n = ndimage.label(free)
    if n == 0:
        return False
    sizes = np.bincount(pieces.ravel())[1:]
    keep = pieces == (np.argmax(sizes) + 1)
    area = int(keep.sum())
    if area < 12 or area < min_kept * mask.sum():
        return False
    labels[ys, xs][keep] = instance_id
    return True


def _clumps(
    rng: np.random.Generator,
    shape: tuple[int, int],
    count: tuple[int, int],
    spread: tuple[float, float],
) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """``(n, centres float[n, 2] (x, y), spreads float[n], angles float[n])`` of the
    clumps cells gather in; spreads grow with the image (``spread`` is for Kaggle's)."""
    h, w = shape
    n = int(rng.integers(*count))
    centres = rng.uniform([0, 0], [w, h], size=(n, 2))
    scale = np.sqrt(max((h * w) / _REFERENCE_AREA, 0.05))
    spreads = rng.uniform(*spread, size=n) * scale
    return n, centres, spreads, rng.uniform(0, np.pi, size=n)


def synthetic_labels(
    rng: np.random.Generator, cell_type: str, shape: tuple[int, int], n_cells: int | None = None
) -> np.ndarray:
    """Instance label image int32[H, W] of non-overlapping cells of one type.

    Args:
        n_cells: how many cells to try to place (fewer fit when the image is full);
            default: the cell type's usual density for the image area.
    """
    h, w = shape
    area_scale = (h * w) / _REFERENCE_AREA
    kind = cell_type_of(cell_type)
    if kind.sheet:
        return _sheet_labels(rng, shape)
    labels = np.zeros(shape, dtype=np.int32)
    n_target = max(1, round(rng.uniform(*kind.count) * area_scale))
    if kind.clumps is not None:
        n_clumps, clumps, spreads, clump_angles = _clumps(rng, shape, *kind.clumps)
    if n_cells is not None:
        n_target = n_cells
    placed, attempts = 0, 0
    while placed < n_target and attempts < 6 * n_target:
        attempts += 1
        if kind.clumps is not None and rng.random() < 0.8:
            k = int(rng.integers(n_clumps))
            centre = rng.normal(clumps[k], spreads[k])
            angle = clump_angles[k] + rng.normal(0, 0.5)  # neighbours roughly aligned
        else:
            centre = rng.uniform([0, 0], [w, h])
            angle = rng.uniform(0, np.pi)
        mask, origin = _draw_cell(rng, cell_type, angle)
        if _place(labels, mask, centre, origin, placed + 1, kind.min_kept):
            placed += 1
    return labels


def _sheet_labels(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """A confluent sheet: Voronoi cells of jittered hexagonal seeds (spacing 22-32 px)
    covering most of the frame, with a few gaps where cells are missing."""
    from scipy.spatial import cKDTree

    h, w = shape
    spacing = rng.uniform(22, 32)
    rows = np.arange(-spacing, h + spacing, spacing * np.sqrt(3) / 2)
    seeds = np.array(
        [
            (x + (k % 2) * spacing / 2, y)
            for k, y in enumerate(rows)
            for x in np.arange(-spacing, w + spacing, spacing)
        ]
    )
    seeds = seeds + rng.normal(0, spacing * 0.18, seeds.shape)
    gy, gx = np.mgrid[0:h, 0:w]
    _, nearest = cKDTree(seeds).query(np.stack([gx.ravel(), gy.ravel()], axis=1))
    labels = (nearest.reshape(h, w) + 1).astype(np.int32)
    # Gaps: a smooth random field leaves 0-30% of the frame without cells.
    field = _smooth_field(rng, shape, int(spacing * 4))
    empty = field > np.quantile(field, 1 - rng.uniform(0.0, 0.3))
    ids = np.unique(labels)
    gone = np.zeros(ids.max() + 1, dtype=bool)
    gone[np.unique(labels[empty])] = rng.random(len(np.unique(labels[empty]))) < 0.8
    labels[gone[labels]] = 0
    # Renumber 1..N (cut at the frame edge, every piece is still one cell).
    _, inverse = np.unique(labels, return_inverse=True)
    out = inverse.reshape(h, w).astype(np.int32)
    return out if labels.min() == 0 else out + 1


# ---------------------------------------------------------------------------- rendering


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], cell: int) -> np.ndarray:
    """A smooth random field float32[H, W] with unit standard deviation."""
    h, w = shape
    coarse = rng.normal(size=(max(2, h // cell + 2), max(2, w // cell + 2))).astype(np.float32)
    field = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    return (field - field.mean()) / (field.std() + 1e-6)


def _render(rng: np.random.Generator, labels: np.ndarray, cell_type: str) -> np.ndarray:
    """uint8[H, W] image of the cells in ``labels`` in the look of their type."""
    kind = cell_type_of(cell_type)
    if kind.look == "relief":
        return _render_relief(rng, labels)
    if kind.look == "fluorescence":
        return _render_fluorescent(rng, labels)
    if kind.look in ("cytoplasm", "membrane"):
        return _render_whole_cells(rng, labels, kind.look)
    return _render_phase(rng, labels, kind.phase)


def _render_relief(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    """Oblique-light (DIC-like) uint8[H, W] image: the derivative of a height map along
    the light's direction, so every cell is a dome lit from one side."""
    h, w = labels.shape
    inside = ndimage.distance_transform_edt(labels > 0)
    # Each cell a dome: distance to its own border (boundaries between touching cells
    # count as borders), softened.
    edges = np.zeros((h, w), dtype=bool)
    edges[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edges[1:, :] |= labels[1:, :] != labels[:-1, :]
    dome = ndimage.distance_transform_edt(~edges & (labels > 0))
    height = np.sqrt(np.minimum(dome, inside)).astype(np.float32)
    height *= np.concatenate([[0.0], rng.uniform(0.7, 1.3, labels.max())]).astype(np.float32)[
        labels
    ]
    height += 0.35 * _smooth_field(rng, (h, w), 4) * (labels > 0)  # granular interiors
    height = cv2.GaussianBlur(height, (0, 0), rng.uniform(1.0, 1.6))
    a = rng.uniform(0, 2 * np.pi)
    gy, gx = np.gradient(height)
    img = np.full((h, w), rng.uniform(110, 145), dtype=np.float32)
    img += rng.uniform(25, 40) * (np.cos(a) * gx + np.sin(a) * gy)
    img += rng.uniform(3, 8) * _smooth_field(rng, (h, w), 150)  # uneven illumination
    img += _ghosts_and_debris(rng, (h, w), labels > 0)
    img += rng.normal(0, rng.uniform(2.0, 4.5), size=(h, w)).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def _render_fluorescent(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    """Widefield fluorescence uint8[H, W]: textured nuclei on a dark background, dim
    and bright (a 15x range of stain per nucleus), some out of focus (blurred alone, as
    a nucleus above or below the focal plane), with blur and shot noise. The labels
    stay the exact outlines."""
    h, w = labels.shape
    fg = labels > 0
    n = int(labels.max())
    brightness = np.concatenate([[0.0], np.exp(rng.uniform(np.log(15), np.log(230), n))])
    inside = ndimage.distance_transform_edt(fg).astype(np.float32)
    img = brightness.astype(np.float32)[labels] * (0.75 + 0.25 * (1 - np.exp(-inside / 2.5)))
    img *= 1 + 0.2 * _smooth_field(rng, (h, w), 3) * fg  # chromatin texture
    defocused = np.concatenate([[False], rng.random(n) < 0.2])[labels]
    if defocused.any():
        soft = cv2.GaussianBlur(np.where(defocused, img, 0), (0, 0), rng.uniform(1.5, 3.0))
        img = np.where(defocused, 0, img) + soft
    img += rng.uniform(8, 25) + rng.uniform(2, 6) * _smooth_field(rng, (h, w), 200)
    img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.8, 1.4))
    img = rng.poisson(np.clip(img, 0, None) / 2.0).astype(np.float32) * 2.0  # shot noise
    img += rng.normal(0, 2.0, size=(h, w)).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def _cell_interiors(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(depth float32[H, W], core bool[H, W])``: each pixel's distance to its own
    cell's outline (outlines between touching cells count), and the cell's inner core
    (depth over 45% of the cell's deepest pixel): where its nucleus sits."""
    edges = np.zeros(labels.shape, dtype=bool)
    edges[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edges[1:, :] |= labels[1:, :] != labels[:-1, :]
    depth = ndimage.distance_transform_edt(~edges & (labels > 0)).astype(np.float32)
    n = int(labels.max())
    deepest = np.concatenate(
        [[np.inf], ndimage.maximum(depth, labels, np.arange(1, n + 1)) if n else []]
    ).astype(np.float32)
    return depth, (labels > 0) & (depth > 0.45 * deepest[labels])


def _microscope(rng: np.random.Generator, signal: np.ndarray) -> np.ndarray:
    """A widefield camera's view of ``signal`` (float32[H, W], ~0-1 per unit of stain):
    out-of-focus haze, the optics' blur, a dark offset with uneven illumination, a gain
    that leaves some images dim and saturates others, shot and read noise. uint8."""
    h, w = signal.shape
    haze = cv2.GaussianBlur(signal, (0, 0), rng.uniform(6, 14)) * rng.uniform(0.0, 0.35)
    img = cv2.GaussianBlur(signal + haze, (0, 0), rng.uniform(0.7, 2.0))
    img *= 1 + rng.uniform(0.0, 0.25) * _smooth_field(rng, (h, w), 200)
    img = img * 255 * np.exp(rng.uniform(np.log(0.25), np.log(1.8)))  # dim ... saturated
    img += rng.uniform(4, 30)
    photons = rng.uniform(0.3, 3.0)  # photons per grey level: lower is noisier
    img = rng.poisson(np.clip(img, 0, None) * photons).astype(np.float32) / photons
    img += rng.normal(0, rng.uniform(1.0, 4.0), size=(h, w)).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def _render_whole_cells(rng: np.random.Generator, labels: np.ndarray, look: str) -> np.ndarray:
    """Whole cells in fluorescence, uint8[H, W].

    ``cytoplasm``: each cell filled with stain (a 6x range between cells, thinner and
    dimmer at its edge, textured), its nucleus darker (excluded) or brighter;
    ``membrane``: bright outlines, dim interiors. Half of the images average in a
    nucleus channel (each channel scaled to its own range first, as ``--channel C N``
    reads a two-channel file). The labels stay the exact outlines.
    """
    h, w = labels.shape
    n = int(labels.max())
    fg = labels > 0
    depth, core = _cell_interiors(labels)
    stain = np.concatenate([[0.0], np.exp(rng.uniform(np.log(0.15), np.log(0.9), n))])
    stain = stain.astype(np.float32)[labels]
    texture = 1 + rng.uniform(0.05, 0.3) * _smooth_field(rng, (h, w), 3)
    if look == "membrane":
        width = rng.uniform(0.6, 1.6)
        interior = rng.uniform(0.02, 0.25)
        signal = stain * (interior + (1 - interior) * np.exp(-np.maximum(depth - 1, 0) / width))
    else:
        edge = rng.uniform(1.5, 5.0)
        signal = stain * (0.35 + 0.65 * (1 - np.exp(-depth / edge)))
        signal = np.where(core, signal * rng.uniform(0.45, 1.4), signal)
    cyto = _microscope(rng, signal * texture * fg)
    if rng.random() < 0.5:
        return cyto
    nucleus = np.concatenate([[0.0], np.exp(rng.uniform(np.log(0.3), np.log(1.0), n))])
    nuclei = _microscope(rng, nucleus.astype(np.float32)[labels] * core * texture)
    from cellstack.data.images import to_gray_uint8

    both = (to_gray_uint8(cyto).astype(np.float32) + to_gray_uint8(nuclei)) / 2
    return to_gray_uint8(both)


def _render_phase(
    rng: np.random.Generator, labels: np.ndarray, look: tuple[float, ...]
) -> np.ndarray:
    """Phase-contrast-like uint8[H, W] image of the cells in ``labels``."""
    h, w = labels.shape
    halo_amp, halo_w, rim_amp, centre_amp, offset, texture = look
    fg = labels > 0
    n = int(labels.max())
    # Per-cell contrast; outside pixels take the contrast of their nearest cell.
    contrast = np.concatenate([[0.0], rng.uniform(0.55, 1.35, size=n)]).astype(np.float32)
    if n:
        d_out, (iy, ix) = ndimage.distance_transform_edt(~fg, return_indices=True)
        nearest = labels[iy, ix]
    else:
        d_out, nearest = np.full(labels.shape, np.inf), labels
    d_in = ndimage.distance_transform_edt(fg)
    c = contrast[nearest]
    img = np.full((h, w), rng.uniform(112, 150), dtype=np.float32)
    img += rng.uniform(3, 8) * _smooth_field(rng, (h, w), 180)  # uneven illumination
    gy, gx = np.mgrid[0:h, 0:w].astype(np.float32)
    a = rng.uniform(0, 2 * np.pi)
    img += rng.uniform(0, 10) * ((np.cos(a) * gx / w) + (np.sin(a) * gy / h))
    img += c * halo_amp * np.exp(-d_out / halo_w) * ~fg
    inside = fg.astype(np.float32)
    img += (
        inside
        * c
        * (
            offset
            - rim_amp * np.exp(-(d_in - 1) / 1.3)
            - centre_amp * (1 - np.exp(-d_in / 3.5))
            + texture * _smooth_field(rng, (h, w), 3)
        )
    )
    img += _ghosts_and_debris(rng, (h, w), fg)
    img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.6, 1.0))  # optics
    img += rng.normal(0, rng.uniform(2.5, 5.5), size=(h, w)).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def _ghosts_and_debris(
    rng: np.random.Generator, shape: tuple[int, int], fg: np.ndarray
) -> np.ndarray:
    """Unlabelled structure: faint out-of-focus ghosts and small specks of debris."""
    h, w = shape
    layer = np.zeros(shape, dtype=np.float32)
    area_scale = (h * w) / _REFERENCE_AREA
    for _ in range(rng.poisson(4 * area_scale)):  # ghosts: a soft ring, no dark interior
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(4, 10)
        cv2.circle(layer, (int(cx), int(cy)), int(r), rng.uniform(8, 16), 2, cv2.LINE_AA)
    for _ in range(rng.poisson(60 * area_scale)):  # debris specks, bright or dark
        cx, cy = int(rng.uniform(0, w)), int(rng.uniform(0, h))
        cv2.circle(
            layer, (cx, cy), int(rng.integers(1, 3)), rng.choice([-1, 1]) * rng.uniform(15, 40), -1
        )
    layer = cv2.GaussianBlur(layer, (0, 0), 1.2)
    return layer * ~fg


def generate_image(
    rng: np.random.Generator,
    cell_type: str,
    shape: tuple[int, int] = DEFAULT_SHAPE,
    n_cells: int | None = None,
) -> SyntheticImage:
    """Generate one image of ``cell_type`` at ``shape`` = (H, W).

    Cell counts scale with the image area (``n_cells``: try to place this many
    instead); cell sizes do not (they are in pixels).
    """
    cell_type_of(cell_type)  # an unknown type fails before anything is drawn
    labels = synthetic_labels(rng, cell_type, shape, n_cells)
    return SyntheticImage(_render(rng, labels, cell_type), labels, cell_type)


# ---------------------------------------------------------------------------- datasets


def synthesize(
    out_dir: str | Path,
    n_images: int,
    *,
    seed: int = 0,
    shape: tuple[int, int] = DEFAULT_SHAPE,
    cell_types: Sequence[str] = CELL_TYPES,
    livecell: bool = False,
    progress: bool = True,
) -> list[str]:
    """Write a synthetic dataset in the Sartorius layout (and optionally LIVECell's).

    Writes ``out_dir/train.csv`` and ``out_dir/train/{id}.png``; with ``livecell``,
    also ``out_dir/livecell/images/{name}.tif`` and
    ``out_dir/livecell/livecell_coco_{train,val,test}.json`` (a 70/15/15 split).
    Images come in samples of 1-3 (same ``sample_id``, different ``plate_time``), so
    grouped folds have something to group. The same arguments give the same files.

    Returns:
        The image ids, in generation order.
    """
    from tqdm import tqdm

    from cellstack.data import rle
    from cellstack.data.coco import label_annotations
    from cellstack.data.images import write_png, write_tiff
    from cellstack.data.sartorius import write_train_csv

    _check_arguments(n_images, shape, cell_types)
    out_dir = Path(out_dir)
    root = np.random.SeedSequence(seed)
    plan_rng = np.random.default_rng(root.spawn(1)[0])
    image_seeds = root.spawn(n_images + 1)[1:]
    rows, ids, coco_images = [], [], []
    # Each image's COCO annotations wait here, one json line per image, until the
    # split is drawn: memory stays flat in the number of images.
    pending = tempfile.TemporaryFile() if livecell else None
    offsets: list[int] = []
    sample_left, sample_no, cell_type = 0, 0, cell_types[0]
    type_order = list(plan_rng.permutation(len(cell_types)))
    for i in tqdm(range(n_images), desc="synthesizing", unit="img", disable=not progress):
        if sample_left == 0:  # start a new sample: 1-3 images of one well over time
            cell_type = cell_types[type_order[sample_no % len(cell_types)]]
            sample_left = int(plan_rng.integers(1, 4))
            well = f"{'ABCDEFGH'[plan_rng.integers(8)]}{plan_rng.integers(1, 13)}"
            sample_id = f"{cell_type}[synthetic]_{well}-{sample_no + 1}"
            date = f"2020-{plan_rng.integers(1, 13):02d}-{plan_rng.integers(1, 29):02d}"
            hours = 0
            sample_no += 1
        sample_left -= 1
        hours += int(plan_rng.integers(6, 25))
        image_id = f"{plan_rng.integers(16**12):012x}"
        synth = generate_image(np.random.default_rng(image_seeds[i]), cell_type, shape)
        write_png(out_dir / "train" / f"{image_id}.png", synth.image)
        _, rles = rle.encode_labels(synth.labels)
        meta = {
            "id": image_id,
            "width": shape[1],
            "height": shape[0],
            "cell_type": cell_type,
            "plate_time": f"{hours}h00m00s",
            "sample_date": date,
            "sample_id": sample_id,
            "elapsed_timedelta": f"0 days {hours:02d}:00:00",
        }
        rows.extend({**meta, "annotation": r} for r in rles)
        if not rles:  # keep empty images in the CSV: one row, empty annotation
            rows.append({**meta, "annotation": ""})
        ids.append(image_id)
        if livecell:
            name = f"{cell_type}_Phase_{image_id}.tif"
            write_tiff(out_dir / "livecell" / "images" / name, synth.image)
            coco_images.append(
                {"id": i + 1, "file_name": name, "width": shape[1], "height": shape[0]}
            )
            offsets.append(pending.tell())
            category = list(cell_types).index(cell_type) + 1
            line = json.dumps(label_annotations(synth.labels, category)) + "\n"
            pending.write(line.encode())
    write_train_csv(out_dir / "train.csv", rows)
    if livecell:
        with pending:
            _write_livecell(
                out_dir / "livecell", plan_rng, coco_images, (pending, offsets), cell_types
            )
    return ids


def _check_arguments(n_images: int, shape: tuple[int, int], cell_types: Sequence[str]) -> None:
    """Refuse what :func:`synthesize` cannot draw, before anything is written."""
    from cellstack.data.limits import check_image_size
    from cellstack.errors import CellstackError

    if n_images < 1:
        raise CellstackError(f"--n-images must be at least 1, got {n_images}")
    if min(shape) < 16:
        raise CellstackError(
            f"image size {shape[1]}x{shape[0]}: width and height must be at least 16"
        )
    check_image_size(shape[0], shape[1], "synth --width/--height")  # the one size limit
    if not cell_types:
        raise CellstackError(f"no cell types given; choose from {', '.join(ALL_TYPES)}")
    unknown = [t for t in cell_types if t not in ALL_TYPES]
    if unknown:
        raise CellstackError(
            f"unknown synthetic cell type(s) {', '.join(unknown)}; choose from "
            f"{', '.join(ALL_TYPES)}"
        )


def _write_livecell(out: Path, rng, images: list, pending: tuple, cell_types) -> None:
    """The LIVECell-style COCO files of the drawn images: a 70/15/15 train/val/test
    split drawn with ``rng``; ``pending``: ``(file, offsets)``, image ``k``'s annotations
    as the json line at ``offsets[k]``."""
    from cellstack.data.coco import write_coco_instances

    file, offsets = pending

    def annotations(keep):
        for k in keep:
            file.seek(offsets[k])
            yield json.loads(file.readline())

    n = len(images)
    split = np.array(["train"] * n, dtype=object)
    order = rng.permutation(n)
    split[order[int(0.7 * n) : int(0.85 * n)]] = "val"
    split[order[int(0.85 * n) :]] = "test"
    for name in ("train", "val", "test"):
        keep = np.flatnonzero(split == name)
        write_coco_instances(
            out / f"livecell_coco_{name}.json",
            [images[k] for k in keep],
            annotations(keep),
            list(cell_types),
        )
