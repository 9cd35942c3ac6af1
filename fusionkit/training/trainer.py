"""The trainer: checkpoints that resume, AMP, DDP; the schedules are in :mod:`fusionkit.training.schedules`.

Reproducibility: every epoch re-seeds Python, NumPy and torch (and the loader's shuffling and
worker seeds) from ``(seed, epoch)``. A checkpoint is written atomically at the end of every
epoch; ``resume=True`` reloads the last one and re-runs the interrupted epoch from its start, so a
run killed mid-epoch ends with the same weights and accuracy as an uninterrupted one.

Several GPUs (or CPU processes): launch under ``torchrun`` and the same :class:`Trainer` trains with
PyTorch's DistributedDataParallel; see its docstring.
"""
from __future__ import annotations

import inspect
import io
import json
import logging
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Mapping

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm

from fusionkit.data.atomic import atomic_write_bytes, atomic_write_text
from fusionkit.data.sampler import BalancedBatchSampler, dataset_labels
from fusionkit.training import distributed
from fusionkit.training.evaluate import evaluate
from fusionkit.training.runtime import autocast, make_loader, resolve_device, seed_everything, to_device
from fusionkit.training.schedules import (ALTERNATE_RGB_WEIGHT, SCHEDULES, Objective, alternate_branches,
                                          branch_objective, lr_factor, make_optimizer)

CHECKPOINT = "checkpoint.pt"
# One INFO line per epoch (and per alternate iteration), a WARNING when the loss keeps rising: the
# `fusionkit` command prints them; elsewhere only warnings show (Python's last-resort handler).
log = logging.getLogger(__name__)
RISING_EPOCHS = 2  # a phase's loss up this many epochs in a row, above its first epoch's: flagged (rising_loss)


@dataclass
class TrainConfig:
    """How to train. Every field has a default; ``explicit`` records which ones the caller *set*, so
    that a method's training defaults (``Method.train_defaults``, e.g. CCS's balanced batches) fill
    only what the caller left unset, while every value the caller gave wins, even one equal to the
    default (``TrainConfig(classes_per_batch=0)`` asks for plain shuffled batches of any method).

    A field is explicit when it is given to the constructor, assigned afterwards, or changed by
    ``dataclasses.replace`` to a value other than its default; ``replace`` keeps the source's
    explicit fields (``replace(config, seed=1)`` is the same request with another seed). The one
    case ``replace`` cannot tell apart, setting a field the source left unset to its default value,
    counts as unset: state such a value in the constructor, or with :meth:`set`. ``explicit`` is not
    compared (``TrainConfig(lr=0.01) == TrainConfig()``) and is filled in, not given.
    """

    epochs: int = 10
    batch_size: int = 16  # the global batch: under torchrun, split evenly over the processes
    optimizer: str = "sgd"  # "sgd" (momentum 0.9, as TSN) or "adamw"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_schedule: str = "cosine"  # "cosine", "step", "constant" or "plateau" (x0.1 when the accuracy stops improving)
    lr_step: int = 0  # epochs between x0.1 drops for "step" (0: a third of the run)
    lr_patience: int = 3  # "plateau": epochs without improvement tolerated before the LR drops x0.1
    warmup_epochs: int = 0
    schedule: str = "separate"
    iterations: int = 1  # "alternate": branch-by-branch iterations of `epochs` epochs each
    first_branch: str = "rgb"  # "alternate": the branch of the first iteration ("flow" continues a trained iter 1)
    classes_per_batch: int = 0  # with videos_per_class: balanced batches of N classes x M videos (CCS §4.1)
    videos_per_class: int = 0  # (0: plain shuffled batches of batch_size)
    seed: int = 0
    device: str = "auto"  # "auto": CUDA if present (bf16 autocast, channels_last), else CPU
    num_workers: int = 0
    progress: bool = True
    sync_batchnorm: bool = False  # under torchrun on GPUs: BatchNorm statistics over the global batch
    find_unused_parameters: bool = False  # under torchrun: for objectives that leave trainable parameters out
    extra: dict = field(default_factory=dict)  # a method's own settings, kept with the checkpoint
    explicit: tuple = field(default=(), compare=False, repr=False)  # the fields the caller set (see above)

    def __setattr__(self, name: str, value) -> None:
        object.__setattr__(self, name, value)
        if name != "explicit" and self.__dict__.get("_recording") and name in _FIELD_DEFAULTS \
                and name not in self.explicit:
            object.__setattr__(self, "explicit", _in_field_order({*self.explicit, name}))

    def set(self, **values) -> "TrainConfig":
        """A copy with ``values`` set and recorded as explicit, whatever they are (also a default)."""
        config = replace(self, **values)
        object.__setattr__(config, "explicit", _in_field_order({*config.explicit, *values}))
        return config

    def with_defaults(self, defaults: Mapping, **forced) -> "TrainConfig":
        """A copy in which ``defaults`` (a method's training defaults) fill the fields this config did
        not set explicitly, and ``forced`` fields are set whatever this config says (the method's
        schedule); ``explicit`` stays this config's (what the caller asked for)."""
        unknown = sorted(set(defaults) - set(_FIELD_DEFAULTS))
        if unknown:
            raise ValueError(f"unknown training default(s) {unknown}; TrainConfig's fields are {sorted(_FIELD_DEFAULTS)}")
        config = replace(self, **{**{k: v for k, v in defaults.items() if k not in self.explicit}, **forced})
        object.__setattr__(config, "explicit", self.explicit)
        return config


