"""The README and the docs pages are a contract: every command in their shell blocks
runs, on tiny data.

The blocks are read from the pages themselves, so a command added there is run here (or
must be listed in ``ELSEWHERE`` with the test that covers it). Paths and sizes are
mapped to a scratch folder and a tiny model; the commands, their subcommands and their
options are the pages'.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile

from cellstack.cli import main
from tests.conftest import FAST

ROOT = Path(__file__).parents[1]

#: The pages (and sections: None is the whole page) whose ``bash`` blocks are commands a
#: user types, in the order a user runs them (later blocks use the data the command
#: line page makes). Every page with a ``bash`` block is listed (a test checks).
PAGES = (
    ("docs/cli.md", None),
    ("README.md", "## Quick start"),
    ("README.md", "## Built-in models"),
    ("docs/models.md", None),
    ("docs/large-images.md", None),
    ("docs/training.md", None),
    ("docs/benchmarks.md", None),
    ("docs/tools.md", None),
)
#: Pages of history and design, not of use: their blocks are records, not instructions.
NOT_USER_DOCS = ("docs/learning.md", "docs/architecture.md")

#: Commands run elsewhere, with the test that runs them (too long or too wide here).
ELSEWHERE = {
    "cellstack demo --out demo_out": "tests/test_cli.py (the demo, slow)",
    "torchrun --nproc-per-node 4 -m cellstack train": "tests/test_distributed.py (2 gloo ranks)",
    "torchrun --nproc-per-node 4 -m cellstack predict": "tests/test_distributed.py",
    "cellstack predict configs/original/ensemble.yaml": "needs the recipe's 11 CV folders; "
    "tests/inference/test_ensemble.py runs ensembles of tiny runs",
}

#: Commands that must refuse here, with the message: the runs they meet are finished
#: (an interrupted run resumes in tests/reliability/test_interrupted.py).
REFUSED = {"cellstack train data/synth --resume runs/r18": "already trained for 2 of 2"}

#: Options that need an optional extra (its module, the extra): where the module is
#: absent the command must refuse in one line that names the extra; else it runs.
EXTRAS = {
    "--table anndata": ("anndata", "cellstack[tables]"),
    "--table spatialdata": ("spatialdata", "cellstack[spatialdata]"),
    "--format onnx": ("onnx", "cellstack[onnx]"),
    "--format bioimageio": ("bioimageio.spec", "cellstack[bioimageio]"),
    "predict nuclei.onnx": ("onnxruntime", "cellstack[onnx]"),
}

#: Placeholders and sizes in the README, as they map onto the scratch folder.
TOKENS = {
    "--n-images 60": ["--n-images", "10", "--width", "160", "--height", "128"],
    "--n-images 8": ["--n-images", "4", "--width", "160", "--height", "128"],
    "--nproc-per-node 4": ["--nproc-per-node", "2"],
    # 2-fold CVs check what 5 folds do, at two fifths of the training.
    "--k 5": ["--k", "2"],
    "--folds 5": ["--folds", "2"],
    "train.iterations=2000": ["train.iterations=2"],
    "IMAGES": ["path/to/images"],
    "OUT": ["preds_builtin"],
    "OUT_40": ["preds_builtin_40"],
    "DATA": ["data/synth"],
    "RUN": ["runs/finetuned"],
    "--workers 4": ["--workers", "2"],
    "--block 2048": ["--block", "256"],
    "plate/": ["path/to/images"],
}

#: Overrides appended per subcommand so that training takes seconds (a tiny model on
#: small crops); runs that start from a built-in keep its architecture.
TINY_TRAIN = [*FAST, "train.iterations=2", "train.eval_every=0", "model.backbone.pretrained=false"]
FROM_BUILTIN = ["train.iterations=2", "train.eval_every=0", "train.num_workers=0"]


def readme_commands() -> list[str]:
    """Every command line of the ``bash`` blocks of :data:`PAGES`, in order."""
    commands = []
    for page, section in PAGES:
        body = (ROOT / page).read_text()
        if section is not None:
            body = body.split("\n" + section, 1)[1].split("\n## ", 1)[0]
        for block in re.findall(r"```bash\n(.*?)```", body, flags=re.S):
            block = block.replace("\\\n", " ")
            for line in block.splitlines():
                line = line.split(" #", 1)[0].strip()
                if line and not line.startswith("#"):
                    commands.append(" ".join(line.split()))
    return commands


def expand(command: str) -> list[str]:
    """The README's ``command`` as arguments for ``main``, mapped onto tiny inputs."""
    for token, value in TOKENS.items():
        command = re.sub(rf"(?<![\w./-]){re.escape(token)}(?![\w./-])", " ".join(value), command)
    args = shlex.split(command)
    assert args[0] == "cellstack", command
    args = args[1:]
    if args[0] in ("train", "cv") and "--resume" not in args:
        args += FROM_BUILTIN if any(a.startswith("init.from=") for a in args) else TINY_TRAIN
    if args[0] in ("predict", "tune", "cv") and "--quiet" not in args:
        args.append("--quiet")
    return args


