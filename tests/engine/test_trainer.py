import re

import pytest
import torch

from cellstack.config import load_config
from cellstack.data.synthetic import synthesize
from cellstack.engine.loop import TrainingDiverged
from cellstack.engine.runlog import read_log
from cellstack.engine.schedule import combine_losses, loss_weights, lr_factor
from cellstack.engine.trainer import train
from cellstack.errors import CellstackError
from cellstack.modeling.runfolder import load_run
from tests.conftest import FAST


def _log(run):
    return read_log(run / "log.csv")


def test_schedules_and_loss_decay():
    f = lr_factor("linear", 100, 0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0) and f(99) < 0.02
    c = lr_factor("cosine", 100, 0.0)
    assert c(0) == pytest.approx(1.0) and c(50) == pytest.approx(0.5, abs=0.02)
    s = lr_factor("step", 90, 0.0)
    assert s(10) == 1.0 and s(61) == pytest.approx(0.1) and s(85) == pytest.approx(0.01)
    start, end = loss_weights(0.0, True), loss_weights(1.0, True)
    assert start["cls"] == pytest.approx(43 / 42) and end["cls"] == pytest.approx(3 / 42)
    assert end["box"] == end["rpn_cls"] == pytest.approx(22 / 42) and end["mask"] == 1.0
    assert set(loss_weights(0.5, False).values()) == {1.0}
    losses = {"cls": torch.tensor(2.0), "mask": torch.tensor(4.0), "semantic": torch.tensor(1.0)}
    # A loss without a decay weight still counts, with weight 1.
    assert combine_losses(losses, {"cls": 0.5, "mask": 1.0}).item() == pytest.approx(6 / 2.5)
    # Cascade stage losses are weighted by their kind; HTC's semantic loss is in the total.
    staged = {"s0.cls": torch.tensor(2.0), "s2.cls": torch.tensor(1.0), **losses}  # 3 cls
    w = loss_weights(1.0, True)
    total = (w["cls"] * 5 + 4 + w["semantic"] * 1) / (3 * w["cls"] + 1 + w["semantic"])
    assert w["semantic"] == 1.0
    assert combine_losses(staged, w).item() == pytest.approx(total)


def test_train_writes_a_complete_run(small_data, tmp_path):
    cfg = load_config(
        None,
        [
            *FAST,
            "train.iterations=4",
            "train.checkpoint_every=2",
            "train.eval_every=4",
            "data.fold=0",
            "data.folds=2",
        ],
    )
    result = train(cfg, small_data, tmp_path / "run", progress=False)
    run = tmp_path / "run"
    for name in (
        "config.yaml",
        "checkpoint.pt",
        "model.pt",
        "log.csv",
        "training.png",
        "folds.csv",
    ):
        assert (run / name).is_file(), name
    rows = _log(run)
    assert [int(r["iteration"]) for r in rows] == [1, 2, 3, 4]
    assert rows[-1]["val_score"] != "" and result.val_score is not None
    cfg_back, names, state = load_run(run)
    assert cfg_back == cfg and names == ["astro", "cort", "shsy5y"]
    assert "backbone.fpn.inner_blocks.0.0.weight" in state
    with pytest.raises(CellstackError, match="already holds a training run"):
        train(cfg, small_data, run, progress=False)


def test_resume_reproduces_an_uninterrupted_run(small_data, tmp_path):
    base = [*FAST, "train.iterations=6", "train.checkpoint_every=3", "train.eval_every=100"]
    full = tmp_path / "full"
    train(load_config(None, base), small_data, full, progress=False)
    # "Kill" a run after iteration 3: train 3 iterations of the same 6-iteration schedule.
    part = tmp_path / "part"
    train(load_config(None, base), small_data, part, progress=False, stop_after=3)
    assert [int(r["iteration"]) for r in _log(part)] == [1, 2, 3]
    train(load_config(None), small_data, part, resume=True, progress=False)
    a, b = _log(full), _log(part)
    assert [r["iteration"] for r in a] == [r["iteration"] for r in b]
    for ra, rb in zip(a, b, strict=True):
        assert float(ra["loss"]) == pytest.approx(float(rb["loss"]), rel=1e-5, abs=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["cascade", "htc"])
def test_cascade_and_htc_share_the_loop_resume_and_predict(arch, small_data, tmp_path):
    from cellstack.data.sartorius import read_submission
    from cellstack.inference.predict import predict_folder

    base = [*FAST, f"model.arch={arch}", "train.iterations=4", "train.eval_every=100"]
    run = tmp_path / "run"
    train(load_config(None, base), small_data, run, progress=False, stop_after=2)
    train(load_config(None), small_data, run, resume=True, progress=False)
    rows = _log(run)
    assert [int(r["iteration"]) for r in rows] == [1, 2, 3, 4]
    # Stage losses are logged summed per kind; HTC's semantic loss has its own column.
    assert all(float(r["mask"]) > 0 for r in rows)
    assert all((r["semantic"] != "") == (arch == "htc") for r in rows)
    cfg, _, state = load_run(run)
    assert cfg.model.arch == arch and "roi_heads.stages.2.mask_head.logits.weight" in state
    predict_folder(run, small_data, tmp_path / "pred", progress=False)
    assert len(read_submission(tmp_path / "pred" / "submission.csv")) == 6


