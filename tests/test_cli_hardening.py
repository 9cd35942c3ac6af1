"""`fusionkit` on real-looking trees with bad inputs (issue 16, the command-line items): an existing
run is never overwritten silently, every dataset problem is named at once with its repair, the
summary and per-epoch lines say what happens, --help documents the defaults, failed commands leave
nothing behind, and a rising loss is reported.

Kept fast as tests/test_cli_train.py is: the shared 64-pixel `motion` puzzle (UCF-101 layout) and
its cache, 1-2 epochs, batch 4, tiny towers."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fusionkit import cli
from fusionkit.data.flow import frame_name
from fusionkit.data.splits import load_ucf101_split

REPO = Path(__file__).resolve().parents[1]


def _train_args(root, cache, out, *extra, method="late", epochs=1, dataset="ucf101"):
    return ["train", "--dataset", dataset, "--root", str(root), "--flow-root", str(cache), "--method", method,
            "--backbone", "tiny", "--epochs", str(epochs), "--batch-size", "4", "--segments", "2",
            "--test-segments", "3", "--new-length", "2", "--input-size", "64", "--loader-workers", "0",
            "--device", "cpu", "--out", str(out), "--quiet", *extra]


def _tree_digest(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def copies(motion_puzzle, motion_cache, tmp_path):
    """Writable copies of the motion puzzle's videos and of its cache (which records its root)."""
    root, cache = tmp_path / "videos", tmp_path / "cache"
    shutil.copytree(motion_puzzle, root)
    shutil.copytree(motion_cache, cache)
    return root, cache


@pytest.fixture
def damaged(copies):
    """One train video of each kind of problem: deleted from the root, FAILED in extract-flow (garbage
    bytes), never extracted, and a flow JPEG missing from its cache folder."""
    from fusionkit.data.flow import extract_flow

    root, cache = copies
    train = load_ucf101_split(root).train
    missing, failed, pending, broken = train[0], train[2], train[4], train[6]
    (root / missing.path).unlink()
    for r in (missing, failed, pending):
        shutil.rmtree(cache / r.video_id)
    (root / failed.path).write_bytes(np.random.default_rng(0).bytes(3000))
    assert list(extract_flow(root, cache, videos=[failed.path], progress=False).failed) == [failed.path]
    (cache / broken.video_id / frame_name("flow_x", 1)).unlink()
    return root, cache, {"missing": missing, "failed": failed, "pending": pending, "broken": broken}