def _scratch(root: Path, synth_dir: Path) -> None:
    """What the README's commands expect to find before they run."""
    shutil.copytree(ROOT / "configs", root / "configs")
    base = sorted((synth_dir / "train").glob("*.png"))
    images = root / "path" / "to" / "images"
    images.mkdir(parents=True)
    for path in base[:2]:
        shutil.copy(path, images / path.name)
    predictions = root / "predictions"
    predictions.mkdir()
    truth = (synth_dir / "train.csv").read_text().splitlines()
    (predictions / "submission.csv").write_text("\n".join(truth[:-3]) + "\n")

    from cellstack.data.images import read_image

    plane = read_image(base[0])
    stacks = root / "stacks"
    stacks.mkdir()
    zcyx = np.stack([np.stack([plane[::-1], plane]), np.stack([plane, plane[:, ::-1]])])
    tifffile.imwrite(stacks / "s.tif", zcyx, imagej=True, metadata={"axes": "ZCYX"})
    plain = root / "plain_tiffs"
    plain.mkdir()
    tifffile.imwrite(plain / "p.tif", np.stack([plane, plane[::-1]]))
    # The Kaggle and LIVECell folders of the training workflow, synthetic and small.
    from cellstack.data.synthetic import synthesize

    kaggle = root / "data" / "sartorius"
    synthesize(kaggle, 10, seed=1, shape=(128, 160), livecell=True, progress=False)
    shutil.move(kaggle / "livecell", root / "data" / "LIVECell_dataset_2021")
    shutil.copytree(kaggle / "train", kaggle / "test")
    (root / "data" / "hck_fix").mkdir()
    # A small slide (OME-Zarr) and mosaic (TIFF) for the large-image commands.
    import zarr

    mosaic = np.tile(plane, (3, 3))[:600, :600]
    tifffile.imwrite(root / "mosaic.tif", mosaic, tile=(256, 256))
    slide = zarr.open_group(str(root / "slide.ome.zarr"), mode="w", zarr_format=2)
    slide.attrs["multiscales"] = [{"axes": ["y", "x"], "datasets": [{"path": "0"}]}]
    slide.create_array("0", shape=mosaic.shape, chunks=(256, 256), dtype="uint8")[:] = mosaic
    # The three runs configs/ensemble_example.yaml lists (README "Models and ensembles").
    for arch in ("cascade", "htc", "maskrcnn"):
        args = ["train", str(synth_dir), "--out", str(root / "runs" / arch), *TINY_TRAIN]
        assert main([*args, f"model.arch={arch}"]) == 0


def test_every_page_with_commands_is_run():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    with_commands = {str(p.relative_to(ROOT)) for p in pages if "```bash\n" in p.read_text()} - set(
        NOT_USER_DOCS
    )
    assert with_commands <= {page for page, _ in PAGES}, with_commands
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250, "the README is read in five minutes: keep it short"
    for page in (ROOT / "docs").glob("*.md"):  # the README names every docs page
        assert f"docs/{page.name}" in readme, page.name


