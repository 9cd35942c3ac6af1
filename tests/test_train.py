"""Trainer: learning, schedules, NaN guard, checkpoints and resume (also after a real SIGKILL)."""
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from fusionkit.training.evaluate import evaluate
from fusionkit.methods import build_model
from fusionkit.training.trainer import CHECKPOINT, TrainConfig, Trainer
from fusionkit.training.schedules import lr_factor
from fusionkit.training.runtime import resolve_device
from tests.helpers import SyntheticTwoStream

CFG = dict(epochs=4, batch_size=8, optimizer="adamw", lr=3e-3, weight_decay=0.0, progress=False)


def _model(seed=0):
    torch.manual_seed(seed)
    return build_model("late", 4, backbone="tiny", new_length=2, dropout=0.0)


def test_separate_schedule_learns_both_streams():
    train, test = SyntheticTwoStream(48), SyntheticTwoStream(16)
    model = _model()
    history = Trainer(model, train, TrainConfig(**CFG)).fit()
    assert history[-1]["loss"] < history[0]["loss"]
    assert set(history[-1]) >= {"loss_rgb", "loss_flow", "train", "lr", "epoch"}
    metrics = evaluate(model, test)
    assert metrics["rgb"]["top1"] > 0.9 and metrics["flow"]["top1"] > 0.9 and metrics["late"]["top1"] > 0.9


def test_separate_schedule_equals_training_each_stream_alone():
    """The towers share no parameters, so one pass on CE_rgb + CE_flow is separate training."""
    data = SyntheticTwoStream(16)
    both = _model()
    Trainer(both, data, TrainConfig(**{**CFG, "epochs": 2})).fit()

    def rgb_only(out, labels):
        return {"rgb": torch.nn.functional.cross_entropy(out["rgb"], labels)}

    alone = _model()
    Trainer(alone, data, TrainConfig(**{**CFG, "epochs": 2}), objective=rgb_only).fit()
    for (name, a), b in zip(both.rgb_tower.state_dict().items(), alone.rgb_tower.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)


def test_validation_accuracy_is_recorded_per_epoch():
    history = Trainer(_model(), SyntheticTwoStream(16), TrainConfig(**{**CFG, "epochs": 2}),
                      val_set=SyntheticTwoStream(8)).fit()
    assert set(history[-1]["val"]) == {"rgb", "flow", "late"}


def test_nan_loss_stops_training_with_an_explanation():
    trainer = Trainer(_model(), SyntheticTwoStream(16, nan_at=3), TrainConfig(**CFG))
    with pytest.raises(FloatingPointError, match="Lower the learning rate"):
        trainer.fit()


def test_lr_schedules():
    cos = TrainConfig(epochs=10, lr_schedule="cosine")
    assert lr_factor(0, cos) == 1.0 and lr_factor(5, cos) == pytest.approx(0.5)
    step = TrainConfig(epochs=9, lr_schedule="step", lr_step=3)
    assert [lr_factor(e, step) for e in (0, 2, 3, 6)] == pytest.approx([1, 1, 0.1, 0.01])
    warm = TrainConfig(epochs=10, warmup_epochs=2, lr_schedule="constant")
    assert [lr_factor(e, warm) for e in (0, 1, 2)] == pytest.approx([1 / 3, 2 / 3, 1])
    with pytest.raises(ValueError, match="lr_schedule"):
        lr_factor(0, TrainConfig(lr_schedule="wavy"))
    with pytest.raises(ValueError, match="optimizer"):
        Trainer(_model(), SyntheticTwoStream(4), TrainConfig(optimizer="rmsprop"))
    with pytest.raises(ValueError, match="schedule"):
        Trainer(_model(), SyntheticTwoStream(4), TrainConfig(schedule="sometimes"))


def test_device_resolution():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            resolve_device("cuda")


def test_checkpoints_are_written_every_epoch_and_leave_no_temporary_files(tmp_path):
    Trainer(_model(), SyntheticTwoStream(8), TrainConfig(**{**CFG, "epochs": 2}), out_dir=tmp_path).fit()
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT, "history.json"]
    state = torch.load(tmp_path / CHECKPOINT, weights_only=False)
    assert state["epoch"] == 2 and len(json.loads((tmp_path / "history.json").read_text())) == 2