def _field_default(f):
    return f.default_factory() if callable(f.default_factory) else f.default


_FIELD_DEFAULTS = {f.name: f for f in fields(TrainConfig) if f.name != "explicit"}


def _in_field_order(names) -> tuple:
    return tuple(n for n in _FIELD_DEFAULTS if n in names)


_dataclass_init = TrainConfig.__init__


def _recording_init(self, *args, **kwargs):
    object.__setattr__(self, "_recording", False)
    _dataclass_init(self, *args, **kwargs)
    given = set(list(_FIELD_DEFAULTS)[:len(args)]) | (set(kwargs) - {"explicit"})
    if "explicit" in kwargs or len(args) > len(_FIELD_DEFAULTS):
        # a copy (dataclasses.replace passes every field, and the source's `explicit`): the source's
        # explicit fields, and those whose value is no longer the default
        given = set(self.explicit) | {n for n in given if getattr(self, n) != _field_default(_FIELD_DEFAULTS[n])}
    object.__setattr__(self, "explicit", _in_field_order(given))
    object.__setattr__(self, "_recording", True)


_recording_init.__doc__, _recording_init.__wrapped__ = _dataclass_init.__doc__, _dataclass_init
_recording_init.__signature__ = inspect.signature(_dataclass_init)
TrainConfig.__init__ = _recording_init