@pytest.mark.slow
def test_overfits_two_crops(tmp_path):
    # Two 64x64 images, 64 px crops, no flips: exactly two fixed samples.
    synthesize(tmp_path / "two", 2, seed=11, shape=(64, 64), cell_types=("cort",), progress=False)
    cfg = load_config(
        None,
        [
            *FAST,
            "train.iterations=80",
            "train.eval_every=1000",
            "train.loss_decay=false",
            "train.lr=0.002",
            "train.schedule=constant",
            "data.augment.hflip=0",
            "data.augment.vflip=0",
        ],
    )
    train(cfg, tmp_path / "two", tmp_path / "overfit", progress=False)
    losses = [float(r["loss"]) for r in _log(tmp_path / "overfit")]
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5


def test_nan_loss_stops_and_keeps_the_last_checkpoint(small_data, tmp_path):
    diverging = [
        *FAST,
        "train.iterations=6",
        "train.lr=1e30",
        "train.grad_clip=0",
        "train.warmup_fraction=0",
    ]
    cfg = load_config(None, [*diverging, "train.checkpoint_every=1"])
    with pytest.raises(TrainingDiverged, match=r"at iteration \d+ .*last good checkpoint") as e:
        train(cfg, small_data, tmp_path / "nan", progress=False)
    # The checkpoint the message names exists, at the iteration it says.
    named = re.search(r"checkpoint is (\S+) \(iteration (\d+)\)", str(e.value))
    assert torch.load(named[1], weights_only=True)["iteration"] == int(named[2])
    # Diverging before the first checkpoint says so instead of naming a missing file.
    late = load_config(None, [*diverging, "train.checkpoint_every=100"])
    with pytest.raises(TrainingDiverged, match="No checkpoint was written"):
        train(late, small_data, tmp_path / "nan2", progress=False)
    assert not (tmp_path / "nan2" / "checkpoint.pt").exists()


def test_corrupt_image_is_named(small_data, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(small_data, data)
    victim = sorted((data / "train").glob("*.png"))[0]
    victim.write_bytes(b"garbage")
    cfg = load_config(None, [*FAST, "train.iterations=30"])
    with pytest.raises(CellstackError, match=victim.name):
        train(cfg, data, tmp_path / "run", progress=False)
    victim.unlink()
    with pytest.raises(CellstackError, match=f"{victim.name}: image file not found"):
        train(cfg, data, tmp_path / "run2", progress=False)


def test_hooks_run_in_order_and_resume_exactly(small_data, tmp_path):
    from cellstack.engine.loop import HookBase

    class Record(HookBase):
        """Sees every step after the built-in hooks: the EMA, validation, log and
        checkpoint of that step are already done."""

        state_key = "record"

        def __init__(self):
            self.calls = []

        def before_train(self, loop):
            self.calls.append(("before", loop.iteration))

        def after_step(self, loop):
            self.calls.append(("step", loop.iteration, loop.row.get("val_score"), loop.last_saved))

        def after_train(self, loop):
            self.calls.append(("after", loop.iteration))

        def state_dict(self):
            return {"steps": sum(c[0] == "step" for c in self.calls)}

        def load_state_dict(self, state):
            self.calls.append(("restored", state["steps"]))

    cfg = [
        *FAST,
        "train.iterations=4",
        "train.checkpoint_every=2",
        "train.eval_every=2",
        "train.ema=0.9",
        "data.fold=0",
        "data.folds=2",
    ]
    one = Record()
    train(load_config(None, cfg), small_data, tmp_path / "a", progress=False, hooks=[one])
    assert one.calls[0] == ("before", 0) and one.calls[-1] == ("after", 4)
    steps = [c for c in one.calls if c[0] == "step"]
    assert [c[1] for c in steps] == [1, 2, 3, 4]
    assert [c[2] is not None for c in steps] == [False, True, False, True]  # validated
    assert [c[3] for c in steps] == [0, 2, 2, 4]  # checkpointed before the hook saw it
    first, second = Record(), Record()
    train(
        load_config(None, cfg),
        small_data,
        tmp_path / "b",
        progress=False,
        hooks=[first],
        stop_after=3,
    )
    train(
        load_config(None), small_data, tmp_path / "b", resume=True, progress=False, hooks=[second]
    )
    # The checkpoint at iteration 3 (stop_after) carried the hook's state to the resume.
    assert second.calls[:2] == [("restored", 3), ("before", 3)]
    assert [c[1] for c in second.calls if c[0] == "step"] == [4]
    _, _, a = load_run(tmp_path / "a")
    _, _, b = load_run(tmp_path / "b")
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)
    log_a, log_b = (
        [(r["iteration"], r["val_score"] != "") for r in _log(tmp_path / k)] for k in "ab"
    )
    assert log_a == log_b
    # The resumed run's clock goes on from the rows it kept: seconds never go back.
    seconds = [float(r["seconds"]) for r in _log(tmp_path / "b") if r["seconds"]]
    assert len(seconds) >= 3 and seconds == sorted(seconds)