# --- item 1: a run is never overwritten silently ------------------------------------------------
def test_train_refuses_an_existing_run_unless_resume_or_overwrite(motion_puzzle, motion_cache, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(_train_args(motion_puzzle, motion_cache, run)) == 0
    assert cli.main(["evaluate", str(run), "--segments", "2", "--device", "cpu"]) == 0
    before = _tree_digest(run)
    capsys.readouterr()

    assert cli.main(_train_args(motion_puzzle, motion_cache, run, epochs=2)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fusionkit train: error: --out {run} already holds a finished run")
    assert "--resume" in err and "--overwrite" in err and "eval_2seg.json" in err and "Traceback" not in err
    assert _tree_digest(run) == before  # nothing changed

    (run / "eval.json").unlink()  # an interrupted run is refused too
    assert cli.main(_train_args(motion_puzzle, motion_cache, run)) == 2
    assert "already holds a started run" in capsys.readouterr().err

    assert cli.main(_train_args(motion_puzzle, motion_cache, run, "--resume", "--overwrite")) == 2
    assert "give one of them" in capsys.readouterr().err

    assert cli.main(_train_args(motion_puzzle, motion_cache, run, "--resume", epochs=2)) == 0
    assert [h["epoch"] for h in json.loads((run / "history.json").read_text())] == [1, 2]
    assert "note: eval_2seg.json evaluated the run before it was resumed" in capsys.readouterr().err

    assert cli.main(_train_args(motion_puzzle, motion_cache, run, "--overwrite", epochs=3)) == 0
    assert "--overwrite: deleted checkpoint.pt, dataset.json, eval.json, eval_2seg.json, history.json, run.json" in \
        capsys.readouterr().out
    assert not (run / "eval_2seg.json").exists()  # the old run's evaluations went with it
    assert [h["epoch"] for h in json.loads((run / "history.json").read_text())] == [1, 2, 3]
    assert json.loads((run / "run.json").read_text())["train"]["epochs"] == 3


# --- item 2: the cache verifies and repairs itself; dataset errors name the video and the fix -----
def test_extract_flow_verify_repairs_what_the_size_check_cannot_see(motion_puzzle, motion_cache, copies, capsys):
    root, cache = copies
    video = load_ucf101_split(root).train[1]
    target = cache / video.video_id / frame_name("flow_y", 3)
    data = bytearray(target.read_bytes())
    data[-2:] = b"\0\0"  # same size, but no JPEG end marker
    target.write_bytes(bytes(data))
    args = ["extract-flow", "--root", str(root), "--out", str(cache), "--quiet"]
    assert cli.main(args) == 0
    assert capsys.readouterr().out.startswith("0 extracted, 16 already done, 0 failed\n")
    assert cli.main(args + ["--verify"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("0 extracted, 15 already done, 0 failed, 1 repaired")
    assert f"REPAIRED {video.path}" in out and "flow_y_00004.jpg is truncated" in out
    assert target.read_bytes() == (motion_cache / video.video_id / target.name).read_bytes()


def test_train_reports_every_dataset_problem_at_once_with_its_repair(damaged, tmp_path, capsys):
    root, cache, bad = damaged
    run = tmp_path / "run"
    assert cli.main(_train_args(root, cache, run)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fusionkit train: error: 4 of 16 videos cannot be used (FusionkitCache at {cache})")
    assert "Traceback" not in err and "<videos>" not in err
    repair = f"`fusionkit extract-flow --root {root} --out {cache} --backend dis`"
    for title in ("listed in the split file but absent from the video root (1)", "extraction failed (1)",
                  f"no extracted frames/flow (1): not extracted yet: run {repair}",
                  f"frames or flow damaged (1): their cache folders are damaged: {repair} re-extracts them"):
        assert title in err
    for r in bad.values():
        assert f"    {r.path}: " in err
    assert "or pass --skip-bad to train and test on the other 12 videos" in err
    assert not run.exists()  # checked before anything was written


def test_skip_bad_trains_on_the_rest_and_says_what_it_left_out(damaged, tmp_path, capsys):
    root, cache, bad = damaged
    run = tmp_path / "run"
    assert cli.main(_train_args(root, cache, run, "--skip-bad")) == 0
    out = capsys.readouterr().out
    assert "4 videos for training, 8 for testing" in out
    assert "left out (--skip-bad): 4 of 16 videos cannot be used" in out
    for r in bad.values():
        assert f"    {r.path}: " in out
    info = json.loads((run / "dataset.json").read_text())
    assert sorted(info["left_out"]) == sorted(r.path for r in bad.values()) and info["skip_bad"] is True
    assert info["videos"] == {"train": 4, "test": 8}
    assert cli.main(["evaluate", str(run), "--segments", "2", "--device", "cpu"]) == 0  # the same videos


def test_a_file_damaged_while_training_is_one_line_with_its_repair(motion_puzzle, motion_cache, tmp_path,
                                                                    monkeypatch, capsys):
    """Read in a DataLoader worker, a damaged JPEG comes back wrapped in the worker's traceback: the
    command prints the error itself, which names the video and the repair command."""
    from fusionkit.data.flow import CacheEntryError
    from fusionkit.data.stores import FusionkitCache

    def damaged(self, video_id, indices):
        raise CacheEntryError(f"flow image {self.root / video_id / 'flow_x_00001.jpg'} is truncated (12 bytes, no "
                              f"JPEG end marker)")

    monkeypatch.setattr(FusionkitCache, "load_flow", damaged)
    args = _train_args(motion_puzzle, motion_cache, tmp_path / "run")
    args[args.index("--loader-workers") + 1] = "1"
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "DataLoader worker" not in err, err
    assert err.startswith("fusionkit train: error: video ") and "flow_x_00001.jpg is truncated" in err
    assert f"To repair: their cache folders are damaged: `fusionkit extract-flow --root {motion_puzzle}" in err
    assert len(err.strip().splitlines()) == 1


# --- item 4: the dataset summary --------------------------------------------------------------
def test_train_prints_a_dataset_summary(motion_puzzle, motion_cache, tmp_path, capsys):
    assert cli.main(_train_args(motion_puzzle, motion_cache, tmp_path / "run")) == 0
    out = capsys.readouterr().out
    classes = load_ucf101_split(motion_puzzle).classes
    assert out.startswith(f"dataset ucf101 (split 1): 4 classes ({', '.join(classes)}); 8 videos for training, 8 for "
                          f"testing\n  frames per video: 12; snippets of 1 RGB frame and 2 flow fields, 2 per video in "
                          f"training, 3 in testing\n  all 16 videos usable (FusionkitCache at {motion_cache})\n")


def test_a_truncated_video_is_reported_by_extract_flow_and_in_the_summary(copies, tmp_path, capsys):
    from fusionkit.data.video import write_video

    root, cache = copies
    video = load_ucf101_split(root).train[3]
    frames = np.random.default_rng(1).integers(0, 255, (30, 64, 64, 3), dtype=np.uint8)
    write_video(root / video.path, frames)
    data = (root / video.path).read_bytes()
    (root / video.path).write_bytes(data[: int(len(data) * 0.6)])  # an interrupted copy: the header promises 30
    shutil.rmtree(cache / video.video_id)
    assert cli.main(["extract-flow", "--root", str(root), "--out", str(cache), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "1 extracted, 15 already done, 0 failed, 1 truncated" in captured.out
    assert f"TRUNCATED {video.path}: " in captured.out and "looks truncated" in captured.out
    assert "RuntimeWarning" not in captured.err  # said once, in the report
    assert cli.main(_train_args(root, cache, tmp_path / "run")) == 0
    out = capsys.readouterr().out
    assert "video(s) decoded to fewer frames than their container promises" in out
    assert f"    {video.path}: decoded " in out and "of the 30 frames its container promises" in out
    assert "frames per video: 12-" in out


# --- item 6: HMDB-51 split files, and no Python argument in messages ------------------------------
@pytest.fixture
def hmdb_tree(motion_puzzle, tmp_path):
    """The motion puzzle's videos in HMDB-51's layout, its split files (<class>_test_split1.txt,
    CRLF) in a folder of their own; the motion cache serves as its flow cache (same video ids)."""
    root, splits = tmp_path / "hmdb", tmp_path / "hmdb_splits"
    split = load_ucf101_split(motion_puzzle)
    splits.mkdir()
    for label, name in enumerate(split.classes):
        (root / name).mkdir(parents=True)
        lines = []
        for tag, records in (("1", split.train), ("2", split.test)):
            for r in records:
                if r.label == label:
                    os.symlink(motion_puzzle / r.path, root / r.path)
                    lines.append(f"{Path(r.path).name} {tag}\r\n")
        (splits / f"{name}_test_split1.txt").write_text("".join(lines), newline="")
    return root, splits


def test_hmdb51_split_files_elsewhere_are_found_with_split_dir(hmdb_tree, motion_cache, tmp_path, capsys):
    root, splits = hmdb_tree
    args = _train_args(root, motion_cache, tmp_path / "run", dataset="hmdb51")
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert f"no HMDB-51 split files '*_test_split1.txt' in {root}" in err
    assert "--split-dir DIR" in err and "annotations=<" not in err
    assert not (tmp_path / "run").exists()

    assert cli.main(args + ["--split-dir", str(splits)]) == 0
    assert "dataset hmdb51 (split 1): 4 classes" in capsys.readouterr().out
    info = json.loads((tmp_path / "run" / "dataset.json").read_text())
    assert info["split_dir"] == str(splits.resolve())
    assert cli.main(["evaluate", str(tmp_path / "run"), "--segments", "2", "--device", "cpu"]) == 0


def test_messages_name_no_python_argument_the_command_lacks():
    sources = [p.read_text() for p in (REPO / "fusionkit").rglob("*.py")]
    assert not [s for s in sources if "annotations=<" in s]


def test_train_help_says_where_split_files_go(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "classInd.txt, trainlist0N.txt, testlist0N.txt in <root>/ucfTrainTestlist/" in out
    assert "<class>_test_splitN.txt (1 train, 2 test, 0 unused) in <root>/testTrainMulti_7030_splits/" in out
    assert "--split-dir DIR" in out


# --- item 9: per-epoch lines, phases, output names, evaluate's sweep ------------------------------
def test_conv_fusion_says_its_phases_keeps_the_streams_history_and_explains_its_outputs(
        motion_puzzle, motion_cache, tmp_path, capsys):
    run = tmp_path / "run"
    args = [a for a in _train_args(motion_puzzle, motion_cache, run, "--option", "widths=[8,8,8]",
                                   method="conv_fusion") if a != "--quiet"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    one = lines.index("phase 1/2: training the streams (late)")
    two = lines.index("phase 2/2: conv_fusion from the trained streams (finetune schedule)")
    assert lines[one + 1].startswith("epoch 1/1  lr 0.001  loss ") and "train top-1: rgb " in lines[one + 1]
    assert lines[two + 1].startswith("epoch 1/1  lr 0.0001  loss ") and "conv_fusion-S " in lines[two + 1]
    assert "conv_fusion-R: the appearance (RGB) tower's prediction" in out
    assert "conv_fusion-F: the motion (optical-flow) tower's prediction" in out
    assert "conv_fusion-S: the fused prediction, the method's answer: the softmax scores of conv_fusion-R " \
           "(weight 0.5) and conv_fusion-F averaged" in out
    assert "fusion-weight sweep (conv_fusion-S = w x conv_fusion-R + (1 - w) x conv_fusion-F" in out
    streams = json.loads((run / "pretrain_history.json").read_text())
    assert [h["epoch"] for h in streams] == [1] and {"rgb", "flow", "late"} <= set(streams[0]["train"])
    assert set(json.loads((run / "history.json").read_text())[0]["train"]) == {"conv_fusion-R", "conv_fusion-F",
                                                                                "conv_fusion-S"}


def test_cma_says_which_branch_each_iteration_trains(motion_puzzle, motion_cache, tmp_path, capsys):
    args = [a for a in _train_args(motion_puzzle, motion_cache, tmp_path / "run", "--iterations", "2",
                                   method="cma") if a != "--quiet"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "phase 1/2: training the streams (late)" in out
    assert "iteration 1/2: training the rgb branch, the other frozen, 1 epoch" in out
    assert "iteration 2/2: training the flow branch, the other frozen, 1 epoch" in out
    assert "cma-S: the fused prediction" in out and "(weight 0.166667)" in out


def test_quiet_leaves_out_the_epoch_lines_and_late_names_its_streams(motion_puzzle, motion_cache, tmp_path, capsys):
    assert cli.main(_train_args(motion_puzzle, motion_cache, tmp_path / "run")) == 0
    out = capsys.readouterr().out
    assert "epoch 1/1" not in out
    assert "rgb: the appearance (RGB) tower's prediction, the stream alone" in out
    assert "late: the fused prediction, the method's answer" in out


def test_evaluate_prints_the_sweeps_best_weight_and_its_help_says_so(motion_puzzle, motion_cache, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(_train_args(motion_puzzle, motion_cache, run)) == 0
    capsys.readouterr()
    assert cli.main(["evaluate", str(run), "--segments", "3", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    sweep = json.loads((run / "eval_3seg.json").read_text())["fusion_weight_sweep"]
    best = max(sweep["top1"])
    assert f"the best w is " in out and f"top-1 {best:.3f}" in out
    with pytest.raises(SystemExit):
        cli.main(["evaluate", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "the best RGB weight of the fusion-weight sweep" in help_text


# --- item 10: --help ------------------------------------------------------------------------
def test_the_static_method_lists_match_the_registry():
    from fusionkit.methods import get_method, list_methods

    assert sorted(cli.METHOD_HELP) == list_methods()
    assert sorted(cli.FROM_TRAINED_STREAMS) == [m for m in list_methods() if get_method(m).pretrain]


def test_train_help_lists_methods_defaults_and_explains_every_option(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    out = capsys.readouterr().out
    flat = " ".join(out.split())
    for name, text in cli.METHOD_HELP.items():
        assert f"  {name:12s} {text}" in out
    for shown in ("--batch-size BATCH_SIZE videos per batch (under torchrun: the global batch) (default: 16)",
                  "--optimizer {sgd,adamw} sgd (momentum 0.9, as TSN) or adamw (default: adamw)",
                  "0.002 (default: 0.001)", "default: 0.1 x --lr",
                  "crop size (default: the puzzle's frame size, or 224)",
                  "--test-segments TEST_SEGMENTS snippets per video in testing, evenly spaced (default: 25)",
                  "--split {1,2,3} the official split: ucf101 trainlist0N.txt / testlist0N.txt, hmdb51 "
                  "<class>_test_splitN.txt (puzzles have split 1 only) (default: 1)",
                  "--flow-workers FLOW_WORKERS puzzles only: processes extracting the flow",
                  "--loader-workers LOADER_WORKERS DataLoader processes decoding frames and flow while the model "
                  "trains (0: in the main process) (default: 2)",
                  "--flow-backend {dis,farneback,tvl1,tvl1-torch} puzzles only: optical-flow estimator"):
        assert shown in flat, shown


def test_extract_flow_help_explains_backends_and_workers(capsys):
    with pytest.raises(SystemExit):
        cli.main(["extract-flow", "--help"])
    flat = " ".join(capsys.readouterr().out.split())
    assert "tvl1-torch (the same TV-L1 in PyTorch" in flat and "(default: dis)" in flat
    assert "processes, one video each at a time" in flat and "--verify also decode every JPEG" in flat


def test_the_top_level_help_describes_the_command(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert "two-stream (RGB + optical flow) action recognition" in out and "The ``fusionkit`` command" not in out


def test_building_the_parser_imports_no_torch():
    code = "import sys; from fusionkit import cli; cli.build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO).stdout
    assert out.strip() == "False"


# --- item 11: failed commands leave nothing behind ----------------------------------------------
def test_extract_flow_with_a_missing_or_wrong_root_creates_no_cache(motion_puzzle, tmp_path, capsys):
    out = tmp_path / "cache"
    assert cli.main(["extract-flow", "--root", str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    assert "video root" in capsys.readouterr().err and not out.exists()
    flat = tmp_path / "flat"
    flat.mkdir()
    shutil.copy(next(motion_puzzle.glob("*/*.avi")), flat)
    assert cli.main(["extract-flow", "--root", str(flat), "--out", str(out)]) == 2
    assert "expected layout <root>/<Class>/<video>.avi" in capsys.readouterr().err and not out.exists()


def test_train_with_a_missing_root_or_flow_root_creates_nothing(motion_puzzle, tmp_path, capsys):
    run, cache = tmp_path / "run", tmp_path / "cache"
    assert cli.main(_train_args(tmp_path / "nowhere", cache, run)) == 2
    assert f"--root {tmp_path / 'nowhere'} is not a folder" in capsys.readouterr().err
    assert cli.main(_train_args(motion_puzzle, cache, run)) == 2
    err = capsys.readouterr().err
    assert f"--flow-root {cache} does not exist: extract the frames and flow first, `fusionkit extract-flow " \
           f"--root {motion_puzzle} --out {cache}`" in err
    assert not run.exists() and not cache.exists() and sorted(tmp_path.iterdir()) == []


# --- item 12: a rising loss is reported; the command line's defaults train on real footage -------
def _rising_epochs(losses):
    def train_epoch(self, epoch):
        return {"epoch": epoch + 1, "lr": self.config.lr, "loss": losses[epoch], "train": {"rgb": 0.25}}
    return train_epoch


def test_the_trainer_flags_a_loss_that_keeps_rising(monkeypatch, caplog):
    from fusionkit.methods import build_model
    from fusionkit.training.trainer import TrainConfig, Trainer
    from tests.helpers import SyntheticTwoStream

    def fit(losses):
        monkeypatch.setattr(Trainer, "train_epoch", _rising_epochs(losses))
        model = build_model("late", 4, backbone="tiny", widths=[8, 8, 8], new_length=2)
        config = TrainConfig(epochs=len(losses), device="cpu", progress=False)
        return Trainer(model, SyntheticTwoStream(8), config).fit()

    with caplog.at_level("WARNING", logger="fusionkit"):
        history = fit([3.38, 6.82, 8.89, 7.0])  # the conv_fusion fusion phase at SGD 0.01
    assert [bool(h.get("rising_loss")) for h in history] == [False, False, True, False]
    assert "the training loss has risen for 2 epochs in a row (3.380 -> 6.820 -> 8.890)" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="fusionkit"):  # noise below where the phase started is no divergence
        history = fit([1.4, 0.5, 0.55, 0.6, 0.3])
    assert not any(h.get("rising_loss") for h in history) and not caplog.text


def test_train_warns_when_the_loss_keeps_rising(motion_puzzle, motion_cache, tmp_path, monkeypatch, capsys):
    from fusionkit.training.trainer import Trainer

    monkeypatch.setattr(Trainer, "train_epoch", _rising_epochs([1.0, 1.5, 2.5]))
    run = tmp_path / "run"
    assert cli.main(_train_args(motion_puzzle, motion_cache, run, epochs=3)) == 0
    err = capsys.readouterr().err
    assert "fusionkit train: warning: the training loss has risen for 2 epochs in a row (1.000 -> 1.500 -> 2.500)" \
        in err
    assert "flagged rising_loss at epoch(s) 3 in history.json" in err
    assert json.loads((run / "history.json").read_text())[2]["rising_loss"] is True


def test_the_command_lines_defaults_are_stable_ones_and_the_apis_stay(motion_puzzle, motion_cache, tmp_path):
    """AdamW at 1e-3 for the streams and a tenth of it for a method's fine-tuning phase (SGD at 0.01
    diverged on conv_fusion's fusion phase on real footage); TrainConfig keeps SGD at 0.01, which the
    notebooks' numbers were computed with."""
    from fusionkit.training.trainer import TrainConfig

    args = cli.build_parser().parse_args(["train", "--dataset", "ucf101", "--out", "x"])
    assert (args.optimizer, args.lr, args.finetune_lr) == ("adamw", 1e-3, None)
    assert (TrainConfig().optimizer, TrainConfig().lr) == ("sgd", 0.01)
    run = tmp_path / "run"
    train = _train_args(motion_puzzle, motion_cache, run, "--option", "widths=[8,8,8]", method="spatial")
    assert cli.main(train) == 0
    spec = json.loads((run / "run.json").read_text())
    assert spec["train"]["optimizer"] == "adamw" and spec["train"]["lr"] == pytest.approx(1e-4)
    assert json.loads((run / "pretrain_history.json").read_text())[0]["lr"] == pytest.approx(1e-3)
    assert cli.main(train + ["--finetune-lr", "0.0005", "--overwrite"]) == 0
    assert json.loads((run / "run.json").read_text())["train"]["lr"] == pytest.approx(5e-4)