@pytest.mark.slow
def test_every_readme_command_runs(synth_dir, tmp_path, monkeypatch, capsys):
    from distributed import LocalCluster

    _scratch(tmp_path, synth_dir)
    monkeypatch.chdir(tmp_path)
    ran, covered = [], []
    # The README's scheduler address stands for a cluster the user runs: one runs here.
    cluster = LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None)
    TOKENS["tcp://10.0.0.5:8786"] = [cluster.scheduler_address]
    try:
        _run_all(ran, covered, capsys)
    finally:
        cluster.close()
        del TOKENS["tcp://10.0.0.5:8786"]
    _check_outputs(tmp_path, ran, covered)


def _installed(module: str) -> bool:
    """Whether ``module`` (dotted) can be imported, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package is absent
        return False


def _run_all(ran: list, covered: list, capsys) -> None:
    for command in readme_commands():
        if command.startswith(("make ", ".venv/bin/")):
            continue  # make targets and benchmarks: `make test` and benchmarks/ themselves
        if any(command.startswith(prefix) for prefix in ELSEWHERE):
            covered.append(command)
            continue
        if command.startswith("torchrun"):
            raise AssertionError(f"README command not run and not covered: {command}")
        code = main(expand(command))
        captured = capsys.readouterr()
        needs = [extra for option, extra in EXTRAS.items() if option in command]
        missing = next((extra for module, extra in needs if not _installed(module)), None)
        if missing is not None:
            assert code == 2 and missing in captured.err, (command, captured.err)
            continue
        if command in REFUSED:
            assert code == 2 and REFUSED[command] in captured.err, (command, captured.err)
            continue
        assert code == 0, f"`{command}` exited {code}: {captured.err[-2000:]}"
        ran.append(command)


def _check_outputs(tmp_path: Path, ran: list, covered: list) -> None:
    assert len(ran) >= 25 and len(covered) == len(ELSEWHERE), (ran, covered)
    # What the commands promise to write is there.
    assert (tmp_path / "report.json").is_file()
    assert (tmp_path / "data" / "synth" / "folds.csv").is_file()
    assert (tmp_path / "runs" / "r18" / "thresholds.yaml").is_file()
    assert sorted(p.name for p in (tmp_path / "runs" / "cv_r18").glob("fold?")) == [
        f"fold{k}" for k in range(2)
    ]
    assert sorted(p.name for p in (tmp_path / "preds_stacks" / "rois").iterdir()) == ["s.zip"]
    assert (tmp_path / "preds_builtin" / "submission.csv").is_file()
    assert (tmp_path / "submission" / "submission.csv").is_file()
    assert (tmp_path / "slide_labels.ome.zarr" / "cells" / "0").is_dir()
    assert (tmp_path / "mosaic_labels.ome.zarr" / "objects.csv").is_file()
    assert (
        sorted(p.suffix for p in (tmp_path / "plate_qupath" / "geojson").iterdir())
        == [".geojson"] * 2
    )
    # docs/tools.md: each tool's files, and a run trained on the Cellpose GUI folder.
    assert len(list((tmp_path / "to_fiji" / "rois").glob("*.zip"))) == 2
    assert len(list((tmp_path / "to_qupath" / "geojson").glob("*.geojson"))) == 2
    assert len(list((tmp_path / "to_cellpose" / "seg-npy").glob("*_seg.npy"))) == 2
    assert (tmp_path / "runs" / "corrected" / "model.pt").is_file()
    for module, folder, pattern in (
        ("anndata", "to_scanpy/objects", "*.h5ad"),
        ("spatialdata", "to_spatialdata/spatialdata", "*.zarr"),
    ):
        if _installed(module):
            assert len(list((tmp_path / folder).glob(pattern))) == 2, folder
