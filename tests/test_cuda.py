"""The CUDA paths: AMP training, AMP predict of a run and of an ensemble with flips, one
nccl process under torchrun. Skipped without a GPU (CI has none);
``benchmarks/gpu_check.sh`` runs the whole suite where one is."""

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from cellstack.config import load_config
from cellstack.engine.runlog import read_log
from cellstack.engine.trainer import train
from cellstack.evaluation.metric import score_image
from cellstack.inference.export import PredictionFolder
from cellstack.inference.predict import PredictOptions, predict_folder
from cellstack.inference.segmenter import Segmenter
from tests.conftest import FAST

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"
)

# Every cell the tiny model finds, so that the two devices have something to agree on.
ALL_CELLS = ("predict.box_score_thresh=0.0", "predict.score_thresh=0.0", "predict.min_size=0")


def test_amp_training_on_cuda_learns_and_its_run_loads_on_cpu(small_data, tmp_path):
    cfg = load_config(
        None, [*FAST, "train.iterations=40", "train.eval_every=0", "train.device=cuda"]
    )
    assert cfg.train.amp  # the default: autocast on CUDA
    train(cfg, small_data, tmp_path / "run", progress=False)
    losses = [float(r["loss"]) for r in read_log(tmp_path / "run" / "log.csv")]
    assert all(math.isfinite(x) for x in losses)
    # Wide margin: 40 steps of a tiny model at lr 1e-3 roughly halve the loss.
    assert np.mean(losses[-5:]) < 0.9 * np.mean(losses[:5])
    seg = Segmenter.load(tmp_path / "run", device="cpu")
    assert seg.device.type == "cpu"
    seg(np.zeros((96, 112), np.uint8))  # weights saved from the GPU segment on the CPU


@pytest.mark.parametrize("flips", [False, True], ids=["run", "ensemble-with-flips"])
def test_amp_predict_on_cuda_finds_the_cells_cpu_finds(base_run, base_data, tmp_path, flips):
    source = base_run
    if flips:
        source = tmp_path / "ens.yaml"
        source.write_text(
            f"models: [{base_run}, {base_run}]\nflips: [none, h, v, hv]\ntype_settings: none\n"
        )
    opts = PredictOptions(overrides=ALL_CELLS)
    outs = []
    for device in ("cpu", "cuda"):
        outs.append(tmp_path / f"{len(outs)}_{device}")
        predict_folder(source, base_data, outs[-1], opts, device=device, progress=False)
    cpu_out, gpu_out = (PredictionFolder.open(out) for out in outs)
    found = 0
    for image_id in cpu_out.image_ids():
        cpu, gpu = cpu_out.labels(image_id), gpu_out.labels(image_id)
        found += int(cpu.max())
        if cpu.max() and gpu.max():
            # float16 backbone features move borderline pixels and scores, not cells.
            assert score_image(cpu, gpu).score > 0.5
    assert found > 0


@pytest.mark.slow
def test_one_nccl_process_under_torchrun_trains(small_data, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1"]
    args = [*FAST, "train.iterations=3", "train.eval_every=0", "train.device=cuda"]
    done = subprocess.run(
        [*cmd, "-m", "cellstack", "train", str(small_data), "--out", str(tmp_path / "run"), *args],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "trained 3 iterations" in done.stdout
    assert (tmp_path / "run" / "model.pt").is_file()
