"""`fusionkit train` and `fusionkit evaluate` end to end, through the UCF-101 code path."""
import json
from functools import partial

import pytest

from fusionkit import cli


def _train_args(root, cache, out, *extra):
    return ["train", "--dataset", "ucf101", "--root", str(root), "--flow-root", str(cache), "--method", "late",
            "--backbone", "tiny", "--epochs", "2", "--batch-size", "4", "--optimizer", "adamw", "--lr", "0.002",
            "--segments", "2", "--test-segments", "3", "--new-length", "2", "--input-size", "64",
            "--loader-workers", "0", "--out", str(out), "--quiet", *extra]


def test_train_then_evaluate_a_run(motion_puzzle, motion_cache, tmp_path, capsys):
    """The motion puzzle is written in the UCF-101 layout, so `--dataset ucf101` reads it as UCF-101."""
    run = tmp_path / "run"
    assert cli.main(_train_args(motion_puzzle, motion_cache, run)) == 0
    assert {"run.json", "dataset.json", "checkpoint.pt", "history.json", "eval.json"} <= {p.name for p in run.iterdir()}
    history = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    report = json.loads((run / "eval.json").read_text())
    assert set(report) == {"segments", "ten_crop", "roles", "metrics", "fusion_weight_sweep"}
    assert set(report["metrics"]) == {"rgb", "flow", "late"}
    assert report["roles"] == {"rgb": "rgb", "flow": "flow", "fused": "late"}
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


# -- choosing a method's options: --option KEY=VALUE, and `fusionkit methods` -------------------
def _tiny_puzzles(monkeypatch):
    """Render `--dataset puzzles:NAME` at test sizes (4 videos a class, 12 frames): the command still
    goes through prepare_puzzle, which renders and extracts once per parameter set. Returns the calls."""
    import fusionkit.data.puzzles as puzzles

    calls = []
    real = puzzles.prepare_puzzle

    def tiny(name, data_dir, **kwargs):
        calls.append(name)
        return real(name, data_dir, **{**kwargs, "videos_per_class": 4, "frames": 12, "size": 64})

    monkeypatch.setattr(puzzles, "prepare_puzzle", tiny)
    return calls


def _puzzle_args(data, out, method, *extra):
    return ["train", "--dataset", "puzzles:registration", "--root", str(data), "--method", method, "--epochs", "1",
            "--batch-size", "4", "--optimizer", "adamw", "--lr", "0.002", "--segments", "2", "--test-segments", "2",
            "--new-length", "2", "--flow-workers", "1", "--loader-workers", "0", "--device", "cpu",
            "--out", str(out), "--quiet", *extra]


def test_train_builds_and_trains_exactly_the_model_the_options_name(tmp_path, monkeypatch, capsys):
    """`fusionkit train --method spatial --option fusion=bilinear --option position=stage2`: run.json
    records those options, and the reloaded run has a BilinearFusion block at stage2 (and only there)."""
    from fusionkit.methods import load_run
    from fusionkit.methods.conv_fusion.spatial_blocks import BilinearFusion
    from fusionkit.models.positions import Position

    calls = _tiny_puzzles(monkeypatch)
    run = tmp_path / "run"
    assert cli.main(_puzzle_args(tmp_path / "data", run, "spatial", "--option", "fusion=bilinear",
                                 "--option", "position=stage2", "--option", "widths=[8,8,8]")) == 0
    assert calls == ["registration"]
    spec = json.loads((run / "run.json").read_text())
    assert spec["method"] == "spatial" and spec["backbone"] == "tiny" and spec["num_classes"] == 4
    assert spec["model_kwargs"] == {"new_length": 2, "pretrained": False, "fusion": "bilinear", "position": "stage2",
                                    "widths": [8, 8, 8]}
    assert spec["training_options"] == {} and spec["train"]["schedule"] == "finetune"
    assert spec["train"]["epochs"] == 1 and spec["train"]["num_workers"] == 0
    report = json.loads((run / "eval.json").read_text())
    # the motion tower is truncated at the fusion point (spatial's default): one prediction, nothing to weigh
    assert report["roles"] == {"fused": "spatial-S"} and set(report["metrics"]) == {"spatial-S"}
    assert report["fusion_weight_sweep"] is None
    assert "spatial-S (fused): top-1" in capsys.readouterr().out
    model, info = load_run(run)
    assert model.positions == [Position("stage2")]
    block = model.block_at("stage2")
    assert isinstance(block, BilinearFusion) and (block.rgb_channels, block.out_channels) == (8, 64)
    assert model.flow_head is None and model.output_roles() == {"fused": "spatial-S"}
    assert info["dataset"] == "puzzles:registration"


