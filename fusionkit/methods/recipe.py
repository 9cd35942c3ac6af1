"""What a method is and how one is run: :class:`Method`, the registry, :func:`build_model`,
:func:`run_method`, :func:`load_run`.

A method = a model builder whose typed signature is its configuration + a training schedule +
training defaults (and, for methods started from separately trained streams, what they start
from). One name per method: its registry key, its model, its benchmark row, the prefix of its
outputs and its key in results files. Each paper's module (:mod:`fusionkit.methods.late`,
:mod:`~fusionkit.methods.conv_fusion`, :mod:`~fusionkit.methods.cmmp`, :mod:`~fusionkit.methods.ccs`,
:mod:`~fusionkit.methods.cma`) registers its methods here.

Options. A method's *model options* are its builder's keyword parameters plus the options every
two-stream network takes (:data:`NETWORK_OPTIONS`: backbone, new_length, dropout, ...); its
*training options* are the keyword parameters of its ``configure`` function, which maps them to the
:class:`~fusionkit.training.trainer.TrainConfig` (e.g. CMMP's ``adversarial=False`` is Table 1's
CMMP+noAL). :func:`method_options` lists both with their types and defaults; an unknown option is
refused with the list of valid ones.
"""
from __future__ import annotations

import inspect
import json
import logging
import re
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from torch import nn

from fusionkit.data.atomic import atomic_write_text
from fusionkit.data.dataset import TwoStreamDataset
from fusionkit.models.two_stream import TwoStreamNet
from fusionkit.registry import Registry
from fusionkit.training.distributed import is_main_process
from fusionkit.training.evaluate import evaluation_report
from fusionkit.training.runtime import seed_everything
from fusionkit.training.schedules import alternate_final_rgb_weight
from fusionkit.training.trainer import CHECKPOINT, TrainConfig, Trainer


@dataclass(frozen=True)
class Method:
    """A named recipe.

    ``pretrain``: a method trained first whose weights initialise this one (tower and classifier
    parameters of matching name and shape), as Feichtenhofer et al. initialise fusion networks
    from separately trained streams; ``initialise`` limits the copy to parameters whose names start
    with one of these prefixes (None: all that match). ``finetune`` (:data:`FINETUNE`): ``"all"``
    trains every layer afterwards, ``"above_fusion"`` only the injected fusion layers and what
    follows them (Feichtenhofer et al. §3.5); ``"classifier"`` (any method, see :func:`run_method`)
    only the last fully connected layer of each classifier (Chi et al. §5.7).
    """

    name: str
    build: Callable[..., nn.Module]  # (num_classes, **model options) -> the network
    schedule: str  # a fusionkit.training.schedules schedule
    description: str
    train_defaults: dict = field(default_factory=dict)  # TrainConfig fields the caller did not set (TrainConfig.explicit)
    pretrain: str | None = None
    initialise: tuple[str, ...] | None = None
    finetune: str = "all"
    configure: Callable[..., TrainConfig] | None = None  # (config, **training options) -> config

    @property
    def summary(self) -> str:
        return re.split(r"(?<! al)\. ", self.description)[0].rstrip(".") + "."


METHODS = Registry("method", provider="fusionkit.methods")
FINETUNE = ("all", "above_fusion", "classifier")  # what a network started from trained weights trains (Method.finetune)


def register_method(method: Method) -> Method:
    return METHODS.register(method.name)(method)


def get_method(name: str) -> Method:
    return METHODS.lookup(name)


def list_methods() -> list[str]:
    """The registered methods' names."""
    return sorted(METHODS)


# What every two-stream network takes besides what its builder sets (TwoStreamNet's parameters)
NETWORK_OPTIONS = {name: p for name, p in inspect.signature(TwoStreamNet.__init__).parameters.items()
                   if name in ("backbone", "new_length", "pretrained", "dropout", "head_hidden", "rgb_weight", "head",
                               "input_size")}


@dataclass(frozen=True)
class Option:
    """One option of a method: where it goes (``model`` or ``training``), its type and default."""

    name: str
    kind: str
    annotation: Any
    default: Any

    def describe(self) -> str:
        annotation = self.annotation if isinstance(self.annotation, str) else getattr(self.annotation, "__name__", self.annotation)
        return f"{self.name}: {annotation} = {self.default!r}"


