"""Cross-modal message passing (CMMP) of Wang, Yuan & Wang, "Cross-Modal Message Passing for
Two-Stream Fusion" (ICASSP 2018), §3.2, as a temporal fusion block.

Each tower's last feature map is pooled to one vector per segment, ``x_a, x_m`` in R^{T x D``
(§3.2: "T is the number of sampled frames and D is the dimensional size of extracted feature").
Two 2-layer LSTMs with separate weights turn one stream's sequence into a message for the other
(Eq. 1), and each stream averages its features with the message it receives (Eq. 2):

    m_a = lstm_2(x_a; w_a)           m_m = lstm_2(x_m; w_m)                      (Eq. 1)
    x_a^f = fusion(x_a, m_m)         x_m^f = fusion(x_m, m_a)                    (Eq. 2)

and each stream's classifier reads its fused sequence ("fed into a fully-connected layer"). The
block hands ``x^f`` back as ``[B, D, T, 1, 1]`` maps, so :class:`~fusionkit.models.two_stream.TwoStreamNet`'s
classifiers average it over the T segments and apply their fully-connected layer: a linear layer
of the mean is the mean of the per-segment scores, TSN's consensus.

Choices the paper leaves open, made explicit here:

- Pooling to x: global average over the map (the towers' usual pooling before their fc layer).
- LSTM width: hidden size D, so a message has the shape of the features it is fused with ("m_a,
  m_m in R^{T x D}"); the message at segment t is the top layer's output at step t (it has seen
  segments 1..t: the message carries their *order*, which averaging features cannot).
- ``fusion``: ``"mean"`` (the paper's "simple average strategy"), ``"sum"`` or ``"max"``.
- Gradients: which parameters each AL trains. §3.3 calls Eq. 4 "the adversarial objective function
  of A-Modal ConvNet" (and Eq. 5 the M-Modal one), which can be read as each AL updating only its own
  network; §3.4 uses the objective "to train the whole network jointly", and Fig. 2 says it guides
  "the whole network to update its weight. The whole system is end-to-end trainable." The paper names
  no stop-gradient between the networks, so the default (``own_gradients=False``) follows §3.4 and
  Fig. 2: AL_a + AL_m is minimised over all parameters, and a stream's loss back-propagates through
  everything its scores depend on: its tower, its classifier, the message generator that writes its
  message, and through that generator into the *other* tower (AL_a reaches the motion tower). That
  last path matters: on `order` the appearance network's LSTM needs motion features that tell left
  from right, and only the appearance loss asks the motion tower for them (the motion loss cannot, its
  message comes from the appearance tower, which sees no motion). Exploratory single-seed runs on `order`
  (tiny towers, before initial weights were seeded; not a controlled comparison: the strict run also
  had half the learning rate and 10 instead of 15 epochs): CMMP+noAL reached 1.00 this way and 0.33
  with ``own_gradients=True``, the other reading of §3.3 ("of A-Modal ConvNet"), in which a message
  generator reads the other tower through a stop-gradient and each loss trains only its own tower, its
  classifier and the generator of its incoming message.
- The hinge is per sample (``hinge="sample"``, the default): Eq. 3 is the cross-entropy of one
  video's scores, so f(L_a - L_m) of Eq. 4-5 compares the two networks on the same video, and a
  batch's loss is the mean of its videos' AL. Each video's trailing stream gets twice its gradient on
  that video. ``hinge="batch"`` applies the hinge to the batch means, max(mean L_a - mean L_m, 0):
  the stream behind *on average* gets twice its gradient on every video of the batch, the other none
  extra. It is kept for one reason: notebook 04's committed results (``figures/results/04_cmmp.json``)
  and the benchmark's ``cmmp`` row were trained with it, and they pass it explicitly to stay
  reproducible.
- ``messages="identity"`` replaces the LSTMs with the other stream's features themselves
  (m_m = x_m): the SUM / MAX rows of Table 1 (feature fusion without message generators).
"""
from __future__ import annotations

import functools

import torch
from torch import nn

from dataclasses import replace

import torch.nn.functional as F

from fusionkit.fusion import FusionBlock, build_fusion, register_fusion
from fusionkit.methods.recipe import Method, register_method
from fusionkit.models.two_stream import TwoStreamNet, probe_backbone
from fusionkit.training.schedules import register_schedule
from fusionkit.training.trainer import TrainConfig

__all__ = ["MessagePassing", "FUSIONS_OF_MESSAGES", "cmmp", "adversarial_objective", "HINGES"]

FUSIONS_OF_MESSAGES = {
    "mean": lambda x, m: (x + m) / 2,  # the paper's choice (§3.2)
    "sum": lambda x, m: x + m,
    "max": torch.maximum,
}