def test_resume_after_an_interruption_mid_epoch_gives_the_same_model(tmp_path):
    data = SyntheticTwoStream(24)
    reference = _model()
    Trainer(reference, data, TrainConfig(**CFG), out_dir=tmp_path / "ref").fit()

    calls = {"n": 0}

    def interrupted(out, labels):
        calls["n"] += 1
        if calls["n"] == 5:  # epoch 2 of 4 (3 steps per epoch), mid-way
            raise KeyboardInterrupt
        return {"rgb": torch.nn.functional.cross_entropy(out["rgb"], labels),
                "flow": torch.nn.functional.cross_entropy(out["flow"], labels)}

    with pytest.raises(KeyboardInterrupt):
        Trainer(_model(), data, TrainConfig(**CFG), out_dir=tmp_path / "run", objective=interrupted).fit()
    assert torch.load(tmp_path / "run" / CHECKPOINT, weights_only=False)["epoch"] == 1
    resumed = _model(seed=123)  # a fresh process would start from other weights: the checkpoint must win
    Trainer(resumed, data, TrainConfig(**CFG), out_dir=tmp_path / "run").fit(resume=True)
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name, rtol=0, atol=0)


KILL_SCRIPT = textwrap.dedent("""
    import sys, time, torch
    sys.path.insert(0, {root!r})
    from fusionkit.methods import build_model
    from fusionkit.training.trainer import TrainConfig, Trainer
    from tests.helpers import SyntheticTwoStream

    class Slow(SyntheticTwoStream):
        def __getitem__(self, i):
            time.sleep({delay})
            return super().__getitem__(i)

    torch.manual_seed(0)
    model = build_model("late", 4, backbone="tiny", new_length=2, dropout=0.0)
    cfg = TrainConfig(epochs=4, batch_size=8, optimizer="adamw", lr=3e-3, weight_decay=0.0, progress=False)
    Trainer(model, Slow(24), cfg, out_dir=sys.argv[1]).fit(resume=True)
    torch.save(model.state_dict(), sys.argv[1] + "/final.pt")
""")


def test_resume_after_sigkill_reproduces_the_uninterrupted_run(tmp_path):
    root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    script = tmp_path / "train.py"
    script.write_text(KILL_SCRIPT.format(root=root, delay=0.02))
    subprocess.run([sys.executable, str(script), str(tmp_path / "ref")], check=True, env=env, timeout=300)

    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(script), str(run)], env=env)
    deadline = time.time() + 240
    while not (run / CHECKPOINT).exists() and time.time() < deadline:  # epoch 1 finished
        time.sleep(0.05)
    time.sleep(0.2)  # into epoch 2
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert torch.load(run / CHECKPOINT, weights_only=False)["epoch"] < 4, "the run finished before it was killed"
    subprocess.run([sys.executable, str(script), str(run)], check=True, env=env, timeout=300)
    a = torch.load(tmp_path / "ref" / "final.pt")
    b = torch.load(run / "final.pt")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)
    assert not math.isnan(sum(v.float().sum().item() for v in b.values()))


def test_run_method_is_reproducible_from_the_seed_initial_weights_included():
    """Fresh processes start torch's generator from different seeds, so the initial weights must be
    seeded from the config too, or two runs of the same notebook differ."""
    from fusionkit.methods import run_method

    data, config = SyntheticTwoStream(8), TrainConfig(**{**CFG, "epochs": 1})
    torch.manual_seed(123)
    a, _, _ = run_method("late", data, None, 4, config=config, new_length=2)
    torch.manual_seed(456)
    b, _, _ = run_method("late", data, None, 4, config=config, new_length=2)
    c, _, _ = run_method("late", data, None, 4, config=replace(config, seed=1), new_length=2)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name
    assert not torch.equal(a.rgb_tower.stages["stem"][0].conv.weight, c.rgb_tower.stages["stem"][0].conv.weight)
