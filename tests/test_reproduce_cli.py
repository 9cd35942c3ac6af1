"""`fusionkit reproduce` and `fusionkit train --recipe` from the command line."""
from __future__ import annotations

import json

import pytest

from fusionkit import cli
from fusionkit.methods.tables import get_table
from fusionkit.methods.training_recipes import get_recipe
from tests.test_reproduce import _check_files


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("reproduce_cli_data")


def test_train_recipe_flag_fills_what_the_command_line_leaves(motion_puzzle, motion_cache, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--dataset", "ucf101", "--root", str(motion_puzzle), "--flow-root", str(motion_cache),
            "--method", "late", "--epochs", "1", "--batch-size", "4", "--segments", "2", "--test-segments", "2",
            "--new-length", "2", "--input-size", "32", "--loader-workers", "0", "--out", str(out), "--quiet",
            "--recipe", "teaching"]
    assert cli.main(args) == 0
    run = json.loads((out / "run.json").read_text())
    teaching = get_recipe("late", "teaching")
    assert run["train"]["epochs"] == 1 and run["train"]["batch_size"] == 4  # given on the command line
    assert run["train"]["weight_decay"] == teaching.train.weight_decay == 1e-4  # the recipe's (the flag's default: 5e-4)
    assert run["train"]["lr"] == teaching.train.lr and run["model_kwargs"]["dropout"] == 0.3
    assert json.loads((out / "dataset.json").read_text())["segments"] == 2


def test_reproduce_feichtenhofer_table1_from_the_command_line(data_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(["reproduce", "feichtenhofer2016", "--table", "1", "--dataset", "puzzles:registration",
                     "--quick", "--seeds", "0", "--data", str(data_dir), "--out", str(out), "--quiet"]) == 0
    data = _check_files(out, get_table("feichtenhofer2016", 1), None)
    printed = capsys.readouterr().out
    assert "Conv / ReLU5" in printed and "claim: Conv >= Sum > Max at ReLU5" in printed
    rows_by_name = {r["name"]: r for r in data["rows"]}
    # the softmax rows read the streams' run; the fused rows their own, the truncated tower's -S
    assert rows_by_name["Sum (ours) / Softmax"]["outputs"] == {"UCF101 Acc.": "late"}
    assert rows_by_name["Conv / ReLU5"]["outputs"] == {"UCF101 Acc.": "spatial-S"}
    assert rows_by_name["Conv / ReLU5"]["options"] == {"fusion": "conv", "position": "ReLU5"}
    assert data["recipes"]["spatial"]["name"] == "teaching" and data["baseline"]["tiny"]["epochs"] == 1
    # listing a paper's tables
    assert cli.main(["reproduce", "cma"]) == 0
    assert "table 4: Comparisons with non-local networks" in capsys.readouterr().out
