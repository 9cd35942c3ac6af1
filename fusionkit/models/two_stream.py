"""The two-stream network: two staged towers, fusion blocks between stages, heads and consensus.

Simonyan & Zisserman (2014) train an appearance tower on single RGB frames and a motion tower on
stacks of L optical-flow fields (2L channels), and fuse their class scores. TSN (Wang et al. 2016)
samples T snippets per video and averages the snippets' scores (segmental consensus). Here the T
snippets are folded into the batch (``[B*T, C, H, W]``) while the towers run, and unfolded for the
consensus; fusion blocks see per-snippet feature maps.

With a 3D backbone (``r3d_18``, ``r2plus1d_18``) the towers see each video's T snippets as one clip
instead: ``[B, 3, T, H, W]`` frames and ``[B, 2L, T, H, W]`` flow stacks, fusion blocks get 3D maps
(Chi et al. §5.6, "the input of CMA blocks are all 3D") and the classifiers pool over (T, H, W).

Where fusion blocks go: a dict from a position (:class:`~fusionkit.models.positions.Position`) to a
block. ``"stage3"`` means after stage3 of both towers; ``"stage3.1"`` after the second child (e.g.
residual block) of stage3.

The model builders of the papers (``late``, ``spatial``, ``conv_fusion``, ``cmmp``, ``ccs``, ``cma``,
``nonlocal``) are in :mod:`fusionkit.methods`, one module per paper; this is the network they share.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn

from fusionkit.fusion import FusionBlock
from fusionkit.models.backbones import StagedBackbone, get_backbone
from fusionkit.models.positions import Position, PositionLike, order_positions
from fusionkit.models.vggm import VGGMHead

ROLES = ("rgb", "flow", "fused")
HEADS = ("pool_linear", "vggm_fc")  # TwoStreamNet's classifiers: ClassifierHead, or VGG-M-2048's fc6-fc7-fc8


def output_names(method: str, separate_streams: bool, flow_kept: bool = True) -> dict[str, str]:
    """The names of a network's outputs by role: the appearance tower's prediction (``rgb``), the
    motion tower's (``flow``) and the fused one (``fused``). Two plain towers (the original
    two-stream network) are ``rgb``, ``flow`` and the method's name; a network whose towers contain
    fusion (or attention) blocks names them ``<method>-R``, ``-F`` and ``-S`` as Chi et al. do; once the
    motion tower is truncated at the fusion point the only prediction is the fused one, ``<method>-S``."""
    if separate_streams:
        return {"rgb": "rgb", "flow": "flow", "fused": method}
    if not flow_kept:
        return {"fused": f"{method}-S"}
    return {"rgb": f"{method}-R", "flow": f"{method}-F", "fused": f"{method}-S"}


class TwoStreamOutput(dict):
    """Named ``[B, K]`` scores, with their roles. ``roles`` maps ``"rgb"``, ``"flow"`` and ``"fused"`` to
    output names (:func:`output_names`): code finds the appearance, motion and fused predictions
    there, never by parsing names. Each tower's classifier gives logits; the score-level fusion
    (late fusion; a fused tower averaged with the kept motion tower, Feichtenhofer's "+") is
    log-probabilities, so ``argmax`` and ``cross_entropy`` apply alike. ``heads`` names the outputs
    that have a classifier of their own (what a loss trains: the ``rgb`` then the ``flow`` role),
    ``fused`` the final output's name, ``extras`` what objectives and visualisations need."""

    def __init__(self, scores: Mapping[str, torch.Tensor], roles: Mapping[str, str], heads: Sequence[str] = (),
                 extras: dict | None = None):
        super().__init__(scores)
        if set(roles) - set(ROLES) or "fused" not in roles or set(roles.values()) - set(scores):
            raise ValueError(f"roles must map a subset of {ROLES} (with 'fused') to outputs {sorted(scores)}, "
                             f"got {dict(roles)}")
        self.roles = dict(roles)
        self.fused = self.roles["fused"]
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
        method: the method's name, which names the outputs (:func:`output_names`).
        dropout: before each classifier (TSN uses 0.8 for RGB, 0.7 for flow on UCF-101).
        head_hidden: width of a per-location layer in each classifier (see :class:`ClassifierHead`).
        embedding: a module mapping both towers' last maps to embeddings ``[N, D]`` (one module for
            both: CCS's shared block, :class:`~fusionkit.methods.ccs.SharedEmbedding`). The classifiers
            then read the embeddings, and ``out.extras["embeddings"]`` holds each video's
            ``{"rgb": z_f, "flow": z_o}`` (the snippets' embeddings averaged, TSN's consensus).
        head: each tower's classifier. ``"pool_linear"``: :class:`ClassifierHead` (global average
            pooling, dropout, linear). ``"vggm_fc"``: VGG-M-2048's fully-connected head,
            :class:`~fusionkit.models.vggm.VGGMHead` (pool5, fc6 4096, fc7 2048 with ReLU and
            ``dropout`` after each, fc8), as the two-stream networks of Simonyan & Zisserman and
            Feichtenhofer et al.; it needs the ``vggm2048`` backbone (its pool5 geometry).
        input_size: the towers' input size (``"vggm_fc"`` only: it fixes pool5's size and so fc6's
            input, 6 x 6 x 512 at 224 x 224).
    """

    def __init__(self, num_classes: int, backbone: str = "tiny", new_length: int = 5, pretrained: bool = False,
                 fusion_blocks: Mapping[str, FusionBlock] | None = None, temporal_fusion: FusionBlock | None = None,
                 keep_flow_tower: bool = True, rgb_weight: float = 0.5, method: str = "late",
                 dropout: float = 0.5, head_hidden: int | None = None,
                 embedding: nn.Module | None = None, head: str = "pool_linear", input_size: int = 224,
                 **backbone_kwargs):
        super().__init__()
        self.num_classes, self.new_length, self.rgb_weight, self.method = num_classes, new_length, rgb_weight, method
        self.rgb_tower: StagedBackbone = get_backbone(backbone, in_channels=3, pretrained=pretrained, **backbone_kwargs)
        self.flow_tower: StagedBackbone = get_backbone(backbone, in_channels=2 * new_length, pretrained=pretrained,
                                                       **backbone_kwargs)
        blocks = {Position.parse(p): b for p, b in (fusion_blocks or {}).items()}
        rgb_channels = self.rgb_tower.out_channels
        children = {name: len(list(stage.children())) for name, stage in self.rgb_tower.stages.items()}
        for position, block in blocks.items():
            position.check(self.rgb_tower.stage_names, children)
            if block.out_channels != block.rgb_channels:
                if position != Position(self.rgb_tower.stage_names[-1]):
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
        self.keep_flow_tower = keep_flow_tower
        # ModuleDict keys may not contain ".": "stage3.1" is stored as "stage3:1" (Position.key)
        self.fusion_blocks = nn.ModuleDict({p.key: b for p, b in blocks.items()})
        self._between_children = {}  # stage -> {child index: block key}, read at every forward
        for p in blocks:
            if p.child is not None:
                self._between_children.setdefault(p.stage, {})[p.child] = p.key
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
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        if head == "vggm_fc":
            if backbone != "vggm2048" or head_hidden or embedding is not None:
                raise ValueError(f"head='vggm_fc' is VGG-M-2048's fc6-fc7-fc8 head on its ReLU5 maps: it needs "
                                 f"backbone='vggm2048' (got {backbone!r}), no head_hidden and no shared embedding")

            def make_head(channels: int) -> nn.Module:
                return VGGMHead(channels, num_classes, dropout=dropout, input_size=input_size)
        else:
            def make_head(channels: int) -> nn.Module:
                return ClassifierHead(channels, num_classes, dropout, head_hidden)
        self.rgb_head = make_head(rgb_channels)
        self.flow_head = make_head(flow_channels) if keep_flow_tower else None
        self.frozen: list[nn.Module] = []
        self.frozen_below_fusion: list[nn.Module] = []  # freeze_below_fusion's: they stay frozen in train_branch

    @property
    def positions(self) -> list[Position]:
        """The fusion positions, from input to output."""
        return order_positions((Position.from_key(k) for k in self.fusion_blocks), self.rgb_tower.stage_names)

    def block_at(self, position: PositionLike) -> FusionBlock:
        return self.fusion_blocks[Position.parse(position).key]

    def _stage_positions(self, stage: str) -> dict[int, FusionBlock]:
        """The blocks between the children of ``stage``, by child index."""
        return {i: self.fusion_blocks[k] for i, k in self._between_children.get(stage, {}).items()}

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
        roles = self.output_roles()
        if flow_logits is None:  # the motion tower was truncated at the fusion point
            return TwoStreamOutput({roles["fused"]: rgb_logits}, roles, heads=[roles["fused"]], extras=extras)
        scores = {roles["rgb"]: rgb_logits, roles["flow"]: flow_logits,
                  roles["fused"]: late_fusion(rgb_logits, flow_logits, self.rgb_weight)}
        return TwoStreamOutput(scores, roles, heads=[roles["rgb"], roles["flow"]], extras=extras)

    def output_roles(self) -> dict[str, str]:
        """This network's output names by role (:func:`output_names`)."""
        separate = not self.fusion_blocks and self.temporal_fusion is None and self.embedding is None
        return output_names(self.method, separate, flow_kept=self.flow_head is not None)

    # -- fine-tuning only what sits above the fusion point (Feichtenhofer et al. §3.5) ----------
    def freeze_below_fusion(self) -> list[str]:
        """Freeze the tower layers that come before the first fusion point, so training reaches only
        the injected fusion layers and what follows them ("We only propagate back to the injected
        fusion layer", §3.5). Frozen layers also stay in eval mode (BatchNorm statistics fixed), and
        they stay frozen when :meth:`train_branch` later makes a branch trainable (the ``alternate``
        schedule). Returns the names of the frozen stages."""
        positions = self.positions
        if self.temporal_fusion is not None:
            positions.append(Position(self.rgb_tower.stage_names[-1]))
        if not positions:
            raise ValueError("this model has no fusion point to freeze below")
        first = order_positions(positions, self.rgb_tower.stage_names)[0]
        stage_index = self.rgb_tower.stage_names.index(first.stage)
        frozen_names, below = [], []
        for tower in (self.rgb_tower, self.flow_tower):
            for name in tower.stage_names[: stage_index + (0 if first.child is not None else 1)]:
                below.append(tower.stages[name])
                frozen_names.append(name)
            if first.child is not None:
                below.extend(list(tower.stages[first.stage].children())[: first.child + 1])
                frozen_names.append(f"{first.stage}.0-{first.child}")
        self.frozen_below_fusion = below
        self.frozen.extend(below)
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
        the layers in the Flow branch, including CMA blocks of the Flow branch", §4.3). Replaces an
        earlier branch's freezing, but what :meth:`freeze_below_fusion` froze stays frozen (a branch
        of a network fine-tuned ``above_fusion`` trains only its layers above the fusion point)."""
        if branch not in ("rgb", "flow"):
            raise ValueError(f"branch must be 'rgb' or 'flow', got {branch!r}")
        other = "flow" if branch == "rgb" else "rgb"
        self.requires_grad_(True)
        self.frozen = self.branch_modules(other) + self.frozen_below_fusion
        for module in self.frozen:
            module.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> "TwoStreamNet":
        super().train(mode)
        for module in self.frozen:
            module.eval()
        return self


def probe_backbone(backbone: str = "tiny", **backbone_kwargs) -> StagedBackbone:
    """The backbone a model will use (no weights loaded), to read its stages and channels before
    the blocks that sit between them are built."""
    return get_backbone(backbone, **{k: v for k, v in backbone_kwargs.items() if k == "widths"})


def channels_at(tower: StagedBackbone, position: PositionLike) -> int:
    """Channels of the feature map at a fusion position: a stage's output channels (every child of a
    stage, e.g. each residual block, outputs the stage's channels)."""
    return tower.stage_channels[Position.parse(position).stage]