@pytest.mark.parametrize("method, options, message", [
    ("magic", [], r"unknown method 'magic'; the methods are ccs, cma, cmmp, conv_fusion, late, nonlocal, spatial"),
    ("spatial", ["fusoin=sum"], r"method 'spatial' has no option fusoin; its options are {spatial_options} "
                                r"\(`fusionkit methods spatial` gives their types and defaults\)"),
    ("spatial", ["fusion=sum", "stage=2", "depth=3"], r"has no option depth, stage; its options are backbone, "),
    ("spatial", ["keep_flow_tower=maybe"], r"--option keep_flow_tower: expected true or false, got 'maybe'"),
    ("cmmp", ["adversarial=perhaps"], r"--option adversarial: expected true or false, got 'perhaps'"),
    ("ccs", ["ranking_losses"], r"--option 'ranking_losses': expected KEY=VALUE"),
    ("spatial", ["backbone=resnet18"], r"give --backbone instead of --option backbone=\.\.\."),
    ("late", ["new_length=3"], r"give --new-length instead of --option new_length=\.\.\."),
])
def test_train_refuses_unknown_methods_options_and_values_before_writing_anything(method, options, message, tmp_path,
                                                                                  monkeypatch, capsys):
    import re

    import fusionkit.data.puzzles as puzzles
    from fusionkit.methods import method_options

    message = message.replace("{spatial_options}", ", ".join(sorted(method_options("spatial"))))

    def no_data(*args, **kwargs):
        raise AssertionError("the data was prepared before the options were checked")

    monkeypatch.setattr(puzzles, "prepare_puzzle", no_data)
    extra = [a for option in options for a in ("--option", option)]
    run = tmp_path / "run"
    assert cli.main(_puzzle_args(tmp_path / "data", run, method, *extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith("fusionkit train: error: ") and re.search(message, err), err
    assert not run.exists() and not (tmp_path / "data").exists()  # nothing written


def test_train_accepts_a_methods_training_option_and_records_it(motion_puzzle, motion_cache, tmp_path):
    """A training option (CMMP's adversarial=false, Table 1's CMMP+noAL) goes to the method's
    configure, not to the model, and run.json says so."""
    run = tmp_path / "run"
    args = _train_args(motion_puzzle, motion_cache, run, "--option", "adversarial=false", "--option", "messages=identity")
    args[args.index("--method") + 1] = "cmmp"
    args[args.index("--epochs") + 1] = "1"
    assert cli.main(args) == 0
    spec = json.loads((run / "run.json").read_text())
    assert spec["training_options"] == {"adversarial": False}
    assert spec["model_kwargs"]["messages"] == "identity" and "adversarial" not in spec["model_kwargs"]


def test_methods_lists_every_method_and_one_methods_options(capsys):
    from fusionkit.methods import get_method, list_methods, method_options

    assert cli.main(["methods"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if not line.startswith(" ")]
    assert [line.split()[0] for line in lines] == list_methods() == ["ccs", "cma", "cmmp", "conv_fusion", "late",
                                                                      "nonlocal", "spatial"]
    for name in list_methods():
        assert get_method(name).summary in out
    assert "--option" not in out  # the overview: one line each

    assert cli.main(["methods", "spatial"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("spatial  [schedule finetune, from late]")
    assert "--option fusion: str = 'conv'  (model)" in out
    assert "--option position: PositionLike | None = None  (model)" in out
    assert "--option keep_flow_tower: bool = False  (model)" in out
    assert "--option fusion_options: dict | None = None  (model)" in out
    for option in method_options("spatial"):
        assert f"--option {option}:" in out
    assert "cmmp" not in out

    assert cli.main(["methods", "cmmp", "ccs"]) == 0
    out = capsys.readouterr().out
    assert "--option adversarial: bool = True  (training)" in out
    assert "--option ranking_losses: bool = True  (training)" in out

    assert cli.main(["methods", "temporal"]) == 2  # a removed name: conv_fusion with fusion=pool2d|pool3d
    assert "unknown method(s) temporal; the methods are ccs, cma, cmmp, conv_fusion, late, nonlocal, spatial" in \
        capsys.readouterr().err
