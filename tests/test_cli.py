import json
import subprocess
import sys

import pytest

from cellstack.cli import main
from cellstack.data.sartorius import read_submission, write_submission


def test_synth_evaluate_folds(tmp_path, capsys):
    data = tmp_path / "data"
    assert (
        main(
            [
                "synth",
                str(data),
                "--n-images",
                "6",
                "--seed",
                "1",
                "--width",
                "96",
                "--height",
                "80",
                "--quiet",
            ]
        )
        == 0
    )
    assert (data / "train.csv").is_file() and len(list((data / "train").glob("*.png"))) == 6
    assert (
        main(
            [
                "evaluate",
                str(data),
                str(data / "train.csv"),
                "--json",
                str(tmp_path / "r.json"),
                "--quiet",
            ]
        )
        == 0
    )
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["score"] == 1.0 and len(report["per_image"]) == 6
    # Drop every second cell of every image: the score falls.
    sub = read_submission(data / "train.csv")
    write_submission(tmp_path / "half.csv", {k: v[::2] for k, v in sub.items()})
    assert main(["evaluate", str(data), str(tmp_path / "half.csv"), "--quiet"]) == 0
    assert "all" in capsys.readouterr().out
    assert main(["folds", str(data), "--k", "2"]) == 0
    assert (data / "folds.csv").read_text().startswith("id,fold,cell_type,sample_id")


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    data = tmp_path / "d"
    main(["synth", str(data), "--n-images", "1", "--width", "40", "--height", "30", "--quiet"])
    write_submission(tmp_path / "bad.csv", {"whatever": ["5 x"]})
    sub = read_submission(data / "train.csv")
    image_id = next(iter(sub))
    write_submission(tmp_path / "bad.csv", {image_id: ["1 5000"]})
    capsys.readouterr()
    assert main(["evaluate", str(data), str(tmp_path / "bad.csv"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "bad.csv" in err and image_id in err
    assert len(err.splitlines()) == 1
    assert main(["evaluate", str(tmp_path / "nowhere"), str(tmp_path / "bad.csv")]) == 2
    assert "not found" in capsys.readouterr().err


def test_python_dash_m_and_help():
    out = subprocess.run(
        [sys.executable, "-m", "cellstack", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for command in ("synth", "evaluate", "folds", "demo"):
        assert command in out


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path):
    from cellstack.data.layouts import load_dataset
    from cellstack.demo import run_demo

    result = run_demo(
        tmp_path / "demo",
        n_images=8,
        overrides=("train.iterations=2", "train.eval_every=100", "predict.max_detections=100"),
        finetune_overrides=("train.iterations=2",),
        progress=False,
    )
    expected = {"otsu", "model", "cells zero-shot", "cells calibrated", "cells finetuned"}
    expected |= {"otsu (real nuclei)", "nuclei (real nuclei)"}
    assert set(result.scores) == expected
    assert all(0.0 <= s["score"] <= 1.0 for s in result.scores.values())
    # Each adapted model says how long its adaptation took.
    assert all(result.scores[m]["seconds"] > 0 for m in ("model", "cells calibrated"))
    calibrated = tmp_path / "demo" / "calibrated"
    assert (calibrated / "thresholds.yaml").is_file()
    assert len(load_dataset(tmp_path / "demo" / "data" / "demo_calibrate.csv")) == 3
    overlays = list((tmp_path / "demo" / "overlays").glob("*.png"))
    assert overlays and (tmp_path / "demo" / "model" / "submission.csv").is_file()
