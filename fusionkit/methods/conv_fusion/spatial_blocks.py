"""Spatial fusion functions of Feichtenhofer, Pinz & Zisserman, CVPR 2016, §3.1 (Eq. 1-5).

Each block fuses the motion stream *into* the appearance stream at one layer:
``fuse(rgb, flow) -> (fused, flow)``. The flow map is passed through unchanged (the same tensor);
the two-stream network decides whether the motion tower goes on after the fusion point (Fig. 2,
"keep both towers") or is truncated there (Fig. 2 left). Every block works on 2D maps
``[N, C, H, W]`` and 3D maps ``[N, C, T, H, W]``: the functions act on channels at each location,
so the extra time axis is just more locations. ``out_channels`` is the channel count of the fused
map, for sizing the next layer or head.

The paper's point (§3.1) is *correspondence*: which channel of one network is matched with which
channel of the other, at the same pixel. Sum and max fix an arbitrary one (channel d with channel
d); concatenation defines none and leaves it to later layers; conv fusion *learns* it; bilinear
fusion matches every channel with every channel, but gives up where things are.

Notation: x^a = rgb (appearance, "spatial" network), x^b = flow (motion, "temporal" network).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from fusionkit.fusion import FusionBlock, register_fusion

__all__ = ["SpatialFusion", "SumFusion", "MaxFusion", "ConcatFusion", "ConvFusion", "BilinearFusion",
           "interleave_channels"]


def interleave_channels(rgb: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Eq. 3 stacking: ``y_{2d} = x^a_d``, ``y_{2d-1} = x^b_d`` for d = 1..D (1-based).

    So the first channel (1-based 1 = 2*1-1) is flow's first, the second is rgb's first, and so
    on; 0-based: ``y[:, 2k] = flow[:, k]`` and ``y[:, 2k + 1] = rgb[:, k]``. The two maps are
    interleaved channel by channel, flow first, giving 2D channels. (The official MatConvNet code
    stacks the blocks instead, ``[x^a; x^b]``; the two orders differ only by a fixed permutation
    of channels, which the layer after concatenation absorbs.)
    """
    return torch.stack((flow, rgb), dim=2).flatten(1, 2)


class SpatialFusion(FusionBlock):
    """Shared base of the §3.1 blocks: the optional equal-channel check.

    ``same_channels_because``: set on blocks whose equation pairs channel d of x^a with channel d
    of x^b (Eq. 1-4); construction then fails with this reason when the channel counts differ.
    """

    same_channels_because: str | None = None

    def __init__(self, rgb_channels: int, flow_channels: int):
        super().__init__(rgb_channels, flow_channels)
        if self.same_channels_because and rgb_channels != flow_channels:
            raise ValueError(f"{type(self).__name__} needs rgb_channels == flow_channels "
                             f"({self.same_channels_because}), got rgb_channels={rgb_channels} and "
                             f"flow_channels={flow_channels}; fuse after stages with equal widths, or "
                             f"use 'bilinear' fusion, which pairs every channel with every channel")


@register_fusion("sum")
class SumFusion(SpatialFusion):
    """Sum fusion, Eq. 1: ``y_{i,j,d} = x^a_{i,j,d} + x^b_{i,j,d}``.

    Defines an arbitrary correspondence (channel d with channel d, since channel numbering is
    arbitrary); later layers learn to make it useful. In Table 1 it is nearly as good as conv
    fusion, at no extra parameters.
    """

    same_channels_because = "Eq. 1 adds channel d of one map to channel d of the other"

    def fuse(self, rgb, flow):
        return rgb + flow, flow


@register_fusion("max")
class MaxFusion(SpatialFusion):
    """Max fusion, Eq. 2: ``y_{i,j,d} = max{x^a_{i,j,d}, x^b_{i,j,d}}``.

    Same arbitrary channel-d-with-channel-d correspondence as sum fusion. The gradient flows to
    whichever input is larger at each element (split evenly on exact ties, as torch.maximum does).
    """

    same_channels_because = "Eq. 2 compares channel d of one map with channel d of the other"

    def fuse(self, rgb, flow):
        return torch.maximum(rgb, flow), flow


@register_fusion("concat")
class ConcatFusion(SpatialFusion):
    """Concatenation fusion, Eq. 3: stack the maps at each location, interleaved channel by channel.

    Output ``[N, 2D, ...]`` with 0-based channel 2k = flow's channel k and 2k+1 = rgb's channel k
    (see :func:`interleave_channels`). Defines no correspondence: later layers must learn one,
    and the next layer has twice the input channels (Table 1: 172.8M parameters against 97.3M).
    """

    keeps_shape = False
    same_channels_because = "Eq. 3 interleaves channel d of one map with channel d of the other"

    @property
    def out_channels(self) -> int:
        return self.rgb_channels + self.flow_channels

    def fuse(self, rgb, flow):
        return interleave_channels(rgb, flow), flow