@register_fusion("cmmp")
class MessagePassing(FusionBlock):
    """CMMP as a temporal fusion block: ``fuse(rgb [B, C, T, H, W], flow [B, C', T, H, W])`` ->
    ``(x_a^f, x_m^f)`` as ``[B, C, T, 1, 1]`` and ``[B, C', T, 1, 1]`` (Eq. 1-2).

    Args:
        rgb_channels, flow_channels: D of each tower (they may differ: each message generator maps
            its source's D to its target's D).
        messages: ``"lstm"`` (Eq. 1: 2-layer LSTMs with separate weights) or ``"identity"`` (the
            other stream's features: SUM / MAX fusion of Table 1).
        fusion: ``"mean"`` (Eq. 2's average), ``"sum"`` or ``"max"``.
        layers: LSTM layers (2, "lstm_2").
        own_gradients: stop-gradient where a message generator reads the other tower, so each
            stream's loss trains only its own network (§3.3's "objective function of A-Modal ConvNet"
            read strictly; the default follows §3.4's joint training: see the module docstring).
    """

    same_spatial_size = False  # the maps are pooled first
    keeps_shape = False  # [B, C, T, H, W] -> [B, C, T, 1, 1]

    def __init__(self, rgb_channels: int, flow_channels: int, messages: str = "lstm", fusion: str = "mean",
                 layers: int = 2, own_gradients: bool = False):
        super().__init__(rgb_channels, flow_channels)
        if messages not in ("lstm", "identity"):
            raise ValueError(f"messages must be 'lstm' or 'identity', got {messages!r}")
        if fusion not in FUSIONS_OF_MESSAGES:
            raise ValueError(f"fusion must be one of {sorted(FUSIONS_OF_MESSAGES)}, got {fusion!r}")
        if messages == "identity" and rgb_channels != flow_channels:
            raise ValueError(f"messages='identity' fuses the streams' features directly, which needs equal widths; "
                             f"got rgb {rgb_channels} and flow {flow_channels} channels")
        self.messages, self.fusion, self.own_gradients = messages, fusion, own_gradients
        if messages == "lstm":
            # lstm_a reads the appearance features and writes the motion network's message, and vice versa
            self.lstm_a = nn.LSTM(rgb_channels, flow_channels, num_layers=layers, batch_first=True)
            self.lstm_m = nn.LSTM(flow_channels, rgb_channels, num_layers=layers, batch_first=True)
        else:
            self.lstm_a = self.lstm_m = None

    def branch_modules(self, branch: str) -> list[nn.Module]:
        """A message generator belongs to the network that receives its message (its loss is what
        trains it): lstm_m (motion -> appearance) to the RGB branch, lstm_a to the flow branch."""
        super().branch_modules(branch)
        generator = self.lstm_m if branch == "rgb" else self.lstm_a
        return [generator] if generator is not None else []

    def message(self, source: torch.Tensor, generator: nn.LSTM | None) -> torch.Tensor:
        """``[B, T, D_source] -> [B, T, D_target]``: Eq. 1, the top LSTM layer's output at every step."""
        if self.own_gradients:
            source = source.detach()
        if generator is None:
            return source
        return generator(source)[0]

    def fuse(self, rgb, flow):
        if rgb.dim() != 5 or flow.dim() != 5 or rgb.shape[2] != flow.shape[2]:
            raise ValueError(f"MessagePassing needs the towers' maps stacked over the T segments, [B, C, T, H, W] "
                             f"with the same T: use it as a TwoStreamNet temporal_fusion block; got rgb "
                             f"{tuple(rgb.shape)} and flow {tuple(flow.shape)}")
        x_a = rgb.mean(dim=(3, 4)).transpose(1, 2)  # [B, T, D]
        x_m = flow.mean(dim=(3, 4)).transpose(1, 2)
        merge = FUSIONS_OF_MESSAGES[self.fusion]
        fused_a = merge(x_a, self.message(x_m, self.lstm_m))  # Eq. 2
        fused_m = merge(x_m, self.message(x_a, self.lstm_a))
        return tuple(f.transpose(1, 2)[..., None, None] for f in (fused_a, fused_m))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, messages={self.messages!r}, fusion={self.fusion!r}"


# ---- the network (Fig. 2) ------------------------------------------------------------------------
def cmmp(num_classes: int, messages: str = "lstm", fusion: str = "mean", own_gradients: bool = False,
         rgb_weight: float = 0.5, **network) -> TwoStreamNet:
    """Cross-modal message passing (Fig. 2): the towers' per-segment features exchange LSTM messages
    after the last stage (:class:`MessagePassing`; ``fusion`` is Eq. 2's fusion function, ``messages=
    "identity"`` Table 1's SUM/MAX rows, which fuse the other stream's features themselves), each
    stream classifies its fused sequence; outputs ``cmmp-R`` (appearance, the paper's "spatial"),
    ``cmmp-F`` (motion, "temporal") and ``cmmp-S``, their weighted average ("fusion", §3.1)."""
    c = probe_backbone(**network).out_channels
    block = build_fusion("cmmp", rgb_channels=c, flow_channels=c, messages=messages, fusion=fusion,
                         own_gradients=own_gradients)
    return TwoStreamNet(num_classes, temporal_fusion=block, keep_flow_tower=True, rgb_weight=rgb_weight,
                        method="cmmp", **network)


