"""The fusion-block contract: the base class every fusion block subclasses, and the string registry.

The blocks themselves live with their papers (:mod:`fusionkit.methods`): sum/max/concat/conv/
bilinear and the temporal blocks in :mod:`fusionkit.methods.conv_fusion`, ``cmmp``, ``ccs``,
``cma``/``nonlocal`` in their modules. Reading the registry imports them (its provider).

A fusion block sits between two stages of the two towers and maps the pair of feature maps
``(rgb, flow)`` to a new pair (``[N, C, H, W]``, or ``[N, C, T, H, W]`` for 3D blocks). A block
that fuses one way returns the other stream unchanged. Subclasses override one hook, :meth:`fuse`;
the base class checks the shapes going in and coming out, so a student's block that gets them
wrong fails with a message saying which shapes and why, not deep inside a conv.

    @register_fusion("my_sum")
    class MySum(FusionBlock):
        def fuse(self, rgb, flow):
            return rgb + flow, flow

    build_fusion("my_sum", rgb_channels=64, flow_channels=64)
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fusionkit.registry import Registry

FUSIONS = Registry("fusion block", provider="fusionkit.methods")


def register_fusion(name: str):
    """Class decorator adding a FusionBlock subclass to the registry under ``name``."""

    def wrap(cls: type[FusionBlock]) -> type[FusionBlock]:
        FUSIONS.register(name)(cls)
        cls.registered_name = name
        return cls

    return wrap


def conv1x1(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """A 1x1 conv on a 2D map ``[N, C, H, W]``, or the same weights as a 1x1x1 conv on a 3D map
    ``[N, C, T, H, W]``: one set of parameters serves both (attention blocks, CMA §3.2, CCS Fig. 3)."""
    if x.dim() == 4:
        return conv(x)
    return F.conv3d(x, conv.weight.unsqueeze(2), conv.bias)


def build_fusion(name: str, **kwargs) -> "FusionBlock":
    return FUSIONS.lookup(name)(**kwargs)


class FusionBlock(nn.Module):
    """Base class of fusion blocks. Override :meth:`fuse`.

    Args:
        rgb_channels / flow_channels: channels of the feature maps the block receives.
    Class attributes a subclass may change:
        same_spatial_size: the two inputs must have the same spatial (and temporal) size.
        keeps_shape: the outputs must have the inputs' shapes (blocks that, e.g., concatenate
            channels set it False and document the new shape in ``out_channels``).
        fuses_streams: the RGB output mixes in the flow stream (False for per-stream pooling).
    """

    registered_name: str = ""
    same_spatial_size: bool = True
    keeps_shape: bool = True
    fuses_streams: bool = True  # False for blocks that only transform each stream on its own (pooling)

    def __init__(self, rgb_channels: int, flow_channels: int):
        super().__init__()
        self.rgb_channels, self.flow_channels = rgb_channels, flow_channels

    @property
    def out_channels(self) -> int:
        """Channels of the RGB (or fused) output, which sizes the layers that follow."""
        return self.rgb_channels

    def branch_modules(self, branch: str) -> list[nn.Module]:
        """The parts of this block that belong to the ``"rgb"`` or ``"flow"`` branch, for schedules
        that train one branch at a time (Chi et al. §4.3). By default a block writes into the RGB
        tower, so all of it is the RGB branch's; blocks with a unit per stream (CMA) split."""
        if branch not in ("rgb", "flow"):
            raise ValueError(f"branch must be 'rgb' or 'flow', got {branch!r}")
        return [self] if branch == "rgb" else []

    def fuse(self, rgb: torch.Tensor, flow: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError(f"{type(self).__name__} must implement fuse(rgb, flow) -> (rgb, flow)")

    def forward(self, rgb: torch.Tensor, flow: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        name = type(self).__name__
        for stream, x, channels in (("rgb", rgb, self.rgb_channels), ("flow", flow, self.flow_channels)):
            if x.dim() not in (4, 5):
                raise ValueError(f"{name}: the {stream} feature map must be [N, C, H, W] or [N, C, T, H, W], "
                                 f"got shape {tuple(x.shape)}")
            if x.shape[1] != channels:
                raise ValueError(f"{name}: built for {channels} {stream} channels but got {x.shape[1]} "
                                 f"(shape {tuple(x.shape)}); pass {stream}_channels={x.shape[1]} when building it")
        if rgb.shape[0] != flow.shape[0]:
            raise ValueError(f"{name}: batch sizes differ: rgb {tuple(rgb.shape)} vs flow {tuple(flow.shape)}")
        if self.same_spatial_size and rgb.shape[2:] != flow.shape[2:]:
            raise ValueError(f"{name}: the streams' feature maps must have the same spatial size to be fused "
                             f"pixel by pixel, got rgb {tuple(rgb.shape)} vs flow {tuple(flow.shape)}; fuse after "
                             f"the same stage of both towers, or resize one of them first")
        out = self.fuse(rgb, flow)
        if not (isinstance(out, tuple) and len(out) == 2 and all(isinstance(t, torch.Tensor) for t in out)):
            raise TypeError(f"{name}.fuse must return a tuple (rgb, flow) of two tensors, got {type(out).__name__}")
        if self.keeps_shape and (out[0].shape != rgb.shape or out[1].shape != flow.shape):
            raise ValueError(f"{name}.fuse changed the feature shapes: rgb {tuple(rgb.shape)} -> {tuple(out[0].shape)}, "
                             f"flow {tuple(flow.shape)} -> {tuple(out[1].shape)}; return maps of the input shapes "
                             f"(or set keeps_shape = False and document the new shape)")
        return out

    def extra_repr(self) -> str:
        return f"rgb_channels={self.rgb_channels}, flow_channels={self.flow_channels}"


class FusionChain(FusionBlock):
    """Several blocks at one position, applied in turn: ``(rgb, flow) -> block_1 -> ... -> block_n``.
    Chi et al. (Table 4) put a CMA block "just behind" a non-local block this way. The chain fuses
    the streams if any of its blocks does, and each branch owns its blocks' parts of that branch."""

    def __init__(self, blocks: Sequence[FusionBlock]):
        blocks = list(blocks)
        if not blocks:
            raise ValueError("FusionChain needs at least one block")
        super().__init__(blocks[0].rgb_channels, blocks[0].flow_channels)
        for before, after in zip(blocks, blocks[1:]):
            if (before.out_channels, before.flow_channels) != (after.rgb_channels, after.flow_channels):
                raise ValueError(f"FusionChain: {type(before).__name__} outputs {before.out_channels}/"
                                 f"{before.flow_channels} rgb/flow channels but {type(after).__name__} takes "
                                 f"{after.rgb_channels}/{after.flow_channels}")
        self.blocks = nn.ModuleList(blocks)
        self.same_spatial_size = any(b.same_spatial_size for b in blocks)
        self.keeps_shape = all(b.keeps_shape for b in blocks)
        self.fuses_streams = any(b.fuses_streams for b in blocks)

    @property
    def out_channels(self) -> int:
        return self.blocks[-1].out_channels

    def branch_modules(self, branch: str) -> list[nn.Module]:
        return [m for block in self.blocks for m in block.branch_modules(branch)]

    def fuse(self, rgb, flow):
        for block in self.blocks:
            rgb, flow = block(rgb, flow)
        return rgb, flow
