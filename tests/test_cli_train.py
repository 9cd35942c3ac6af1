"""`fusionkit train` and `fusionkit evaluate` end to end, through the UCF-101 code path."""
import json

import pytest

from fusionkit import cli


def _train_args(root, cache, out, *extra):
    return ["train", "--dataset", "ucf101", "--root", str(root), "--flow-root", str(cache), "--method", "late",
            "--backbone", "tiny", "--epochs", "2", "--batch-size", "4", "--optimizer", "adamw", "--lr", "0.002",
            "--segments", "2", "--test-segments", "3", "--new-length", "2", "--input-size", "64",
            "--workers", "0", "--out", str(out), "--quiet", *extra]


def test_train_then_evaluate_a_run(motion_puzzle, motion_cache, tmp_path, capsys):
    """The motion puzzle is written in the UCF-101 layout, so `--dataset ucf101` reads it as UCF-101."""
    run = tmp_path / "run"
    assert cli.main(_train_args(motion_puzzle, motion_cache, run)) == 0
    assert {"run.json", "dataset.json", "checkpoint.pt", "history.json", "eval.json"} <= {p.name for p in run.iterdir()}
    history = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    metrics = json.loads((run / "eval.json").read_text())
    assert set(metrics) == {"rgb", "flow", "late"}
    assert "top-1" in capsys.readouterr().out

    assert cli.main(["evaluate", str(run), "--segments", "3", "--ten-crop", "--device", "cpu"]) == 0
    result = json.loads((run / "eval_3seg_10crop.json").read_text())
    assert set(result["metrics"]) == {"rgb", "flow", "late"}
    sweep = result["fusion_weight_sweep"]
    assert len(sweep["rgb_weight"]) == len(sweep["top1"]) == 21
    # the sweep's ends are the single streams
    assert sweep["top1"][0] == pytest.approx(result["metrics"]["flow"]["top1"])
    assert sweep["top1"][-1] == pytest.approx(result["metrics"]["rgb"]["top1"])


def test_resume_continues_a_run(motion_puzzle, motion_cache, tmp_path):
    run = tmp_path / "run"
    assert cli.main(_train_args(motion_puzzle, motion_cache, run)) == 0
    args = _train_args(motion_puzzle, motion_cache, run, "--resume")
    args[args.index("--epochs") + 1] = "3"
    assert cli.main(args) == 0
    assert [h["epoch"] for h in json.loads((run / "history.json").read_text())] == [1, 2, 3]


def test_train_needs_the_flow_cache_for_real_datasets(motion_puzzle, tmp_path, capsys):
    rc = cli.main(["train", "--dataset", "hmdb51", "--root", str(motion_puzzle), "--out", str(tmp_path / "r")])
    assert rc == 2 and "--flow-root" in capsys.readouterr().err


def test_unknown_method_lists_the_available_ones(motion_puzzle, motion_cache, tmp_path, capsys):
    args = _train_args(motion_puzzle, motion_cache, tmp_path / "r")
    args[args.index("--method") + 1] = "magic"
    assert cli.main(args) == 2
    assert "late" in capsys.readouterr().err


def test_evaluate_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert cli.main(["evaluate", str(tmp_path)]) == 2
    assert "not a finished training run" in capsys.readouterr().err


def test_cma_trains_branch_by_branch_from_the_command_line(motion_puzzle, motion_cache, tmp_path):
    """`--method cma --iterations 2`: the flow branch comes from a separately trained late model, then
    one RGB and one flow iteration; evaluation sweeps the -R/-F weighting and the reloaded run keeps
    the 1:5 weighting of a model whose flow branch was trained last."""
    from fusionkit.methods import load_run

    run = tmp_path / "cma"
    args = _train_args(motion_puzzle, motion_cache, run, "--iterations", "2")
    args[args.index("--method") + 1] = "cma"
    args[args.index("--epochs") + 1] = "1"
    assert cli.main(args) == 0
    history = json.loads((run / "history.json").read_text())
    assert [(h["iteration"], h["branch"]) for h in history] == [(1, "rgb"), (2, "flow")]
    assert cli.main(["evaluate", str(run), "--segments", "3", "--device", "cpu"]) == 0
    result = json.loads((run / "eval_3seg.json").read_text())
    assert set(result["metrics"]) == {"cma-R", "cma-F", "cma-S"}
    sweep = result["fusion_weight_sweep"]
    assert sweep["top1"][0] == pytest.approx(result["metrics"]["cma-F"]["top1"])
    assert sweep["top1"][-1] == pytest.approx(result["metrics"]["cma-R"]["top1"])
    model, _ = load_run(run)
    assert model.rgb_weight == pytest.approx(1 / 6)