# ---- the adversarial objective (Eq. 3-5) -----------------------------------------------------------
HINGES = ("sample", "batch")  # where Eq. 4-5's hinge applies: each video's losses, or the batch means


def adversarial_objective(out, labels, hinge: str = "sample"):
    """CMMP's competing objective (Eq. 3-5): for the appearance network
    ``AL_a = L_a + max(L_a - L_m, 0)`` and for the motion network ``AL_m = L_m + max(L_m - L_a, 0)``,
    with L the cross-entropy of each stream's classifier (``out.roles``: ``rgb`` appearance, ``flow`` motion).
    ``hinge="sample"``: L is each video's cross-entropy (Eq. 3), the hinge compares the streams video
    by video and the batch's AL is the mean over its videos; ``"batch"``: the hinge on the batch-mean
    losses (kept to reproduce committed results, see the module docstring).

    The other stream's loss inside the hinge is a constant (detached): the hinge doubles a
    network's own gradient while it trails the other and vanishes once it is ahead; no network is
    pushed to raise the other's loss. Each AL otherwise back-propagates through everything its
    stream's scores depend on, the message generators and (through them) the other tower included,
    as §3.4 trains "the whole network jointly" (the default reading). For the other reading, in which
    each AL reaches only its own network's parameters, build the model with ``own_gradients=True``
    (which reading the paper's text supports, and why the default: the module docstring)."""
    if hinge not in HINGES:
        raise ValueError(f"hinge must be one of {HINGES} (per video, or on the batch means), got {hinge!r}")
    appearance, motion = out.roles["rgb"], out.roles["flow"]
    reduction = "none" if hinge == "sample" else "mean"
    loss_a = F.cross_entropy(out[appearance], labels, reduction=reduction)  # [B] per sample, or the mean
    loss_m = F.cross_entropy(out[motion], labels, reduction=reduction)
    return {f"AL_{appearance}": (loss_a + torch.relu(loss_a - loss_m.detach())).mean(),
            f"AL_{motion}": (loss_m + torch.relu(loss_m - loss_a.detach())).mean()}


# stage 1 is the method's `pretrain` (streams on cross-entropy), stage 2 the adversarial objective (§3.4);
# the hinge's reduction is the training option `hinge`, kept in TrainConfig.extra
register_schedule("two_stage")(
    lambda config: functools.partial(adversarial_objective, hinge=config.extra.get("hinge", "sample")))


def configure(config: TrainConfig, adversarial: bool = True, hinge: str = "sample") -> TrainConfig:
    """``adversarial=False``: Table 1's "+noAL" rows, stage 2 on each stream's cross-entropy.
    ``hinge``: Eq. 4-5's hinge per video (``"sample"``, Eq. 3's per-sample cross-entropy) or on the
    batch means (``"batch"``, what notebook 04's committed numbers used); see the module docstring."""
    if hinge not in HINGES:
        raise ValueError(f"cmmp: hinge must be one of {HINGES}, got {hinge!r}")
    if not adversarial:
        return replace(config, schedule="finetune")
    return replace(config, extra={**config.extra, "hinge": hinge})


register_method(Method(
    name="cmmp", build=cmmp, schedule="two_stage", pretrain="late", configure=configure,
    description="Cross-modal message passing (Wang et al. 2018): 2-layer LSTM messages between the streams' "
                "per-segment features, averaged into each stream (Eq. 1-2); streams pretrained with cross-entropy, "
                "then the whole network on the adversarial objective (Eq. 4-5, Sec. 3.4); adversarial=False is "
                "Table 1's CMMP+noAL."))


