# %% [markdown]
# # cellstack from Python
#
# A notebook as a script: each `# %%` is a cell (VS Code, Jupyter with jupytext, or
# `python docs/api_example.py RUN`). It segments arrays, a Z-stack and a two-channel
# image with a trained run, and looks at the cells as a table. `RUN` defaults to the
# run that `make demo` trains. The test suite runs this file.

# %%
import sys
from pathlib import Path

import numpy as np

import cellstack
from cellstack.data.synthetic import generate_image

RUN = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("demo_out/run")

# %% [markdown]
# Load a run folder, a CV folder or an ensemble YAML. `device="auto"` takes a GPU
# when there is one.

# %%
seg = cellstack.Segmenter.load(RUN, device="auto")
print("cell types:", seg.class_names, "on", seg.device)

# %% [markdown]
# Any 2-D array works: uint8, 16-bit, float, RGB. The segmenter scales intensities
# itself (0.5/99.5 percentiles per plane), as the model saw them in training.

# %%
synthetic = generate_image(np.random.default_rng(0), "cort", shape=(160, 224))
image16 = synthetic.image.astype(np.uint16) * 64 + 500  # a dim 16-bit camera image
result = seg(image16)
print(f"{len(result)} cells; labels {result.labels.dtype} {result.labels.shape}")
print("first cell:", {k: v[0] for k, v in result.table.items()} if len(result) else "none")

# %% [markdown]
# The table is a dict of columns: `pandas.DataFrame(result.table)` makes a data frame,
# and napari's Labels layer takes it as `features`.

# %%
areas = result.table["area"]
if len(result):
    print(
        f"median area {np.median(areas):.0f} px; types",
        dict(zip(*np.unique(result.table["cell_type"], return_counts=True), strict=True)),
    )

# %% [markdown]
# Stacks are segmented plane by plane: say their axes. Label ids run on across the
# planes, so every id is one object; the table gains a `z` (or `t`) column.

# %%
stack = np.stack([image16, image16[:, ::-1], image16])
zres = seg(stack, axes="ZYX")
print("Z-stack labels:", zres.labels.shape, "cells per plane:", [len(p) for p in zres.planes])

two_channels = np.stack([image16, np.zeros_like(image16)])  # e.g. cells + a dark marker
cres = seg(two_channels, axes="CYX", channel=0)
assert np.array_equal(cres.labels, result.labels)

# %% [markdown]
# Many images at once, batched, with a progress bar: arrays or file paths.

# %%
results = seg.segment_many([image16, synthetic.image], progress=False)
print("cells per image:", [len(r) for r in results])

# %% [markdown]
# Score against your own annotations and tune the thresholds on them (stardist's
# `optimize_thresholds`): the model runs once per image, then the one threshold grid is
# searched from its raw detections. It returns a new segmenter; this one is unchanged.

# %%
truths = [synthetic.labels]
print("matching at IoU 0.5:", cellstack.matching(synthetic.labels, seg(synthetic.image).labels))
tuned, report = seg.optimize_thresholds([synthetic.image], truths)
print(f"score {report.before:.3f} at the run's thresholds -> {report.after:.3f} tuned")
