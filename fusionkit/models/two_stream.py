"""The two-stream network: two staged towers, fusion blocks between stages, heads and consensus.

Simonyan & Zisserman (2014) train an appearance tower on single RGB frames and a motion tower on
stacks of L optical-flow fields (2L channels), and fuse their class scores. TSN (Wang et al. 2016)
samples T snippets per video and averages the snippets' scores (segmental consensus). Here the T
snippets are folded into the batch (``[B*T, C, H, W]``) while the towers run, and unfolded for the
consensus; fusion blocks see per-snippet feature maps.

With a 3D backbone (``r3d_18``, ``r2plus1d_18``) the towers see each video's T snippets as one clip
instead: ``[B, 3, T, H, W]`` frames and ``[B, 2L, T, H, W]`` flow stacks, fusion blocks get 3D maps
(Chi et al. §5.6, "the input of CMA blocks are all 3D") and the classifiers pool over (T, H, W).

Where fusion blocks go: a dict from a position to a block. ``"stage3"`` means after stage3 of
both towers; ``"stage3.1"`` means after the second child (e.g. residual block) of stage3.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn

from fusionkit.fusion.base import FusionBlock
from fusionkit.models.backbones import StagedBackbone, get_backbone
from fusionkit.registry import Registry


class TwoStreamOutput(dict):
    """Named ``[B, K]`` scores. Each tower's classifier gives logits: ``"rgb"`` and ``"flow"`` for
    towers that stayed separate, the method's name for the appearance tower once the motion stream
    has been fused into it. Score-level fusions (late fusion; a fused tower averaged with the kept
    motion tower, the paper's "+") are log-probabilities, so ``argmax`` and ``cross_entropy`` apply
    alike. ``heads`` names the outputs that have a classifier of their own (what a loss trains),
    ``fused`` the method's final output, ``extras`` what objectives and visualisations need."""

    def __init__(self, scores: Mapping[str, torch.Tensor], fused: str | None = None, heads: Sequence[str] = (),
                 extras: dict | None = None):
        super().__init__(scores)
        self.fused = fused
        self.heads = list(heads)
        self.extras = extras or {}


class ClassifierHead(nn.Module):
    """Global average pooling, dropout, linear classifier (the towers' fc layer).

    With ``hidden``, a 1x1 conv + ReLU first maps every location to ``hidden`` features: the
    analogue of VGG's fc6 after ReLU5, a non-linearity *per location* before the pooling. Spatial
    fusion needs it when it sits at the last stage: pooling right after a linear fusion would make
    the whole thing linear in each stream, i.e. no better than late fusion.
    """

    def __init__(self, channels: int, num_classes: int, dropout: float = 0.5, hidden: int | None = None):
        super().__init__()
        self.hidden = (nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True))
                       if hidden else None)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(hidden or channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.hidden is not None:
            # a 1x1 conv is a per-location linear layer; flatten any time axis into the batch for it
            shape = x.shape
            x = self.hidden(x if x.dim() == 4 else x.transpose(1, 2).flatten(0, 1))
            if len(shape) == 5:
                x = x.unflatten(0, (shape[0], shape[2])).transpose(1, 2)
        return self.fc(self.dropout(x.mean(dim=tuple(range(2, x.dim())))))


def late_fusion(rgb_logits: torch.Tensor, flow_logits: torch.Tensor, rgb_weight: float = 0.5) -> torch.Tensor:
    """Simonyan & Zisserman's late fusion: the weighted average of the two streams' softmax scores,
    ``w * softmax(rgb) + (1 - w) * softmax(flow)``, returned as log-probabilities."""
    if not 0.0 <= rgb_weight <= 1.0:
        raise ValueError(f"rgb_weight must lie in [0, 1], got {rgb_weight}")
    probs = rgb_weight * rgb_logits.softmax(-1) + (1 - rgb_weight) * flow_logits.softmax(-1)
    return probs.clamp_min(1e-12).log()


def _probe_output_width(module: nn.Module, channels: int) -> int:
    """Width D of ``module``'s output for ``[2, channels, 2, 2]`` maps (e.g. an embedding layer)."""
    with torch.no_grad():
        return int(module(torch.zeros(2, channels, 2, 2)).shape[-1])


class TwoStreamNet(nn.Module):
    """Two towers of the same staged backbone run stage by stage, with fusion blocks between stages.

    Args:
        num_classes: K.
        backbone: a registered backbone name (``tiny``, ``resnet18``, ...).
        new_length: L, flow fields per snippet (the motion tower takes 2L channels).
        pretrained: ImageNet weights for both towers (cross-modality init for the motion tower).
        fusion_blocks: position -> block (see the module docstring). A block may change the
            channel count (concatenation, bilinear) only at the last stage, where the classifier
            adapts to it.
        temporal_fusion: a block applied after the last stage to the snippets unfolded in time,
            ``[B, C, T, H, W]`` (Feichtenhofer et al. §3.3); the classifiers then average over
            (T, H, W). Without it, each snippet is classified and the scores averaged (TSN).
        keep_flow_tower: after the motion stream is fused into the appearance tower, keep the
            motion tower running to its own classifier (Feichtenhofer's "+", Table 4) or truncate it
            at the fusion point (Fig. 2 left).
        rgb_weight: the RGB (or fused tower's) share w of the score-level fusion.
        fused_name: the name of the fused output (the method's name, e.g. ``"late"``).
        dropout: before each classifier (TSN uses 0.8 for RGB, 0.7 for flow on UCF-101).
        head_hidden: width of a per-location layer in each classifier (see :class:`ClassifierHead`).
        branch_names: name the outputs ``<method>-R``, ``-F``, ``-S`` (RGB branch, flow branch, their
            weighted sum), as Chi et al. do for networks whose branches exchange information.
        embedding: a module mapping both towers' last maps to embeddings ``[N, D]`` (one module for
            both: CCS's shared block, :class:`~fusionkit.fusion.ccs.SharedEmbedding`). The classifiers
            then read the embeddings, and ``out.extras["embeddings"]`` holds each video's
            ``{"rgb": z_f, "flow": z_o}`` (the snippets' embeddings averaged, TSN's consensus).
    """

    def __init__(self, num_classes: int, backbone: str = "tiny", new_length: int = 5, pretrained: bool = False,
                 fusion_blocks: Mapping[str, FusionBlock] | None = None, temporal_fusion: FusionBlock | None = None,
                 keep_flow_tower: bool = True, rgb_weight: float = 0.5, fused_name: str = "late",
                 dropout: float = 0.5, head_hidden: int | None = None, branch_names: bool = False,
                 embedding: nn.Module | None = None, **backbone_kwargs):
        super().__init__()
        self.num_classes, self.new_length, self.rgb_weight, self.fused_name = num_classes, new_length, rgb_weight, fused_name
        self.rgb_tower: StagedBackbone = get_backbone(backbone, in_channels=3, pretrained=pretrained, **backbone_kwargs)
        self.flow_tower: StagedBackbone = get_backbone(backbone, in_channels=2 * new_length, pretrained=pretrained,
                                                       **backbone_kwargs)
        blocks = dict(fusion_blocks or {})
        rgb_channels = self.rgb_tower.out_channels
        for position, block in blocks.items():
            self._check_position(position)
            if block.out_channels != block.rgb_channels:
                if position != self.rgb_tower.stage_names[-1]:
                    raise ValueError(f"fusion block {type(block).__name__} at {position!r} changes the channels "
                                     f"({block.rgb_channels} -> {block.out_channels}); the next layer expects "
                                     f"{block.rgb_channels}. Put it after the last stage ({self.rgb_tower.stage_names[-1]!r}).")
                rgb_channels = block.out_channels
        fusing = [b for b in [*blocks.values(), temporal_fusion] if b is not None and b.fuses_streams]
        if not keep_flow_tower and (len(fusing) != 1 or (temporal_fusion is not None and temporal_fusion.fuses_streams)):
            raise ValueError("keep_flow_tower=False truncates the motion tower after a single spatial fusion block; "
                             f"this model has {len(fusing)} fusing blocks (temporal fusion needs the motion tower)")
        if self.rgb_tower.dims == 3 and temporal_fusion is not None:
            raise ValueError(f"backbone {backbone!r} is 3D: its towers already see the T snippets as a clip, so "
                             "there is no per-snippet feature map for temporal_fusion to stack; leave it out")
        self.rgb_is_fused = bool(fusing)
        self.keep_flow_tower = keep_flow_tower
        self.branch_names = branch_names
        # ModuleDict keys may not contain ".": store "stage3.1" as "stage3:1"
        self.fusion_blocks = nn.ModuleDict({p.replace(".", ":"): b for p, b in blocks.items()})
        self.temporal_fusion = temporal_fusion
        if temporal_fusion is not None:
            rgb_channels = temporal_fusion.out_channels
        self.embedding = embedding
        if embedding is not None:
            if temporal_fusion is not None or not keep_flow_tower:
                raise ValueError("a shared embedding needs both towers' last maps: keep the flow tower and leave "
                                 "temporal_fusion out")
            rgb_channels = flow_channels = _probe_output_width(embedding, rgb_channels)
        else:
            flow_channels = self.flow_tower.out_channels
        self.rgb_head = ClassifierHead(rgb_channels, num_classes, dropout, head_hidden)
        self.flow_head = ClassifierHead(flow_channels, num_classes, dropout, head_hidden) if keep_flow_tower else None
        self.frozen: list[nn.Module] = []

    def _check_position(self, position: str) -> None:
        stage, _, child = position.partition(".")
        if stage not in self.rgb_tower.stage_names:
            raise ValueError(f"fusion position {position!r}: no stage {stage!r}; stages are {self.rgb_tower.stage_names}")
        if child:
            n = len(list(self.rgb_tower.stages[stage].children()))
            if not child.isdigit() or int(child) >= n:
                raise ValueError(f"fusion position {position!r}: stage {stage!r} has children 0..{n - 1}")

    def _stage_positions(self, stage: str) -> dict[int, FusionBlock]:
        prefix = f"{stage}:"
        return {int(k[len(prefix):]): b for k, b in self.fusion_blocks.items() if k.startswith(prefix)}

    def _fuse(self, block: FusionBlock, rgb: torch.Tensor, flow: torch.Tensor | None):
        rgb, flow = block(rgb, flow)
        return rgb, (flow if self.keep_flow_tower or not block.fuses_streams else None)

    def features(self, rgb: torch.Tensor, flow: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Run both towers on folded snippets ``[N, C, H, W]`` and apply the fusion blocks; the flow
        features are None once a truncated motion tower has been fused away."""
        for stage in self.rgb_tower.stage_names:
            inner = self._stage_positions(stage)
            if inner:  # step through the stage's children to fuse between them
                children = zip(self.rgb_tower.stages[stage].children(), self.flow_tower.stages[stage].children())
                for i, (r_mod, f_mod) in enumerate(children):
                    rgb, flow = r_mod(rgb), f_mod(flow) if flow is not None else None
                    if i in inner:
                        rgb, flow = self._fuse(inner[i], rgb, flow)
            else:
                rgb = self.rgb_tower.stages[stage](rgb)
                flow = self.flow_tower.stages[stage](flow) if flow is not None else None
            if stage in self.fusion_blocks:
                rgb, flow = self._fuse(self.fusion_blocks[stage], rgb, flow)
        return rgb, flow

    def forward(self, rgb: torch.Tensor, flow: torch.Tensor) -> TwoStreamOutput:
        """``rgb [B, T, 3, H, W]``, ``flow [B, T, 2L, H, W]`` -> scores ``[B, K]`` per output."""
        if rgb.dim() != 5 or flow.dim() != 5 or rgb.shape[:2] != flow.shape[:2]:
            raise ValueError(f"expected rgb [B, T, 3, H, W] and flow [B, T, 2L, H, W] with the same B and T, got "
                             f"{tuple(rgb.shape)} and {tuple(flow.shape)}")
        if flow.shape[2] != 2 * self.new_length:
            raise ValueError(f"the motion tower takes 2L = {2 * self.new_length} flow channels, got {flow.shape[2]}")
        b, t = rgb.shape[:2]
        if self.rgb_tower.dims == 3:
            # 3D towers: the snippets form a clip, [B, T, C, H, W] -> [B, C, T, H, W]; one score per clip
            r, f = self.features(rgb.transpose(1, 2), flow.transpose(1, 2))
            if self.embedding is not None:
                r, f = self.embedding(r)[..., None, None], self.embedding(f)[..., None, None]
            rgb_logits = self.rgb_head(r)
            flow_logits = self.flow_head(f) if f is not None else None
        elif self.temporal_fusion is None:
            # segmental consensus: average the snippets' class scores (TSN, Eq. 1 with g = mean)
            r, f = self.features(rgb.flatten(0, 1), flow.flatten(0, 1))
            if self.embedding is not None:  # classify each snippet's embedding [B*T, D] (as a 1x1 map)
                r, f = self.embedding(r)[..., None, None], self.embedding(f)[..., None, None]
            rgb_logits = self.rgb_head(r).view(b, t, -1).mean(1)
            flow_logits = self.flow_head(f).view(b, t, -1).mean(1) if f is not None else None
        else:
            # unfold the snippets in time, [B*T, C, H, W] -> [B, C, T, H, W], fuse; classify the whole clip
            r, f = self.features(rgb.flatten(0, 1), flow.flatten(0, 1))
            r, f = self.temporal_fusion(*(x.unflatten(0, (b, t)).transpose(1, 2) for x in (r, f)))
            rgb_logits, flow_logits = self.rgb_head(r), self.flow_head(f)
        extras = {}
        if self.embedding is not None:  # each video's embeddings: its snippets' averaged (3D towers: one clip)
            extras["embeddings"] = {k: x.flatten(1).view(b, -1, x.shape[1]).mean(1) for k, x in (("rgb", r), ("flow", f))}
        rgb_name, flow_name, fused = self.output_names()
        if flow_logits is None:
            return TwoStreamOutput({rgb_name: rgb_logits}, fused=rgb_name, heads=[rgb_name])
        scores = {rgb_name: rgb_logits, flow_name: flow_logits,
                  fused: late_fusion(rgb_logits, flow_logits, self.rgb_weight)}
        return TwoStreamOutput(scores, fused=fused, heads=[rgb_name, flow_name], extras=extras)

    def output_names(self) -> tuple[str, str, str]:
        """(appearance tower, motion tower, score fusion) output names: ``rgb``/``flow``/method for
        separate towers; method/``flow``/method+"+" once the motion stream feeds the appearance
        tower; ``-R``/``-F``/``-S`` when both towers exchange information (``branch_names``)."""
        if self.branch_names:
            return f"{self.fused_name}-R", f"{self.fused_name}-F", f"{self.fused_name}-S"
        if self.rgb_is_fused:
            return self.fused_name, "flow", self.fused_name + "+"
        return "rgb", "flow", self.fused_name

    # -- fine-tuning only what sits above the fusion point (Feichtenhofer et al. §3.5) ----------
    def freeze_below_fusion(self) -> list[str]:
        """Freeze the tower layers that come before the first fusion point, so training reaches only
        the injected fusion layers and what follows them ("We only propagate back to the injected
        fusion layer", §3.5). Frozen layers also stay in eval mode (BatchNorm statistics fixed).
        Returns the names of the frozen stages."""
        positions = [k.replace(":", ".") for k in self.fusion_blocks]
        if self.temporal_fusion is not None:
            positions.append(self.rgb_tower.stage_names[-1])
        if not positions:
            raise ValueError("this model has no fusion point to freeze below")
        order = {name: i for i, name in enumerate(self.rgb_tower.stage_names)}
        first = min(positions, key=lambda p: (order[p.partition(".")[0]], int(p.partition(".")[2] or 10**6)))
        stage, _, child = first.partition(".")
        frozen_names = []
        for tower in (self.rgb_tower, self.flow_tower):
            for name in tower.stage_names[: order[stage] + (0 if child else 1)]:
                self.frozen.append(tower.stages[name])
                frozen_names.append(name)
            if child:
                self.frozen.extend(list(tower.stages[stage].children())[: int(child) + 1])
                frozen_names.append(f"{stage}.0-{child}")
        for module in self.frozen:
            module.requires_grad_(False)
        self.train(self.training)
        return sorted(set(frozen_names))

    # -- training one branch at a time (Chi et al. §4.3) -----------------------------------------
    def branch_modules(self, branch: str) -> list[nn.Module]:
        """The modules of the ``"rgb"`` or ``"flow"`` branch: its tower, its classifier and the
        parts of the fusion blocks that write into it (:meth:`FusionBlock.branch_modules`)."""
        tower, head = (self.rgb_tower, self.rgb_head) if branch == "rgb" else (self.flow_tower, self.flow_head)
        modules = [tower] + ([head] if head is not None else [])
        for block in [*self.fusion_blocks.values(), self.temporal_fusion]:
            if block is not None:
                modules += block.branch_modules(branch)
        return modules

    def train_branch(self, branch: str) -> None:
        """Make only ``branch`` trainable: the other branch's parameters get ``requires_grad=False``
        and its modules stay in eval mode, so its BatchNorm statistics are fixed too ("we freeze all
        the layers in the Flow branch, including CMA blocks of the Flow branch", §4.3). Replaces any
        earlier freezing."""
        if branch not in ("rgb", "flow"):
            raise ValueError(f"branch must be 'rgb' or 'flow', got {branch!r}")
        other = "flow" if branch == "rgb" else "rgb"
        self.requires_grad_(True)
        self.frozen = self.branch_modules(other)
        for module in self.frozen:
            module.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> "TwoStreamNet":
        super().train(mode)
        for module in self.frozen:
            module.eval()
        return self


MODELS = Registry("model")
register_model = MODELS.register  # for functions ``(num_classes, **kwargs) -> nn.Module``


def build_model(name: str, num_classes: int, **kwargs) -> nn.Module:
    """Build a registered model by method name, e.g. ``build_model("late", 4, backbone="tiny")``."""
    return MODELS.lookup(name)(num_classes, **kwargs)


@register_model("late")
def late(num_classes: int, **kwargs) -> TwoStreamNet:
    """The original two-stream network: towers trained separately, softmax scores averaged."""
    return TwoStreamNet(num_classes, fused_name="late", **kwargs)


def _probe_backbone(kwargs: dict) -> StagedBackbone:
    """The backbone a model built with ``kwargs`` will use (no weights loaded), to read its stages
    and channels before the blocks that sit between them are built."""
    return get_backbone(kwargs.get("backbone", "tiny"), **{k: v for k, v in kwargs.items() if k == "widths"})


def _channels_at(tower: StagedBackbone, position: str) -> int:
    """Channels of the feature map at a fusion position: a stage's output channels (every child of a
    stage, e.g. each residual block, outputs the stage's channels)."""
    return tower.stage_channels[position.partition(".")[0]]


@register_model("spatial")
def spatial(num_classes: int, fusion: str = "conv", position: str | None = None, keep_flow_tower: bool = False,
            fusion_kwargs: dict | None = None, **kwargs) -> TwoStreamNet:
    """Spatial fusion (Feichtenhofer et al. §3.1-3.2): the motion stream fused into the appearance
    tower by a registered block (``sum``, ``max``, ``concat``, ``conv``, ``bilinear``) at ``position``
    (default: the end of the last stage, the paper's ReLU5). The motion tower is truncated there
    unless ``keep_flow_tower`` (Table 4's "+"). Fusing at the last stage, give the classifier a
    per-location layer (``head_hidden``, the fc6 analogue) or the fusion stays linear up to pooling."""
    from fusionkit.fusion import build_fusion

    probe = _probe_backbone(kwargs)
    position = position or probe.stage_names[-1]
    c = _channels_at(probe, position)
    block = build_fusion(fusion, rgb_channels=c, flow_channels=c, **(fusion_kwargs or {}))
    return TwoStreamNet(num_classes, fusion_blocks={position: block}, keep_flow_tower=keep_flow_tower,
                        fused_name=fusion, **kwargs)


@register_model("temporal")
def temporal(num_classes: int, temporal: str = "conv3d_pool3d", spatial_fusion: str | None = "conv",
             temporal_kwargs: dict | None = None, **kwargs) -> TwoStreamNet:
    """Temporal fusion over the T segments (Feichtenhofer et al. §3.3, Fig. 3) after the last stage.

    ``conv3d_pool3d`` fuses the streams itself (Eq. 6). The pooling variants (``pool2d``, ``pool3d``)
    pool each stream, so a spatial fusion block (``spatial_fusion``, default ``conv``) first fuses
    the motion stream into the appearance tower at the last stage; both towers are kept."""
    from fusionkit.fusion import build_fusion

    probe = _probe_backbone(kwargs)
    c = probe.out_channels
    block = build_fusion(temporal, rgb_channels=c, flow_channels=c, **(temporal_kwargs or {}))
    blocks = {}
    if not block.fuses_streams and spatial_fusion is not None:
        blocks[probe.stage_names[-1]] = build_fusion(spatial_fusion, rgb_channels=c, flow_channels=c)
    kwargs.setdefault("fused_name", temporal)
    return TwoStreamNet(num_classes, fusion_blocks=blocks, temporal_fusion=block, keep_flow_tower=True, **kwargs)


@register_model("conv_fusion")
def conv_fusion(num_classes: int, **kwargs) -> TwoStreamNet:
    """Feichtenhofer et al.'s proposed architecture (§3.4, Fig. 4): 3D conv fusion at the last conv
    stage into the appearance tower, 3D pooling in both towers, the motion tower kept with its own
    loss, the two towers' predictions averaged at test time."""
    return temporal(num_classes, temporal="conv3d_pool3d", fused_name="conv_fusion", **kwargs)


@register_model("cmmp")
def cmmp(num_classes: int, messages: str = "lstm", fusion: str = "mean", own_gradients: bool = False,
         rgb_weight: float = 0.5, **kwargs) -> TwoStreamNet:
    """Cross-modal message passing (Wang et al. 2018, Fig. 2): the towers' per-segment features
    exchange LSTM messages after the last stage (:class:`~fusionkit.fusion.cmmp.MessagePassing`),
    each stream classifies its fused sequence; outputs ``cmmp-R`` (appearance / "spatial"), ``cmmp-F``
    (motion / "temporal") and ``cmmp-S``, their weighted average ("fusion", §3.1)."""
    from fusionkit.fusion import build_fusion

    probe = _probe_backbone(kwargs)
    c = probe.out_channels
    block = build_fusion("cmmp", rgb_channels=c, flow_channels=c, messages=messages, fusion=fusion,
                         own_gradients=own_gradients)
    kwargs.setdefault("fused_name", "cmmp")
    return TwoStreamNet(num_classes, temporal_fusion=block, keep_flow_tower=True, rgb_weight=rgb_weight,
                        branch_names=True, **kwargs)


@register_model("ccs")
def ccs(num_classes: int, connection: bool = True, embedding_dim: int = 128, connection_kwargs: dict | None = None,
        **kwargs) -> TwoStreamNet:
    """Cooperative cross-stream network (Zhang et al. 2019, Fig. 2): a connection block after the
    last stage (``connection=False`` leaves it out: Table 3's "CS" and baseline rows), then the
    shared block, one fully connected layer embedding both towers' features into D dimensions
    (:class:`~fusionkit.fusion.ccs.SharedEmbedding`), and a classifier per stream on the embeddings.
    Outputs ``ccs-R``, ``ccs-F``, ``ccs-S``; ``out.extras["embeddings"]`` feeds the ranking losses."""
    from fusionkit.fusion import build_fusion
    from fusionkit.fusion.ccs import SharedEmbedding

    probe = _probe_backbone(kwargs)
    c = probe.out_channels
    blocks = ({probe.stage_names[-1]: build_fusion("ccs", rgb_channels=c, flow_channels=c, **(connection_kwargs or {}))}
              if connection else {})
    kwargs.setdefault("fused_name", "ccs")
    return TwoStreamNet(num_classes, fusion_blocks=blocks, keep_flow_tower=True, branch_names=True,
                        embedding=SharedEmbedding(c, embedding_dim), **kwargs)


def cma_positions(backbone: StagedBackbone) -> list[str]:
    """Where Chi et al. insert CMA blocks (§4.2): "5 CMA blocks in res_3 and res_4 to every other
    residual block" -- for a ResNet, children 1, 3 of stage2 (res_3) and 1, 3, 5 of stage3 (res_4) in
    ResNet-50. For other staged backbones the same rule: every other child (the second, fourth, ...)
    of the two stages before the last."""
    positions = []
    for stage in backbone.stage_names[-3:-1]:
        n = len(list(backbone.stages[stage].children()))
        positions += [f"{stage}.{i}" for i in range(1, n, 2)]
    return positions


@register_model("cma")
def cma(num_classes: int, positions: Sequence[str] | None = None, block: str | Sequence[str] = "cma",
        rgb_weight: float = 5 / 6, block_kwargs: dict | Sequence[dict] | None = None, **kwargs) -> TwoStreamNet:
    """Cross-modality attention network (Chi et al. 2019): ``block`` (``cma``, or ``nonlocal`` for the
    same-modality case) after each of ``positions`` (default :func:`cma_positions`, the paper's
    preset). Outputs ``<block>-R``, ``-F`` and ``-S`` = w p_R + (1 - w) p_F, with the paper's 5:1
    weighting for a model whose RGB branch was trained last (``rgb_weight``).

    A sequence of blocks is applied in turn at each position (a :class:`FusionChain`), with one
    ``block_kwargs`` dict per block: Table 4's "CMA + non-local" is ``block=("nonlocal", "cma")``,
    ``block_kwargs=({"directions": "rgb"}, {})`` (non-local blocks in the RGB branch only, each
    followed by a CMA block). The outputs are then named after the last block."""
    from fusionkit.fusion import FusionChain, build_fusion

    probe = _probe_backbone(kwargs)
    positions = list(positions) if positions is not None else cma_positions(probe)
    names = [block] if isinstance(block, str) else list(block)
    options = [block_kwargs or {}] if isinstance(block_kwargs, dict) or block_kwargs is None else list(block_kwargs)
    if len(options) != len(names):
        raise ValueError(f"cma: {len(names)} block names {names} but {len(options)} block_kwargs; give one dict per block")

    def build(position: str):
        c = _channels_at(probe, position)
        chain = [build_fusion(n, rgb_channels=c, flow_channels=c, **o) for n, o in zip(names, options)]
        return chain[0] if len(chain) == 1 else FusionChain(chain)

    return TwoStreamNet(num_classes, fusion_blocks={p: build(p) for p in positions}, keep_flow_tower=True,
                        fused_name=names[-1], rgb_weight=rgb_weight, branch_names=True, **kwargs)


def rgb_prediction_parameters(model: TwoStreamNet) -> int:
    """Parameters the ``-R`` prediction of a CMA-style network depends on (Chi et al. Table 2 counts
    them relative to one ResNet-50): the RGB tower and classifier, every RGB-side attention unit, the
    flow-side units before the last fusion point (they shape the flow features read later), and the
    flow tower up to the last fusion point."""
    order = {name: i for i, name in enumerate(model.rgb_tower.stage_names)}

    def key(position: str) -> tuple[int, int]:
        stage, _, child = position.partition(".")
        return order[stage], int(child) if child else 10**6

    positions = sorted((k.replace(":", ".") for k in model.fusion_blocks), key=key)
    if not positions:
        raise ValueError("the model has no fusion blocks: its -R prediction is the RGB tower alone")
    last_stage, last_child = key(positions[-1])

    def count(module: nn.Module | None) -> int:
        return sum(p.numel() for p in module.parameters()) if module is not None else 0

    total = count(model.rgb_tower) + count(model.rgb_head)
    for position in positions:
        block = model.fusion_blocks[position.replace(".", ":")]
        total += sum(count(m) for m in block.branch_modules("rgb"))
        if position != positions[-1]:
            total += sum(count(m) for m in block.branch_modules("flow"))
    for name in model.flow_tower.stage_names[:last_stage]:
        total += count(model.flow_tower.stages[name])
    stage = model.flow_tower.stages[model.flow_tower.stage_names[last_stage]]
    total += sum(count(child) for i, child in enumerate(stage.children()) if i <= last_child)
    return total
