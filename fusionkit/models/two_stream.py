"""The two-stream network: two staged towers, fusion blocks between stages, heads and consensus.

Simonyan & Zisserman (2014) train an appearance tower on single RGB frames and a motion tower on
stacks of L optical-flow fields (2L channels), and fuse their class scores. TSN (Wang et al. 2016)
samples T snippets per video and averages the snippets' scores (segmental consensus). Here the T
snippets are folded into the batch (``[B*T, C, H, W]``) while the towers run, and unfolded for the
consensus; fusion blocks see per-snippet feature maps.

Where fusion blocks go: a dict from a position to a block. ``"stage3"`` means after stage3 of
both towers; ``"stage3.1"`` means after the second child (e.g. residual block) of stage3.
"""
from __future__ import annotations

from typing import Callable, Mapping

import torch
from torch import nn

from fusionkit.fusion.base import FusionBlock
from fusionkit.models.backbones import StagedBackbone, get_backbone


class TwoStreamOutput(dict):
    """Named ``[B, K]`` scores: ``"rgb"`` and ``"flow"`` logits of each stream, and the fused output
    under the method's name (for score-level fusion these are log-probabilities, so ``argmax`` and
    ``cross_entropy`` apply alike). ``extras`` holds what objectives and visualisations need."""

    def __init__(self, scores: Mapping[str, torch.Tensor], fused: str | None = None, extras: dict | None = None):
        super().__init__(scores)
        self.fused = fused
        self.extras = extras or {}


class ClassifierHead(nn.Module):
    """Global average pooling, dropout, linear classifier (the towers' fc layer)."""

    def __init__(self, channels: int, num_classes: int, dropout: float = 0.5):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(x.mean(dim=tuple(range(2, x.dim())))))


def late_fusion(rgb_logits: torch.Tensor, flow_logits: torch.Tensor, rgb_weight: float = 0.5) -> torch.Tensor:
    """Simonyan & Zisserman's late fusion: the weighted average of the two streams' softmax scores,
    ``w * softmax(rgb) + (1 - w) * softmax(flow)``, returned as log-probabilities."""
    if not 0.0 <= rgb_weight <= 1.0:
        raise ValueError(f"rgb_weight must lie in [0, 1], got {rgb_weight}")
    probs = rgb_weight * rgb_logits.softmax(-1) + (1 - rgb_weight) * flow_logits.softmax(-1)
    return probs.clamp_min(1e-12).log()


class TwoStreamNet(nn.Module):
    """Two towers of the same staged backbone run stage by stage, with fusion blocks between stages.

    Args:
        num_classes: K.
        backbone: a registered backbone name (``tiny``, ``resnet18``, ...).
        new_length: L, flow fields per snippet (the motion tower takes 2L channels).
        pretrained: ImageNet weights for both towers (cross-modality init for the motion tower).
        fusion_blocks: position -> block (see the module docstring).
        rgb_weight: the RGB share w of late fusion of the two streams' scores.
        fused_name: the name of the fused output (the method's name, e.g. ``"late"``).
        dropout: before each classifier (TSN uses 0.8 for RGB, 0.7 for flow on UCF-101).
    """

    def __init__(self, num_classes: int, backbone: str = "tiny", new_length: int = 5, pretrained: bool = False,
                 fusion_blocks: Mapping[str, FusionBlock] | None = None, rgb_weight: float = 0.5,
                 fused_name: str = "late", dropout: float = 0.5, **backbone_kwargs):
        super().__init__()
        self.num_classes, self.new_length, self.rgb_weight, self.fused_name = num_classes, new_length, rgb_weight, fused_name
        self.rgb_tower: StagedBackbone = get_backbone(backbone, in_channels=3, pretrained=pretrained, **backbone_kwargs)
        self.flow_tower: StagedBackbone = get_backbone(backbone, in_channels=2 * new_length, pretrained=pretrained,
                                                       **backbone_kwargs)
        blocks = dict(fusion_blocks or {})
        for position in blocks:
            self._check_position(position)
        # ModuleDict keys may not contain ".": store "stage3.1" as "stage3:1"
        self.fusion_blocks = nn.ModuleDict({p.replace(".", ":"): b for p, b in blocks.items()})
        self.rgb_head = ClassifierHead(self.rgb_tower.out_channels, num_classes, dropout)
        self.flow_head = ClassifierHead(self.flow_tower.out_channels, num_classes, dropout)

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

    def features(self, rgb: torch.Tensor, flow: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run both towers on folded snippets ``[N, C, H, W]`` and apply the fusion blocks."""
        for stage in self.rgb_tower.stage_names:
            inner = self._stage_positions(stage)
            if inner:  # step through the stage's children to fuse between them
                for i, (r_mod, f_mod) in enumerate(zip(self.rgb_tower.stages[stage].children(),
                                                       self.flow_tower.stages[stage].children())):
                    rgb, flow = r_mod(rgb), f_mod(flow)
                    if i in inner:
                        rgb, flow = inner[i](rgb, flow)
            else:
                rgb, flow = self.rgb_tower.stages[stage](rgb), self.flow_tower.stages[stage](flow)
            if stage in self.fusion_blocks:
                rgb, flow = self.fusion_blocks[stage](rgb, flow)
        return rgb, flow

    def forward(self, rgb: torch.Tensor, flow: torch.Tensor) -> TwoStreamOutput:
        """``rgb [B, T, 3, H, W]``, ``flow [B, T, 2L, H, W]`` -> scores ``[B, K]`` per output."""
        if rgb.dim() != 5 or flow.dim() != 5 or rgb.shape[:2] != flow.shape[:2]:
            raise ValueError(f"expected rgb [B, T, 3, H, W] and flow [B, T, 2L, H, W] with the same B and T, got "
                             f"{tuple(rgb.shape)} and {tuple(flow.shape)}")
        if flow.shape[2] != 2 * self.new_length:
            raise ValueError(f"the motion tower takes 2L = {2 * self.new_length} flow channels, got {flow.shape[2]}")
        b, t = rgb.shape[:2]
        r, f = self.features(rgb.flatten(0, 1), flow.flatten(0, 1))
        # segmental consensus: average the snippets' class scores (TSN, Eq. 1 with g = mean)
        rgb_logits = self.rgb_head(r).view(b, t, -1).mean(1)
        flow_logits = self.flow_head(f).view(b, t, -1).mean(1)
        fused = late_fusion(rgb_logits, flow_logits, self.rgb_weight)
        return TwoStreamOutput({"rgb": rgb_logits, "flow": flow_logits, self.fused_name: fused}, fused=self.fused_name)


MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str):
    """Register a function ``(num_classes, **kwargs) -> nn.Module`` under a method name."""

    def wrap(fn):
        MODELS[name] = fn
        return fn

    return wrap


def build_model(name: str, num_classes: int, **kwargs) -> nn.Module:
    """Build a registered model by method name, e.g. ``build_model("late", 4, backbone="tiny")``."""
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; registered: {sorted(MODELS)}")
    return MODELS[name](num_classes, **kwargs)


@register_model("late")
def late(num_classes: int, **kwargs) -> TwoStreamNet:
    """The original two-stream network: towers trained separately, softmax scores averaged."""
    return TwoStreamNet(num_classes, fused_name="late", **kwargs)
