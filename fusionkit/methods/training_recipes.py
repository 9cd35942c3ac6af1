"""Training recipes: how a method is trained, as its paper trains it (``paper``) and as the notebooks
train it on a CPU (``teaching``). (:mod:`fusionkit.methods.recipe` says what a method *is*; this
module, how each one is *trained*.)

A :class:`Recipe` is the :class:`~fusionkit.training.trainer.TrainConfig` of the method's own
training, the ``pretrain`` config of the separately trained streams it starts from (a method with
``Method.pretrain``), what is fine-tuned, model options (dropout, classifier width), the data
settings (segments, snippet length, test protocol) and one note per setting: where the paper says
it (its section) or, where it does not, that it does not and what was chosen.

    run_method("cmmp", train_set, test_set, 51, recipe="paper")   # SGD, LR 1e-4, /10 every 4500 iterations ...
    fusionkit train --method cmmp --recipe paper ...
    get_recipe("cmmp", "paper").describe()

Papers that count SGD *iterations* (CMMP: 13,500 at batch 64) give ``steps``; :meth:`Recipe.config`
turns them into epochs of the training set at hand (``ceil(steps * batch / videos)``), the LR step
likewise. "Divide the LR by 10 when validation stops improving" is ``lr_schedule="plateau"``
(:class:`~fusionkit.training.trainer.TrainConfig`'s ``lr_patience``).

Each paper's module registers its method's two recipes (``register_recipe``) at its end.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Mapping

from fusionkit.registry import Registry
from fusionkit.training.trainer import TrainConfig

__all__ = ["Recipe", "RECIPES", "RECIPE_NAMES", "DATA_SETTINGS", "register_recipe", "get_recipe", "list_recipes",
           "apply_recipe"]

RECIPE_NAMES = ("teaching", "paper")
# what Recipe.data may hold: dataset settings (the first five are applied by `fusionkit train --recipe`
# and `fusionkit reproduce`), the puzzles' sizes (teaching), and descriptions of what the paper does
DATA_SETTINGS = ("segments", "test_segments", "new_length", "input_size", "ten_crop",
                 "videos_per_class", "frames", "size", "sampling", "test_protocol")


@dataclass(frozen=True)
class Recipe:
    """One way to train ``method``: ``name`` is ``"teaching"`` or ``"paper"``.

    ``train``: the method's own training (for a method started from trained streams, its second
    phase). ``pretrain``: the streams' training (None: the method has no such phase).
    ``finetune``: ``"all"`` / ``"above_fusion"`` / ``"classifier"`` (None: the method's default). ``model``: model
    options (dropout, head_hidden, embedding_dim, ...). ``data``: :data:`DATA_SETTINGS`. ``steps`` /
    ``lr_step_steps`` (and ``pretrain_``...): the paper's counts of SGD iterations, turned into
    epochs by :meth:`config`. ``notes``: setting -> where the paper says it, or "not stated: ...".
    ``source``: the paper (or notebook) the recipe is from."""

    method: str
    name: str
    train: TrainConfig
    pretrain: TrainConfig | None = None
    finetune: str | None = None
    model: Mapping = field(default_factory=dict)
    data: Mapping = field(default_factory=dict)
    steps: int | None = None
    lr_step_steps: int | None = None
    pretrain_steps: int | None = None
    pretrain_lr_step_steps: int | None = None
    notes: Mapping[str, str] = field(default_factory=dict)
    source: str = ""

    def __post_init__(self):
        if self.name not in RECIPE_NAMES:
            raise ValueError(f"recipe name must be one of {RECIPE_NAMES}, got {self.name!r}")
        unknown = sorted(set(self.data) - set(DATA_SETTINGS))
        if unknown:
            raise ValueError(f"recipe {self.method}:{self.name}: unknown data setting(s) {unknown}; "
                             f"they are {DATA_SETTINGS}")
        from fusionkit.methods.recipe import FINETUNE

        if self.finetune is not None and self.finetune not in FINETUNE:
            raise ValueError(f"recipe {self.method}:{self.name}: finetune must be one of {FINETUNE} (or None: the "
                             f"method's), got {self.finetune!r}")
        if not isinstance(self.train, TrainConfig):
            raise TypeError(f"recipe {self.method}:{self.name}: train must be a TrainConfig")

    @property
    def key(self) -> str:
        return f"{self.method}:{self.name}"

    def config(self, train_videos: int | None = None) -> TrainConfig:
        """The method's training config; where the paper counts iterations, in epochs of a training
        set of ``train_videos`` videos."""
        return _in_epochs(self.train, self.steps, self.lr_step_steps, train_videos, self.key)

    def pretrain_config(self, train_videos: int | None = None) -> TrainConfig | None:
        """The separately trained streams' config (None: none)."""
        if self.pretrain is None:
            return None
        return _in_epochs(self.pretrain, self.pretrain_steps, self.pretrain_lr_step_steps, train_videos,
                          self.key + " (pretrain)")

    def as_dict(self) -> dict:
        """Everything, JSON-ready (what ``fusionkit reproduce`` records)."""
        out = {"method": self.method, "name": self.name, "source": self.source,
               "train": _config_dict(self.train), "pretrain": _config_dict(self.pretrain) if self.pretrain else None,
               "finetune": self.finetune, "model": dict(self.model), "data": dict(self.data), "notes": dict(self.notes)}
        for key in ("steps", "lr_step_steps", "pretrain_steps", "pretrain_lr_step_steps"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out

    def describe(self) -> str:
        """The recipe as text: each setting, its value and its note."""
        lines = [f"{self.key}  ({self.source})" if self.source else self.key]

        def config_lines(label: str, config: TrainConfig, steps, lr_steps):
            c = config
            schedule = {"step": f"step x0.1 every {lr_steps or c.lr_step or 'a third of the'} "
                                f"{'iterations' if lr_steps else 'epochs'}",
                        "plateau": f"x0.1 when the validation accuracy stops improving ({c.lr_patience} epochs)"}.get(
                c.lr_schedule, c.lr_schedule)
            length = f"{steps} iterations" if steps else f"{c.epochs} epochs"
            if c.iterations > 1 or c.schedule == "alternate":
                length += f" x {c.iterations} iteration(s)"
            batches = (f"{c.classes_per_batch} classes x {c.videos_per_class} videos" if c.classes_per_batch
                       else f"{c.batch_size}")
            lines.append(f"  {label}: {c.optimizer} lr {c.lr:g} ({schedule}), batch {batches}, weight decay "
                         f"{c.weight_decay:g}, {length}" + (f", extra {dict(c.extra)}" if c.extra else ""))

        if self.pretrain is not None:
            config_lines("streams", self.pretrain, self.pretrain_steps, self.pretrain_lr_step_steps)
        config_lines("train", self.train, self.steps, self.lr_step_steps)
        if self.finetune:
            lines.append(f"  fine-tunes: {self.finetune}")
        if self.model:
            lines.append("  model: " + ", ".join(f"{k}={v!r}" for k, v in self.model.items()))
        if self.data:
            lines.append("  data: " + ", ".join(f"{k}={v!r}" for k, v in self.data.items()))
        for setting, note in self.notes.items():
            lines.append(f"    {setting}: {note}")
        return "\n".join(lines)


def _config_dict(config: TrainConfig) -> dict:
    d = asdict(config)
    d.pop("explicit", None)
    return d


def _in_epochs(config: TrainConfig, steps: int | None, lr_steps: int | None, videos: int | None, key: str) -> TrainConfig:
    if steps is None and lr_steps is None:
        return config
    if not videos:
        raise ValueError(f"recipe {key} counts SGD iterations ({steps}); give the number of training videos to turn "
                         f"them into epochs")
    per_epoch = videos / config.batch_size
    changes = {}
    if steps is not None:
        changes["epochs"] = max(1, math.ceil(steps / per_epoch))
    if lr_steps is not None:
        changes["lr_step"] = max(1, math.ceil(lr_steps / per_epoch))
    return replace(config, **changes)


RECIPES = Registry("recipe", provider="fusionkit.methods")


def register_recipe(recipe: Recipe) -> Recipe:
    return RECIPES.register(recipe.key)(recipe)


def get_recipe(method: str, name: str) -> Recipe:
    """Method ``method``'s ``teaching`` or ``paper`` recipe."""
    key = f"{method}:{name}"
    if key not in RECIPES:
        have = sorted(k.split(":", 1)[1] for k in RECIPES if k.startswith(method + ":"))
        raise KeyError(f"method {method!r} has no {name!r} recipe" + (f"; its recipes are {have}" if have else
                       f"; the methods with recipes are {sorted({k.split(':')[0] for k in RECIPES})}"))
    return RECIPES[key]


def list_recipes(method: str | None = None) -> list[str]:
    """The registered recipes' keys (``method:name``), or one method's recipe names."""
    if method is None:
        return sorted(RECIPES)
    return sorted(k.split(":", 1)[1] for k in RECIPES if k.startswith(method + ":"))


def apply_recipe(method: str, recipe: "str | Recipe", train_videos: int, config: TrainConfig | None = None,
                 pretrain_config: TrainConfig | None = None, finetune: str | None = None,
                 model_options: Mapping | None = None) -> tuple[TrainConfig, TrainConfig | None, str | None, dict]:
    """What ``run_method(..., recipe=...)`` trains with: the recipe fills what the call left unset. An
    explicit ``config`` / ``pretrain_config`` replaces the recipe's (whole), an explicit ``finetune``
    its choice, and each model option given wins over the recipe's. The recipe's data settings are
    the datasets' (``fusionkit train --recipe`` and ``fusionkit reproduce`` build them so); here the
    datasets are already built. Returns ``(config, pretrain_config, finetune, model options)``."""
    r = get_recipe(method, recipe) if isinstance(recipe, str) else recipe
    if not isinstance(r, Recipe):
        raise TypeError(f"recipe must be a recipe name {RECIPE_NAMES} or a Recipe, got {type(recipe).__name__}")
    if r.method != method:
        raise ValueError(f"recipe {r.key} is method {r.method!r}'s, not {method!r}'s")
    return (config if config is not None else r.config(train_videos),
            pretrain_config if pretrain_config is not None else r.pretrain_config(train_videos),
            finetune if finetune is not None else r.finetune,
            {**r.model, **(model_options or {})})


def teaching_config(epochs: int, weight_decay: float = 5e-4, lr: float = 2e-3, batch_size: int = 8, **more) -> TrainConfig:
    """The notebooks' CPU settings: AdamW, cosine LR, batches of 8."""
    return TrainConfig(epochs=epochs, batch_size=batch_size, optimizer="adamw", lr=lr, weight_decay=weight_decay,
                       **more)


TEACHING_DATA = {"videos_per_class": 30, "frames": 24, "size": 64, "segments": 3, "test_segments": 3, "new_length": 5}