def _keyword_options(fn: Callable, kind: str, skip: int) -> dict[str, Option]:
    params = list(inspect.signature(fn).parameters.values())[skip:]
    return {p.name: Option(p.name, kind, p.annotation, p.default) for p in params
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def method_options(name: str) -> dict[str, Option]:
    """Every option of method ``name``: its builder's (after ``num_classes``), the network's common
    ones (:data:`NETWORK_OPTIONS`, with ``widths`` for the ``tiny`` backbone) and its training options."""
    m = get_method(name)
    options = _keyword_options(m.build, "model", skip=1)
    for key, p in NETWORK_OPTIONS.items():
        options.setdefault(key, Option(key, "model", p.annotation, p.default))
    options.setdefault("widths", Option("widths", "model", "Sequence[int]", None))
    if m.configure is not None:
        options.update(_keyword_options(m.configure, "training", skip=1))
    return options


def split_options(name: str, options: dict) -> tuple[dict, dict]:
    """``options`` as (model options, training options) of method ``name``; ValueError naming every
    unknown option with the valid ones."""
    valid = method_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"method {name!r} has no option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                         f"its options are: {', '.join(sorted(valid))} (`fusionkit methods {name}` lists them "
                         f"with their defaults)")
    model = {k: v for k, v in options.items() if valid[k].kind == "model"}
    return model, {k: v for k, v in options.items() if valid[k].kind == "training"}


def build_model(name: str, num_classes: int, **options) -> nn.Module:
    """Build method ``name``'s network, e.g. ``build_model("spatial", 4, fusion="sum", position="stage2")``.
    ``options``: the method's model options (:func:`method_options`)."""
    model_options, training = split_options(name, options)
    if training:
        raise ValueError(f"{sorted(training)} {'is a training option' if len(training) == 1 else 'are training options'} "
                         f"of {name!r}, not model options: give them to run_method")
    return get_method(name).build(num_classes, **model_options)


def initialise_from(model: nn.Module, source: nn.Module, prefixes: tuple[str, ...] | None = None) -> list[str]:
    """Copy every parameter and buffer of ``source`` whose name and shape match into ``model``
    (the towers and classifiers of separately trained streams), only names starting with one of
    ``prefixes`` if given; return the names copied."""
    target = model.state_dict()
    matched = {k: v for k, v in source.state_dict().items() if k in target and target[k].shape == v.shape
               and (prefixes is None or k.startswith(prefixes))}
    model.load_state_dict(matched, strict=False)
    return sorted(matched)


def run_method(method: str, train_set: TwoStreamDataset, test_set: TwoStreamDataset | None, num_classes: int,
               backbone: str = "tiny", config: TrainConfig | None = None, out_dir: str | os.PathLike | None = None,
               resume: bool = False, init_from: nn.Module | None = None, pretrain_config: TrainConfig | None = None,
               finetune: str | None = None, val_set: TwoStreamDataset | None = None,
               recipe=None,  # "teaching" / "paper" / a Recipe: fusionkit.methods.training_recipes.apply_recipe
               **model_kwargs) -> tuple[nn.Module, list[dict], dict | None]:
    """Build ``method``'s model, train it with its schedule, evaluate on ``test_set``.

    A method with ``pretrain`` starts from that method's trained weights: ``init_from`` (a trained
    model, e.g. shared by several fusion variants), or else it trains one first with
    ``pretrain_config`` (default: ``config``); ``finetune`` overrides the method's ``"all"`` /
    ``"above_fusion"``. ``finetune="classifier"`` (any method; Chi et al. §5.7, "we only fine-tune the
    last fc layer of our 2-D CMA model"): every parameter of ``init_from`` (or of the method's
    trained ``pretrain``) whose name and shape match is copied, not only ``Method.initialise``'s, and
    only the last linear layer of each classifier trains, each on its own cross-entropy (the
    ``finetune`` schedule: with the rest frozen there is no branch to alternate and no embedding for
    a ranking loss to move); a classifier whose shape changed (new classes) starts afresh. ``val_set``: evaluated after every epoch (accuracies in the history). Returns ``(model, history, metrics)``; with ``out_dir``
    also writes ``run.json`` (what was run), the checkpoint and history (see
    :class:`fusionkit.training.trainer.Trainer`) and ``eval.json`` (and ``pretrain_history.json``, the epochs
    of the streams it trained first). Under torchrun every process trains and
    only rank 0 evaluates and writes (the other ranks get ``metrics=None``).
    """
    m = get_method(method)
    if recipe is not None:  # "teaching" / "paper" (or a Recipe): fills what this call leaves unset
        from fusionkit.methods.training_recipes import apply_recipe

        config, pretrain_config, finetune, model_kwargs = apply_recipe(
            method, recipe, len(train_set), config, pretrain_config, finetune, model_kwargs)
    model_kwargs, training_options = split_options(method, model_kwargs)
    finetune = finetune or m.finetune
    if finetune not in FINETUNE:
        raise ValueError(f"finetune must be one of {FINETUNE}, not {finetune!r}")
    if finetune == "classifier" and m.pretrain is None and init_from is None:
        raise ValueError(f"finetune='classifier' trains the classifiers of a trained network, and {method!r} starts "
                         f"from none: give init_from (a trained model, e.g. load_run(...)[0])")
    # finetune="classifier": each classifier on its own loss (see above), unless a training option picks its own
    config = (config if config is not None else TrainConfig()).with_defaults(
        {}, schedule="finetune" if finetune == "classifier" else m.schedule)
    if m.configure is not None:
        config = m.configure(config, **training_options)  # a training option may pick its own objective (svm)
    # the method's training defaults fill only the fields the caller did not set (TrainConfig.explicit):
    # TrainConfig(epochs=5) gets CCS's balanced batches, TrainConfig(classes_per_batch=0) plain ones
    config = config.with_defaults(m.train_defaults)
    kwargs = {"new_length": train_set.new_length, **model_kwargs}
    if config.schedule == "alternate":  # the trainer weights the scores towards the branch trained last
        kwargs["rgb_weight"] = alternate_final_rgb_weight(config)
    seed_everything(config.seed)  # the initial weights too (torch seeds each process differently otherwise)
    model = m.build(num_classes, backbone=backbone, **kwargs)
    pretrain_history = None
    if m.pretrain is not None or finetune == "classifier":
        if init_from is None:
            shared = {k: v for k, v in kwargs.items()
                      if k in ("new_length", "dropout", "head_hidden", "widths", "pretrained", "head", "input_size")}
            _log_phase(f"phase 1/2: training the streams ({m.pretrain})")
            init_from, pretrain_history, _ = run_method(m.pretrain, train_set, None, num_classes, backbone=backbone,
                                                        config=pretrain_config or config, **shared)
            _log_phase(f"phase 2/2: {method} from the trained streams ({m.schedule} schedule)")
        initialise_from(model, init_from, None if finetune == "classifier" else m.initialise)
        if finetune == "above_fusion":
            model.freeze_below_fusion()
        elif finetune == "classifier":
            freeze_all_but_classifiers(model)
    writes = out_dir is not None and is_main_process()  # under torchrun, rank 0 writes the run folder
    if writes:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(out_dir) / "run.json", json.dumps(
            {"method": method, "backbone": backbone, "num_classes": num_classes, "model_kwargs": kwargs,
             "training_options": training_options, "train": asdict(config)}, indent=1))
        if pretrain_history is not None:  # phase 1's epochs (history.json holds phase 2's)
            atomic_write_text(Path(out_dir) / PRETRAIN_HISTORY, json.dumps(pretrain_history, indent=1))
    history = Trainer(model, train_set, config, val_set=val_set, out_dir=out_dir).fit(resume=resume)
    metrics = None
    if test_set is not None and is_main_process():  # the whole test set, once (the other ranks are done)
        report = evaluation_report(model, test_set, batch_size=config.batch_size, device=config.device)
        metrics = report["metrics"]
        if writes:
            atomic_write_text(Path(out_dir) / "eval.json", json.dumps(report, indent=1))
    return model, history, metrics