@register_fusion("conv")
class ConvFusion(SpatialFusion):
    """Conv fusion, Eq. 4: ``y = y^cat * f + b``, the Eq. 3 stacking then a 1x1 conv with bias.

    ``f`` has shape ``[out_channels, 2D]`` (a 1x1 filter bank; conv2d on 4D maps, conv3d 1x1x1 on
    5D maps). It *learns* the correspondence between the two networks' channels. §3.5: "careful
    initialisation of the injected fusion layer (as in (4)) is very important. [...] initialisation
    by identity matrices (to sum the two networks) performs as well as random initialisation":

    - ``init="identity"``: two stacked identities and zero bias, so the block is exactly sum fusion
      (Eq. 1) at init. Because Eq. 3 interleaves, output channel k reads input columns 2k (flow k)
      and 2k+1 (rgb k): ``f[k, 2k] = f[k, 2k + 1] = 1``, every other entry 0.
    - ``init="weighted"``: weighted identities, ``y = rgb_weight * x^a + flow_weight * x^b``
      (default 0.25 / 0.75, the official code's "2sumAB": flow activations are about 3x lower, §3.5).
    - ``init="random"``: PyTorch's default conv initialisation (Table 1: similar accuracy, but
      much longer training).
    Identity and weighted inits need ``out_channels == rgb_channels`` (the paper's D -> D); with
    ``init="random"`` any ``out_channels`` works (the fused map then has that many channels).
    """

    same_channels_because = "Eq. 4 stacks the maps as in Eq. 3, channel d with channel d"
    inits = ("identity", "weighted", "random")

    def __init__(self, rgb_channels: int, flow_channels: int, out_channels: int | None = None,
                 init: str = "identity", rgb_weight: float | None = None, flow_weight: float | None = None):
        super().__init__(rgb_channels, flow_channels)
        if init not in self.inits:
            raise ValueError(f"ConvFusion: init must be one of {self.inits}, got {init!r}")
        if init != "weighted" and (rgb_weight is not None or flow_weight is not None):
            raise ValueError(f"ConvFusion: rgb_weight/flow_weight are used only by init='weighted', got init={init!r}")
        self._out_channels = rgb_channels if out_channels is None else out_channels
        self.keeps_shape = self._out_channels == rgb_channels  # the base checks the shape unless it changes
        if init != "random" and self._out_channels != rgb_channels:
            raise ValueError(f"ConvFusion: init={init!r} maps D={rgb_channels} channels to D, so it needs "
                             f"out_channels={rgb_channels} (got {self._out_channels}); use init='random'")
        self.init = init
        self.rgb_weight = 1.0 if init == "identity" else (0.25 if rgb_weight is None else rgb_weight)
        self.flow_weight = 1.0 if init == "identity" else (0.75 if flow_weight is None else flow_weight)
        self.weight = nn.Parameter(torch.empty(self._out_channels, rgb_channels + flow_channels))
        self.bias = nn.Parameter(torch.empty(self._out_channels))
        self.reset_parameters()

    @property
    def out_channels(self) -> int:
        return self._out_channels

    @torch.no_grad()
    def reset_parameters(self) -> None:
        if self.init == "random":  # what nn.Conv2d.reset_parameters does (fan_in = 2D for a 1x1 kernel)
            nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
            nn.init.uniform_(self.bias, -1 / math.sqrt(self.weight.shape[1]), 1 / math.sqrt(self.weight.shape[1]))
            return
        self.weight.zero_()
        self.bias.zero_()
        k = torch.arange(self._out_channels)
        self.weight[k, 2 * k] = self.flow_weight      # Eq. 3: column 2k holds x^b_k
        self.weight[k, 2 * k + 1] = self.rgb_weight   # and column 2k+1 holds x^a_k

    def fuse(self, rgb, flow):
        stacked = interleave_channels(rgb, flow)
        conv = F.conv2d if stacked.dim() == 4 else F.conv3d
        kernel = self.weight.view(*self.weight.shape, *[1] * (stacked.dim() - 2))
        return conv(stacked, kernel, self.bias), flow

    def extra_repr(self) -> str:
        weights = f", rgb_weight={self.rgb_weight}, flow_weight={self.flow_weight}" if self.init == "weighted" else ""
        return f"{super().extra_repr()}, out_channels={self._out_channels}, init={self.init!r}{weights}"


@register_fusion("bilinear")
class BilinearFusion(SpatialFusion):
    """Bilinear fusion, Eq. 5: ``y = sum_{i,j} x^a_{i,j}^T x^b_{i,j}``, a D_a x D_b matrix per sample.

    Every channel of one network is combined (as a product) with every channel of the other, but
    **all spatial information is marginalised out** (the paper's stated disadvantage): the output
    is one vector per sample, ``[N, D_a*D_b, 1, 1]`` (``[N, D_a*D_b, 1, 1, 1]`` for 3D maps, where
    the sum runs over T, H and W), so global pooling + linear heads still apply. Entry
    ``p * D_b + q`` is ``sum_loc x^a_p x^b_q``. As §3.1 says (after Lin et al.'s bilinear CNN),
    the vector is then power-normalised, ``sign(y) sqrt(|y|)``, and L2-normalised to unit norm
    (an all-zero input stays zero). The square root is taken of ``|y| + sqrt_eps`` so its gradient
    stays finite at 0; in float32 this leaves any ``|y|`` above ~1e-5 bit-identical. Summing or
    averaging over locations gives the same output, as the L2 normalisation removes the scale.
    The channel counts may differ.
    """

    keeps_shape = False
    sqrt_eps = 1e-12

    @property
    def out_channels(self) -> int:
        return self.rgb_channels * self.flow_channels

    def fuse(self, rgb, flow):
        y = torch.bmm(rgb.flatten(2), flow.flatten(2).transpose(1, 2)).flatten(1)  # [N, D_a*D_b], Eq. 5
        y = y.sign() * (y.abs() + self.sqrt_eps).sqrt()
        y = F.normalize(y, dim=1)
        return y.view(*y.shape, *[1] * (rgb.dim() - 2)), flow
