"""Named recipes: a method = a model + an objective/schedule + training defaults.

``get_method("late")`` says how the original two-stream network is built and trained;
:func:`run_method` trains one on a dataset and evaluates it. Later methods (conv fusion, CMMP,
CCS, CMA) register their own recipes here.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from torch import nn

from fusionkit.data.atomic import atomic_write_text
from fusionkit.data.dataset import TwoStreamDataset
from fusionkit.distributed import is_main_process
from fusionkit.evaluate import evaluate
from fusionkit.models.two_stream import build_model
from fusionkit.registry import Registry
from fusionkit.train import CHECKPOINT, TrainConfig, Trainer, alternate_final_rgb_weight, seed_everything


@dataclass(frozen=True)
class Method:
    """A named recipe.

    ``pretrain``: a method trained first whose weights initialise this one (tower and classifier
    parameters of matching name and shape), as Feichtenhofer et al. initialise fusion networks
    from separately trained streams; ``initialise`` limits the copy to parameters whose names start
    with one of these prefixes (None: all that match). ``finetune``: ``"all"`` trains every layer
    afterwards, ``"above_fusion"`` only the injected fusion layers and what follows them (their §3.5).
    """

    name: str
    model: str  # a registered model name (fusionkit.models.two_stream.build_model)
    schedule: str  # a fusionkit.train schedule
    description: str
    model_defaults: dict = field(default_factory=dict)
    train_defaults: dict = field(default_factory=dict)
    pretrain: str | None = None
    initialise: tuple[str, ...] | None = None
    finetune: str = "all"


METHODS = Registry("method")


def register_method(method: Method) -> Method:
    return METHODS.register(method.name)(method)


def get_method(name: str) -> Method:
    return METHODS.lookup(name)


register_method(Method(
    name="late", model="late", schedule="separate",
    description="Two-stream network (Simonyan & Zisserman 2014): RGB and flow towers trained separately, "
                "softmax scores averaged with weight rgb_weight."))
register_method(Method(
    name="spatial", model="spatial", schedule="finetune", pretrain="late",
    description="Spatial fusion (Feichtenhofer et al. 2016, Sec. 3.1-3.2): the motion stream fused into the "
                "appearance tower by sum/max/concat/conv/bilinear at a chosen stage, fine-tuned from separately "
                "trained streams."))
register_method(Method(
    name="temporal", model="temporal", schedule="finetune", pretrain="late",
    description="Temporal fusion over the segments (Feichtenhofer et al. 2016, Sec. 3.3): 2D pooling, 3D pooling, "
                "or 3D conv + 3D pooling after the last stage."))
register_method(Method(
    name="conv_fusion", model="conv_fusion", schedule="finetune", pretrain="late",
    description="Feichtenhofer et al. 2016's architecture (Sec. 3.4): 3D conv fusion into the appearance tower at "
                "the last conv stage, 3D pooling in both towers, both losses, predictions averaged at test."))
register_method(Method(
    name="cmmp", model="cmmp", schedule="two_stage", pretrain="late",
    description="Cross-modal message passing (Wang et al. 2018): 2-layer LSTM messages between the streams' "
                "per-segment features, averaged into each stream (Eq. 1-2); streams pretrained with cross-entropy, "
                "then the whole network on the adversarial objective (Eq. 4-5, Sec. 3.4)."))
register_method(Method(
    name="cmmp_noal", model="cmmp", schedule="finetune", pretrain="late",
    description="CMMP without the adversarial objective (Table 1's CMMP+noAL): the same network and "
                "pretraining, fine-tuned with each stream's cross-entropy."))
register_method(Method(
    name="ccs", model="ccs", schedule="ccs", train_defaults={"classes_per_batch": 4, "videos_per_class": 4},
    description="Cooperative cross-stream network (Zhang et al. 2019): connection block after the last stage, a "
                "shared embedding layer, cross-entropy plus the inter-modality triplet and discriminative "
                "embedding losses (Eq. 4-6), trained end to end on balanced batches (N classes x M videos)."))
register_method(Method(
    name="ccs_ce", model="ccs", schedule="separate",
    description="The CCS network trained with cross-entropy only (Table 3's baseline and CB rows)."))
register_method(Method(
    name="cma", model="cma", schedule="alternate", pretrain="late", initialise=("flow_tower.", "flow_head."),
    description="Cross-modality attention (Chi et al. 2019): CMA blocks in both branches (every other residual "
                "block of the two stages before the last), the flow branch trained first on its own (Sec. 4.3), "
                "then the branches trained in turn with the other frozen (iterations; RGB first), outputs -R/-F/-S."))
register_method(Method(
    name="nonlocal", model="cma", schedule="separate", model_defaults={"block": "nonlocal"},
    description="Non-local blocks (Wang et al. 2018) at CMA's positions in each tower, the towers trained "
                "separately: CMA's same-modality special case (Chi et al. Table 4)."))


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
               finetune: str | None = None, val_set: TwoStreamDataset | None = None, **model_kwargs) -> tuple[nn.Module, list[dict], dict | None]:
    """Build ``method``'s model, train it with its schedule, evaluate on ``test_set``.

    A method with ``pretrain`` starts from that method's trained weights: ``init_from`` (a trained
    model, e.g. shared by several fusion variants), or else it trains one first with
    ``pretrain_config`` (default: ``config``); ``finetune`` overrides the method's ``"all"`` /
    ``"above_fusion"``. ``val_set``: evaluated after every epoch (accuracies in the history). Returns ``(model, history, metrics)``; with ``out_dir``
    also writes ``run.json`` (what was run), the checkpoint and history (see
    :class:`fusionkit.train.Trainer`) and ``eval.json``. Under torchrun every process trains and
    only rank 0 evaluates and writes (the other ranks get ``metrics=None``).
    """
    m = get_method(method)
    config = replace(config or TrainConfig(**m.train_defaults), schedule=m.schedule)
    kwargs = {**m.model_defaults, "new_length": train_set.new_length, **model_kwargs}
    if config.schedule == "alternate":  # the trainer weights the scores towards the branch trained last
        kwargs["rgb_weight"] = alternate_final_rgb_weight(config)
    seed_everything(config.seed)  # the initial weights too (torch seeds each process differently otherwise)
    model = build_model(m.model, num_classes, backbone=backbone, **kwargs)
    if m.pretrain is not None:
        if init_from is None:
            shared = {k: v for k, v in kwargs.items() if k in ("new_length", "dropout", "head_hidden", "widths", "pretrained")}
            init_from, _, _ = run_method(m.pretrain, train_set, None, num_classes, backbone=backbone,
                                         config=pretrain_config or config, **shared)
        initialise_from(model, init_from, m.initialise)
        finetune = finetune or m.finetune
        if finetune not in ("all", "above_fusion"):
            raise ValueError(f"finetune must be 'all' or 'above_fusion', not {finetune!r}")
        if finetune == "above_fusion":
            model.freeze_below_fusion()
    writes = out_dir is not None and is_main_process()  # under torchrun, rank 0 writes the run folder
    if writes:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(out_dir) / "run.json", json.dumps(
            {"method": method, "backbone": backbone, "num_classes": num_classes, "model_kwargs": kwargs,
             "train": asdict(config)}, indent=1))
    history = Trainer(model, train_set, config, val_set=val_set, out_dir=out_dir).fit(resume=resume)
    metrics = None
    if test_set is not None and is_main_process():  # the whole test set, once (the other ranks are done)
        metrics = evaluate(model, test_set, batch_size=config.batch_size, device=config.device)
        if writes:
            atomic_write_text(Path(out_dir) / "eval.json", json.dumps(metrics, indent=1))
    return model, history, metrics


def load_run(run_dir: str | os.PathLike, device: str = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild a trained run's model from ``run.json`` and its checkpoint; also return the run's
    ``dataset.json`` (written by ``fusionkit train``) or ``{}``."""
    import torch

    run_dir = Path(run_dir)
    for name in ("run.json", CHECKPOINT):
        if not (run_dir / name).is_file():
            raise FileNotFoundError(f"{run_dir} is not a finished training run: {name} is missing")
    run = json.loads((run_dir / "run.json").read_text())
    model = build_model(get_method(run["method"]).model, run["num_classes"], backbone=run["backbone"],
                        **{**run["model_kwargs"], "pretrained": False})
    state = torch.load(run_dir / CHECKPOINT, map_location=device, weights_only=False)
    model.load_state_dict(state["model"])
    info_path = run_dir / "dataset.json"
    return model, json.loads(info_path.read_text()) if info_path.is_file() else {}