def freeze_all_but_classifiers(model: TwoStreamNet) -> list[str]:
    """Freeze everything but the last linear layer of each classifier (``finetune="classifier"``, Chi
    et al. §5.7): the towers, the fusion blocks, any shared embedding and the classifiers' earlier
    layers (``head_hidden``, VGG-M's fc6-fc7) get ``requires_grad=False`` and stay in eval mode, also
    when the alternate schedule's :meth:`~fusionkit.models.two_stream.TwoStreamNet.train_branch` makes a
    branch trainable (they join the modules it keeps frozen). Returns the trainable parameters' names."""
    heads = [h for h in (model.rgb_head, model.flow_head) if h is not None]
    last = [[m for m in h.modules() if isinstance(m, nn.Linear)][-1] for h in heads]
    keep = {id(p) for m in last for p in m.parameters()}
    frozen = [m for name, m in model.named_children() if m not in heads] + \
        [m for h in heads for m in h.modules() if m not in last and any(True for _ in m.parameters(recurse=False))]
    model.frozen_below_fusion = [*model.frozen_below_fusion, *frozen]
    model.frozen.extend(frozen)
    model.requires_grad_(False)
    for m in last:
        m.requires_grad_(True)
    model.train(model.training)
    return [name for name, p in model.named_parameters() if id(p) in keep]


PRETRAIN_HISTORY = "pretrain_history.json"  # a method with `pretrain`: the history of the streams it started from


def _log_phase(text: str) -> None:
    if is_main_process():
        logging.getLogger(__name__).info(text)


def load_run(run_dir: str | os.PathLike, device: str = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild a trained run's model from ``run.json`` and its checkpoint; also return the run's
    ``dataset.json`` (written by ``fusionkit train``) or ``{}``."""
    import torch

    run_dir = Path(run_dir)
    for name in ("run.json", CHECKPOINT):
        if not (run_dir / name).is_file():
            raise FileNotFoundError(f"{run_dir} is not a finished training run: {name} is missing")
    run = json.loads((run_dir / "run.json").read_text())
    model = get_method(run["method"]).build(run["num_classes"], backbone=run["backbone"],
                                            **{**run["model_kwargs"], "pretrained": False})
    state = torch.load(run_dir / CHECKPOINT, map_location=device, weights_only=False)
    model.load_state_dict(state["model"])
    info_path = run_dir / "dataset.json"
    return model, json.loads(info_path.read_text()) if info_path.is_file() else {}