class Trainer:
    """Train a two-stream model on a dataset with one of the schedules, checkpointing every epoch.

    Args:
        model: e.g. ``build_model("late", num_classes, backbone="tiny")``.
        train_set / val_set: TwoStreamDatasets (val optional: accuracy per epoch in the history).
        config: a :class:`TrainConfig`.
        out_dir: where ``checkpoint.pt`` and ``history.json`` go (None: keep nothing on disk).
        objective: overrides the schedule's objective (losses to minimise).

    Several processes, through PyTorch's DistributedDataParallel (DDP): started by ``torchrun``, the
    Trainer finds the variables torchrun sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) and trains
    data-parallel, the calling code unchanged (:mod:`fusionkit.training.distributed`). The command line::

        torchrun --standalone --nproc_per_node 2 -m fusionkit.cli train --dataset ... --out run
        torchrun --standalone --nproc_per_node 2 "$(which fusionkit)" train --dataset ... --out run

    (both work: torchrun runs the ``fusionkit`` entry-point script with Python; ``--nproc_per_node``
    = GPUs per machine; ``--standalone`` picks a free port on one machine).

    - Each process joins the group (``nccl`` on CUDA, one GPU each, ``cuda:LOCAL_RANK``; ``gloo`` on
      CPU) and runs the model wrapped in DDP, which averages the gradients over the processes.
    - ``batch_size`` is the *global* batch: each process loads ``batch_size / world_size`` items (it
      must divide evenly), so a config means the same on 1 GPU and on 8. A ``DistributedSampler``
      seeded from ``(seed, epoch)`` gives each process every ``world_size``-th item of one shared
      permutation, so the processes' k-th batches together are the k-th slice of it, and with mean
      losses the averaged gradient is the global batch's (tests/test_distributed.py checks the weights
      equal a one-process run over the same slices). The single-process order is another
      permutation, so a DDP run is not step-for-step the plain run; where the dataset does not divide
      evenly, the sampler repeats a few items to even the shares.
    - BatchNorm stays per process (statistics of the local batch, as in most DDP training);
      ``sync_batchnorm=True`` makes it SyncBatchNorm over the global batch (GPUs only).
    - Balanced batches (``classes_per_batch``) are refused for now: CCS's batch-hard losses compare
      the items of one batch, and splitting it over processes would change them.
    - ``alternate`` freezes a branch per phase: the DDP wrapper is rebuilt each phase, as DDP reduces
      exactly the parameters that required grad when it was built. An objective of your own that
      leaves some trainable parameter without a gradient needs ``find_unused_parameters=True``.
    - Rank 0 alone writes the checkpoint (from the unwrapped model, so it loads in one process),
      ``history.json`` and the progress bar, and evaluates ``val_set`` whole while the others wait at
      the next step; the history's training loss and accuracy are totals over all processes.
      Leaving the process group at the end is the launcher's (:func:`fusionkit.training.distributed.cleanup`).
    """

    def __init__(self, model: nn.Module, train_set: Dataset, config: TrainConfig, val_set: Dataset | None = None,
                 out_dir: str | os.PathLike | None = None, objective: Objective | None = None):
        if config.schedule not in SCHEDULES and objective is None:
            raise ValueError(f"unknown schedule {config.schedule!r}; available: {sorted(SCHEDULES)}")
        self.model, self.train_set, self.val_set, self.config = model, train_set, val_set, config
        # a phase is `epochs` epochs with one optimizer: one for most schedules, one per iteration for "alternate"
        self.branches = (alternate_branches(config.iterations, config.first_branch)
                         if config.schedule == "alternate" else None)
        if self.branches is not None and not hasattr(model, "train_branch"):
            raise TypeError(f"the alternate schedule trains one branch at a time, which needs a model with "
                            f"train_branch(branch) (a TwoStreamNet); got {type(model).__name__}")
        self.fixed_objective = objective  # a caller's objective overrides the schedule's in every phase
        self.objective = objective or SCHEDULES.lookup(config.schedule)(config)
        self.device = distributed.init_distributed(resolve_device(config.device))
        self.distributed, self.world_size = distributed.is_distributed(), distributed.get_world_size()
        if self.distributed:
            self._check_distributed_config()
            if config.sync_batchnorm:
                self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.sampler = None
        if config.classes_per_batch or config.videos_per_class:
            self.sampler = BalancedBatchSampler(dataset_labels(train_set), config.classes_per_batch,
                                                config.videos_per_class, seed=config.seed)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.model.to(self.device)
        if self.device.type == "cuda":
            self.model.to(memory_format=torch.channels_last)
        self.history: list[dict] = []
        self.epoch = 0
        self.phase = -1
        self.enter_phase(0)

    def _check_distributed_config(self) -> None:
        cfg, n = self.config, self.world_size
        if cfg.classes_per_batch or cfg.videos_per_class:
            raise ValueError(f"balanced batches (classes_per_batch={cfg.classes_per_batch}, videos_per_class="
                             f"{cfg.videos_per_class}) are not supported under torchrun/DDP yet: the CCS ranking "
                             f"losses compare the items of one batch, and splitting a batch over {n} processes would "
                             f"change them; train this method in a single process")
        if cfg.batch_size % n:
            raise ValueError(f"batch_size is the global batch, split evenly over the processes: {cfg.batch_size} does "
                             f"not divide by the {n} processes; use a multiple of {n}")
        if cfg.sync_batchnorm and self.device.type != "cuda":
            raise ValueError(f"sync_batchnorm needs GPUs (PyTorch's SyncBatchNorm has no CPU kernel), but this run "
                             f"trains on {self.device}; leave it off for per-process BatchNorm")

    def _data_parallel(self) -> nn.Module:
        """The module the training step runs: the model itself, or under torchrun a DDP wrapper of it.
        Built anew for each phase, because DDP reduces the gradients of exactly the parameters that
        required grad when it was built, and a phase may freeze or unfreeze a branch."""
        if not self.distributed:
            return self.model
        self.train_model = None  # the old wrapper (and its gradient hooks) goes before the new one hooks in
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(self.model, device_ids=device_ids,
                                       find_unused_parameters=self.config.find_unused_parameters)

    @property
    def total_epochs(self) -> int:
        return self.config.epochs * (len(self.branches) if self.branches else 1)

    def enter_phase(self, phase: int) -> None:
        """Start phase ``phase`` with a fresh optimizer. Under ``alternate`` the phase is an iteration:
        freeze the other branch, train this one on its own loss, weight the scores 5:1 towards it."""
        if self.branches is not None:
            branch = self.branches[phase]
            self.model.train_branch(branch)
            self.model.rgb_weight = ALTERNATE_RGB_WEIGHT[branch]
            self.objective = self.fixed_objective or branch_objective(branch)
            if distributed.is_main_process():
                log.info(f"iteration {phase + 1}/{len(self.branches)}: training the {branch} branch, the other "
                         f"frozen, {self.config.epochs} epoch{'s' if self.config.epochs != 1 else ''}")
        self.train_model = self._data_parallel()
        self.optimizer = make_optimizer(self.model.parameters(), self.config)
        self.plateau = {"best": None, "bad": 0, "drops": 0}  # "plateau" LR: each phase starts at the initial LR
        self.phase = phase

    # -- checkpoints -------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "epoch": self.epoch,
                "phase": self.phase, "history": self.history, "config": asdict(self.config), "plateau": self.plateau}

    def save_checkpoint(self) -> None:
        if self.out_dir is None or not distributed.is_main_process():
            return
        buffer = io.BytesIO()
        torch.save(self.state_dict(), buffer)
        atomic_write_bytes(self.out_dir / CHECKPOINT, buffer.getvalue())
        atomic_write_text(self.out_dir / "history.json", json.dumps(self.history, indent=1))

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        state = torch.load(path, map_location=self.device, weights_only=False)
        self.model.load_state_dict(state["model"])
        self.epoch, self.history = state["epoch"], state["history"]
        phase = min(self.epoch // self.config.epochs, self.total_epochs // self.config.epochs - 1)
        self.enter_phase(phase)
        if state.get("phase", 0) == phase:  # otherwise the next epoch starts a new phase: fresh optimizer
            self.optimizer.load_state_dict(state["optimizer"])
            self.plateau = dict(state.get("plateau") or self.plateau)

    # -- training ----------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> list[dict]:
        """Train until ``config.epochs``; with ``resume`` continue from ``out_dir``'s checkpoint."""
        if resume and self.out_dir is not None and (self.out_dir / CHECKPOINT).is_file():
            self.load_checkpoint(self.out_dir / CHECKPOINT)
        while self.epoch < self.total_epochs:
            phase = self.epoch // self.config.epochs
            if phase != self.phase:
                self.enter_phase(phase)
            record = self.train_epoch(self.epoch)
            if self.val_set is not None and distributed.is_main_process():  # the others wait at the next step
                metrics = evaluate(self.model, self.val_set, batch_size=self.config.batch_size, device=self.device,
                                   num_workers=self.config.num_workers)
                record["val"] = {name: round(m["top1"], 4) for name, m in metrics.items()}
            self._step_plateau(record)
            self.history.append(record)
            self._report_epoch(record)
            self.epoch += 1
            self.save_checkpoint()
        return self.history

    def _report_epoch(self, record: dict) -> None:
        """Flag a rising loss in the record (``rising_loss``) and log the epoch's line."""
        phase = [h["loss"] for h in self.history[self.epoch - self.epoch % self.config.epochs:]]
        recent = phase[-RISING_EPOCHS - 1:]
        if len(recent) > RISING_EPOCHS and all(a < b for a, b in zip(recent, recent[1:])) and recent[-1] > phase[0]:
            record["rising_loss"] = True
            if distributed.is_main_process():
                log.warning(f"the training loss has risen for {RISING_EPOCHS} epochs in a row "
                            f"({' -> '.join(f'{x:.3f}' for x in recent)}), above where this phase started: training "
                            f"is diverging; lower the learning rate ({record['lr']:g} in this epoch)")
        if distributed.is_main_process():
            accuracy = "  ".join(f"{k} {v:.3f}" for k, v in record["train"].items())
            val = "  ".join(f"{k} {v:.3f}" for k, v in record.get("val", {}).items())
            losses = ", ".join(f"{k[5:]} {v:.3f}" for k, v in record.items() if k.startswith("loss_"))
            log.info(f"epoch {record['epoch']}/{self.total_epochs}  lr {record['lr']:.3g}  loss {record['loss']:.3f}"
                     + (f" ({losses})" if losses else "") + f"  train top-1: {accuracy}"
                     + (f"  val top-1: {val}" if val else ""), extra={"record": record})

    def _step_plateau(self, record: dict) -> None:
        """``lr_schedule="plateau"``: after ``lr_patience`` epochs without improvement, the next one
        without divides the LR by 10 (as PyTorch's ReduceLROnPlateau). Improvement of the fused
        output's validation top-1 when there is a validation set (one process), else of the training
        loss (under torchrun: the loss summed over all processes, so every process decides alike)."""
        if self.config.lr_schedule != "plateau":
            return
        val = record.get("val")
        if val and not self.distributed:
            roles = self.model.output_roles() if hasattr(self.model, "output_roles") else {}
            score = val.get(roles.get("fused"), max(val.values()))
        else:
            score = -record["loss"]
        p = self.plateau
        if p["best"] is None or score > p["best"] + 1e-9:
            p.update(best=score, bad=0)
        else:
            p["bad"] += 1
            if p["bad"] > self.config.lr_patience:
                p.update(drops=p["drops"] + 1, bad=0)
                record["lr_drop"] = p["drops"]

    def train_epoch(self, epoch: int) -> dict:
        """One pass over the data at epoch ``epoch`` (0-based, counted over all phases)."""
        cfg = self.config
        seed, rank = cfg.seed * 100_003 + epoch, distributed.get_rank() if self.distributed else 0
        seed_everything(seed + 1_000_003 * rank)  # each process draws its own snippets and crops
        lr = cfg.lr * lr_factor(epoch % cfg.epochs, cfg)  # the LR schedule restarts with each phase
        lr *= 0.1 ** self.plateau["drops"]  # "plateau": the drops so far in this phase
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if self.sampler is not None:  # N classes x M videos a batch
            self.sampler.set_epoch(epoch)
            loader = DataLoader(self.train_set, batch_sampler=self.sampler, num_workers=cfg.num_workers,
                                pin_memory=self.device.type == "cuda")
        elif self.distributed:  # this process's share of one permutation (see the class docstring)
            sampler = DistributedSampler(self.train_set, num_replicas=self.world_size, rank=rank, shuffle=True,
                                         seed=cfg.seed * 100_003)
            sampler.set_epoch(epoch)
            loader = DataLoader(self.train_set, batch_size=cfg.batch_size // self.world_size, sampler=sampler,
                                num_workers=cfg.num_workers, pin_memory=self.device.type == "cuda",
                                generator=torch.Generator().manual_seed(seed + 1_000_003 * rank))
        else:
            loader = make_loader(self.train_set, cfg.batch_size, True, seed, cfg.num_workers, self.device)
        self.train_model.train()
        sums: dict[str, float] = {}
        correct: dict[str, int] = {}
        seen = 0
        desc = f"epoch {epoch + 1}/{self.total_epochs}"
        if self.branches is not None:
            desc = f"iter {self.phase + 1} ({self.branches[self.phase]}) " + desc
        bar = tqdm(loader, desc=desc, disable=not (cfg.progress and distributed.is_main_process()), leave=False)
        for step, batch in enumerate(bar):
            batch = to_device(batch, self.device)
            labels = batch["label"]
            with autocast(self.device):
                out = self.train_model(batch["rgb"], batch["flow"])
                losses = self.objective(out, labels)
            loss = sum(losses.values())
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"the loss became {loss.item()} at epoch {epoch + 1}, step {step + 1} "
                    f"({', '.join(f'{k}={v.item():.4g}' for k, v in losses.items())}); training stopped rather than "
                    f"produce a broken model. Lower the learning rate (now {lr:g}) or check the inputs for NaN/inf.")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            n = len(labels)
            seen += n
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v.item() * n
            for k, v in out.items():
                correct[k] = correct.get(k, 0) + (v.argmax(-1) == labels).sum().item()
            bar.set_postfix(loss=f"{loss.item():.3f}")
        if self.distributed:  # the epoch's totals over all processes, not this one's share
            seen = distributed.all_reduce_sums({"seen": seen}, self.device)["seen"]
            sums = distributed.all_reduce_sums(sums, self.device)
            correct = distributed.all_reduce_sums(correct, self.device)
        record = {"epoch": epoch + 1, "lr": lr, "loss": sum(sums.values()) / max(seen, 1)}
        if self.branches is not None:
            record.update(iteration=self.phase + 1, branch=self.branches[self.phase])
        record.update({f"loss_{k}": v / max(seen, 1) for k, v in sums.items()})
        record["train"] = {k: round(v / max(seen, 1), 4) for k, v in correct.items()}
        return record
