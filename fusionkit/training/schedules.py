"""Schedules and their objectives, optimizers and learning-rate schedules.

Schedules (the training shapes of the methods, :mod:`fusionkit.methods`):

- ``separate``: each stream trained on its own with its own cross-entropy, as the original
  two-stream network (Simonyan & Zisserman 2014). The towers share no parameters, and SGD and
  AdamW update each parameter from its own gradient, so minimising ``CE_rgb + CE_flow`` in one
  pass over the data is exactly training the two streams separately, at half the data loading.
- ``joint``: one cross-entropy on the fused output, back-propagated through everything.
- ``finetune``: a loss per classifier, starting from separately trained streams (Feichtenhofer
  et al. §3.5); see :func:`fusionkit.methods.recipe.run_method`.
- ``alternate``: Chi et al.'s iterative training (CMA, §4.3). Iteration 1 trains the RGB branch
  on its own cross-entropy (the ``rgb`` role's output) with the whole flow branch frozen, CMA units
  of the flow branch included; iteration 2 the reverse; and so on for ``iterations`` iterations of
  ``epochs`` epochs each. Each iteration starts a fresh optimizer at the initial LR ("At the
  beginning of each iteration, we reset the learning rate", §4.4) and sets the model's score
  weighting to 5:1 towards the branch just trained (§5.2). The flow branch is trained *before*
  iteration 1 (§4.3: "we firstly train the flow branch"); :func:`fusionkit.methods.recipe.run_method`
  does that by initialising it from a separately trained flow tower.
- A method's own objective registers a schedule of its own from its module: ``two_stage``
  (CMMP's adversarial objective, :mod:`fusionkit.methods.cmmp`) and ``ccs`` (Eq. 6,
  :mod:`fusionkit.methods.ccs`). :data:`SCHEDULES` imports them when first read.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F

from fusionkit.registry import Registry

if TYPE_CHECKING:
    from fusionkit.training.trainer import TrainConfig

# --- objectives: output + labels -> named losses whose sum is minimised ---------------------
Objective = Callable[[dict, torch.Tensor], dict]


def heads_objective(out, labels):
    """A cross-entropy per classifier: for two separate towers, each stream's own loss (the
    ``separate`` schedule); for a fused network that keeps its motion tower, both losses (§3.4 of
    Feichtenhofer et al.: "The losses of both streams are used for training")."""
    return {name: F.cross_entropy(out[name], labels) for name in out.heads}


def joint_objective(out, labels):
    """One cross-entropy on the fused output, back-propagated through everything."""
    return {out.fused: F.cross_entropy(out[out.fused], labels)}


def branch_objective(branch: str) -> Objective:
    """The cross-entropy of one branch's own classifier (its ``rgb`` or ``flow`` role):
    what an ``alternate`` iteration minimises (Chi et al. §4.3, Eq. 7)."""
    if branch not in ("rgb", "flow"):
        raise ValueError(f"branch must be 'rgb' or 'flow', got {branch!r}")

    def objective(out, labels):
        name = out.roles[branch]
        return {name: F.cross_entropy(out[name], labels)}

    return objective


# Each schedule names a factory ``config -> objective``: "finetune" trains like "separate" (a loss
# per classifier; run_method first loads the weights of separately trained streams and, if asked,
# freezes what lies below the fusion point); "alternate" starts with its first branch's loss and
# Trainer.enter_phase switches it each iteration. Methods add theirs (register_schedule).
# (The built-ins are given to the registry directly: registering them would import the provider,
# fusionkit.methods, which imports this module.)
SCHEDULES = Registry("schedule", provider="fusionkit.methods", entries={
    "separate": lambda config: heads_objective,
    "joint": lambda config: joint_objective,
    "finetune": lambda config: heads_objective,
    "alternate": lambda config: branch_objective(config.first_branch),
})
register_schedule = SCHEDULES.register  # for factories ``(config) -> objective``
# Chi et al. §5.2: weights 5:1 towards the branch trained in the latest iteration
ALTERNATE_RGB_WEIGHT = {"rgb": 5 / 6, "flow": 1 / 6}


def alternate_branches(iterations: int, first: str = "rgb") -> list[str]:
    """The branch each ``alternate`` iteration trains: RGB in iter 1, 3, 5, ..., flow in 2, 4, ... (§4.3);
    ``first="flow"`` starts from the flow branch (to go on from a model trained for iteration 1)."""
    if iterations < 1:
        raise ValueError(f"the alternate schedule needs iterations >= 1, got {iterations}")
    if first not in ("rgb", "flow"):
        raise ValueError(f"the first branch must be 'rgb' or 'flow', got {first!r}")
    order = ("rgb", "flow") if first == "rgb" else ("flow", "rgb")
    return [order[i % 2] for i in range(iterations)]


def alternate_final_rgb_weight(config: "TrainConfig") -> float:
    """The RGB share of ``-S`` once an ``alternate`` run ends: 5:1 towards the branch trained last."""
    return ALTERNATE_RGB_WEIGHT[alternate_branches(config.iterations, config.first_branch)[-1]]


def make_optimizer(params, config: "TrainConfig") -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    raise ValueError(f"unknown optimizer {config.optimizer!r}; use 'sgd' or 'adamw'")


def lr_factor(epoch: int, config: "TrainConfig") -> float:
    """Multiplier of the base LR during ``epoch`` (0-based): linear warm-up, then the schedule."""
    if epoch < config.warmup_epochs:
        return (epoch + 1) / (config.warmup_epochs + 1)
    e, n = epoch - config.warmup_epochs, max(config.epochs - config.warmup_epochs, 1)
    if config.lr_schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * e / n))
    if config.lr_schedule == "step":
        return 0.1 ** (e // (config.lr_step or max(n // 3, 1)))
    if config.lr_schedule in ("constant", "plateau"):  # "plateau": the Trainer divides by 10 at each plateau
        return 1.0
    raise ValueError(f"unknown lr_schedule {config.lr_schedule!r}; use 'cosine', 'step', 'constant' or 'plateau'")
