"""Training under torchrun (DistributedDataParallel, two CPU processes, gloo) equals one process on
the global batch.

The test starts ``python -m torch.distributed.run --standalone --nproc_per_node 2 -m
tests.test_distributed OUT``: each process runs :func:`_worker` below, which trains through the
ordinary :class:`Trainer` with no DDP code of its own. The reference is a plain loop in this process
over the same global batches: the ``DistributedSampler`` permutation of each epoch, cut into slices
of ``batch_size``; the processes' k-th batches together are the k-th slice, and DDP's averaged
gradient of two 4-item means is the gradient of the 8-item mean.

What would make the two differ, and is kept out: BatchNorm normalises each process's batch with its
own statistics (per-process BN is what the Trainer keeps on CPU), so the models here have their
BatchNorm layers replaced by identities; dropout is 0; SGD, not Adam, whose normalised update
magnifies float noise in near-zero gradients.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DistributedSampler, default_collate

from fusionkit.training.distributed import TORCHRUN_VARIABLES
from fusionkit.methods import build_model
from fusionkit.training.schedules import SCHEDULES, alternate_branches, branch_objective, make_optimizer
from fusionkit.training.trainer import TrainConfig, Trainer
from tests.helpers import SyntheticTwoStream

ROOT = Path(__file__).resolve().parent.parent
BASE = dict(batch_size=8, optimizer="sgd", lr=0.02, lr_schedule="constant", device="cpu", progress=False)
CASES = {  # 24 videos / 8 a global batch (4 a process) = 3 steps an epoch
    "late": TrainConfig(epochs=2, schedule="separate", **BASE),
    # branch by branch (Chi et al. §4.3): the DDP wrapper is rebuilt when the frozen branch changes
    "cma": TrainConfig(epochs=1, schedule="alternate", iterations=2, **BASE),
}


def _data() -> SyntheticTwoStream:
    return SyntheticTwoStream(24, new_length=2)


def _model(case: str) -> nn.Module:
    """Seeded, without BatchNorm (see the module docstring), without dropout."""
    torch.manual_seed(0)
    if case == "cma":
        model = build_model("cma", 4, new_length=2, dropout=0.0, positions=["stage1.1"])
    else:
        model = build_model("late", 4, backbone="tiny", new_length=2, dropout=0.0)
    norms = [name for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert norms, "the comparison is meant to cover a model that has BatchNorm in it"
    for name in norms:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, nn.Identity())
    return model


def _worker(out: Path) -> None:
    """One torchrun process: the two trainings, then the configurations DDP refuses."""
    from fusionkit.training import distributed

    rank = int(os.environ["RANK"])
    for case, config in CASES.items():
        Trainer(_model(case), _data(), config, out_dir=out / f"{case}-rank{rank}").fit()
    errors = {}
    refused = {"balanced": dict(classes_per_batch=2, videos_per_class=2), "batch": dict(batch_size=7)}
    for name, change in refused.items():
        try:
            Trainer(_model("late"), _data(), replace(CASES["late"], **change))
        except ValueError as e:
            errors[name] = str(e)
    if distributed.is_main_process():
        (out / "errors.json").write_text(json.dumps(errors))
    distributed.cleanup()


def _reference(case: str) -> tuple[nn.Module, list[float]]:
    """One process, global batches in the DistributedSampler's order; returns the model and each
    epoch's mean loss."""
    model, config, data = _model(case), CASES[case], _data()
    branches = alternate_branches(config.iterations) if config.schedule == "alternate" else [None]
    epoch_losses = []
    for phase, branch in enumerate(branches):
        objective = SCHEDULES[config.schedule](config)
        if branch is not None:
            model.train_branch(branch)
            objective = branch_objective(branch)
        optimizer = make_optimizer(model.parameters(), config)
        for epoch in range(phase * config.epochs, (phase + 1) * config.epochs):
            sampler = DistributedSampler(data, num_replicas=1, rank=0, shuffle=True, seed=config.seed * 100_003)
            sampler.set_epoch(epoch)
            order = list(sampler)
            model.train()
            total = 0.0
            for start in range(0, len(order), config.batch_size):
                batch = default_collate([data[i] for i in order[start:start + config.batch_size]])
                loss = sum(objective(model(batch["rgb"], batch["flow"]), batch["label"]).values())
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.item() * len(batch["label"])
            epoch_losses.append(total / len(order))
    return model, epoch_losses


def test_two_processes_train_the_weights_one_process_trains_on_the_global_batch(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARIABLES}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "tests.test_distributed", str(tmp_path)]
    run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]

    errors = json.loads((tmp_path / "errors.json").read_text())
    assert "balanced batches" in errors["balanced"] and "global batch" in errors["batch"]
    for case in CASES:
        assert not (tmp_path / f"{case}-rank1").exists(), "only rank 0 writes checkpoints and histories"
        reference, losses = _reference(case)
        state = torch.load(tmp_path / f"{case}-rank0" / "checkpoint.pt", weights_only=False)
        trained = _model(case)
        trained.load_state_dict(state["model"])  # saved from the unwrapped model: loads in one process
        for (name, a), b in zip(reference.state_dict().items(), trained.state_dict().values()):
            torch.testing.assert_close(b, a, rtol=0, atol=1e-5, msg=f"{case}: {name}")
        assert any(not torch.equal(a, b) for a, b in zip(_model(case).parameters(), trained.parameters()))
        history = json.loads((tmp_path / f"{case}-rank0" / "history.json").read_text())
        # the history's loss is the mean over both processes' items, as one process would record it
        assert [h["loss"] for h in history] == pytest.approx(losses, abs=1e-5)


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