# ---- the paper's ablation table and the recipes (fusionkit.methods.tables, .training_recipes) ------
def _register_table_and_recipes() -> None:
    from fusionkit.methods.tables import AblationTable, Claim, Column, register_table, rows
    from fusionkit.methods.training_recipes import TEACHING_DATA, Recipe, register_recipe, teaching_config

    columns = (Column("Spatial", "rgb", "HMDB51"), Column("Temporal", "flow", "HMDB51"),
               Column("Fusion", "fused", "HMDB51"))
    identity = {"messages": "identity"}  # SUM / MAX: the other stream's features fused directly, no LSTM
    register_table(AblationTable(
        "wang2018", 1, "CMMP components analysis on split 1 of HMDB-51", columns,
        rows(columns,
             ("SUM", "cmmp", {**identity, "fusion": "sum", "adversarial": False}, (53.01, 54.05, 53.79)),
             ("MAX", "cmmp", {**identity, "fusion": "max", "adversarial": False}, (52.61, 52.29, 52.68)),
             ("CMMP+noAL", "cmmp", {"adversarial": False}, (46.99, 47.71, 60.13)),
             ("SUM+AL", "cmmp", {**identity, "fusion": "sum"}, (51.70, 52.29, 51.96)),
             ("MAX+AL", "cmmp", {**identity, "fusion": "max"}, (53.79, 53.66, 53.88)),
             ("CMMP", "cmmp", {}, (50.07, 65.23, 66.67))),
        claims=(
            Claim("CMMP+noAL fuses better than SUM and MAX", (("CMMP+noAL", ">", "SUM"), ("CMMP+noAL", ">", "MAX")),
                  "HMDB51 Fusion", source="§4.2"),
            Claim("MAX+AL is a little better than SUM+AL for spatial, temporal and fusion",
                  (("MAX+AL", ">", "SUM+AL"), (("MAX+AL", "HMDB51 Spatial"), ">", ("SUM+AL", "HMDB51 Spatial")),
                   (("MAX+AL", "HMDB51 Temporal"), ">", ("SUM+AL", "HMDB51 Temporal"))),
                  "HMDB51 Fusion", source="§4.2 (it says 'than AL'; the table's row is SUM+AL)"),
            Claim("The adversarial objective boosts CMMP by a significant margin, especially the temporal ConvNet",
                  (("CMMP", ">", "CMMP+noAL"), (("CMMP", "HMDB51 Temporal"), ">", ("CMMP+noAL", "HMDB51 Temporal"))),
                  "HMDB51 Fusion", source="§4.2"),
            Claim("CMMP is the best fusion", tuple(("CMMP", ">", other) for other in
                                                  ("SUM", "MAX", "CMMP+noAL", "SUM+AL", "MAX+AL")),
                  "HMDB51 Fusion", source="Table 1"),
        ),
        recipe_method="cmmp",
        note="Spatial / Temporal are each stream's classifier on its fused features (cmmp-R / cmmp-F), Fusion their "
             "average (cmmp-S). SUM / MAX: the other stream's features fused into each stream without message "
             "generators (messages='identity'); +AL: stage 2 on the adversarial objective, else on each stream's "
             "cross-entropy. Every row starts from the same separately trained streams (stage 1)."))

    stage1 = teaching_config(20)
    register_recipe(Recipe(
        "cmmp", "teaching", teaching_config(30, lr=5e-3), pretrain=stage1, finetune="all", model={"dropout": 0.3},
        data=dict(TEACHING_DATA), source="notebooks/04_cmmp.ipynb",
        notes={"stage 1": "20 epochs, AdamW 2e-3: each stream alone on cross-entropy",
               "stage 2": "30 epochs at 5e-3: the new LSTMs learn from ~300 steps here (the paper: a tenth of its "
                          "pretraining LR for 13,500 iterations)"}))
    sgd = dict(optimizer="sgd", momentum=0.9, batch_size=64, weight_decay=5e-4, lr_schedule="step")
    register_recipe(Recipe(
        "cmmp", "paper", TrainConfig(epochs=1, lr=1e-4, **sgd), pretrain=TrainConfig(epochs=1, lr=1e-3, **sgd),
        steps=13_500, lr_step_steps=4_500, pretrain_steps=13_500, pretrain_lr_step_steps=4_500, finetune="all",
        model={"dropout": 0.5},
        data={"segments": 3, "test_segments": 25, "new_length": 5, "input_size": 224,
              "sampling": "'several frames and corresponding optical flow images are sampled by heuristic strategy' "
                          "(§3.1): T not stated, chose TSN's 3 segments",
              "test_protocol": "not stated: chose TSN's 25 snippets, centre crops"},
        source="Wang et al. 2018 §3.4, §4.1",
        notes={"optimizer": "mini-batch SGD, batch 64, momentum 0.9 (§4.1)",
               "lr": "pretraining 1e-3, fine-tuning 1e-4, each divided by 10 every 4500 iterations (§4.1)",
               "length": "'the whole training procedure stops at 13500 iterations' (§4.1): read as each stage; "
                         "steps are turned into epochs of the training set",
               "stages": "stage 1 trains the streams on cross-entropy without the message passing network; stage 2 "
                         "'the whole network jointly' on the adversarial objective (§3.4): finetune='all'",
               "initialisation": "ImageNet (§4.1): --pretrained; the backbone is not stated (choose e.g. resnet50)",
               "dropout": "not stated: chose 0.5",
               "weight_decay": "not stated: chose 5e-4",
               "new_length": "L = 5 flow fields, the example of §3.1"}))


_register_table_and_recipes()
