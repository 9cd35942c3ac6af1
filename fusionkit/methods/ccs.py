"""Cooperative cross-stream network (CCS) of Zhang, Xu, Shen & Shen, "Cooperative Cross-Stream
Network for Discriminative Action Representation" (2019): the connection block (§3.2, Eq. 1-3,
Fig. 3) and the shared block's embedding head (§3.3). The ranking losses (Eq. 4-6) are in
:mod:`fusionkit.losses`, the balanced mini-batch sampler (§4.1) in :mod:`fusionkit.data.sampler`.

**Connection block** (:class:`ConnectionBlock`, ``"ccs"``). Appearance map x^f ``[N, C_f, *grid]``,
motion map x^o ``[N, C_o, *grid']``; i runs over the positions of x^f, j over those of x^o (H*W
on a 2D map, T*H*W on a 3D one). One correlation matrix serves both streams:

    S_ij   = phi(x^f_i) . kappa(x^o_j)                          exponent of Eq. 2 (phi, kappa: 1x1 convs)
    x'^f_i = x^f_i + W^f( sum_j softmax_j(S)_ij x^o_j )          Eq. 3, first line
    x'^o_j = x^o_j + W^o( sum_i softmax_i(S)_ij x^f_i )          Eq. 3, second line

Choices where the paper leaves room (no public code exists, so here they are, all of them):

- Embeddings. phi embeds the appearance stream and kappa the motion stream (Eq. 2:
  ``phi(x_i^f)^T kappa(x_j^o)``); the same matrix Y (here S) feeds both lines of Eq. 3.
- Normalisation. Eq. 1 as printed sums g over all pairs (i, j), which is a scalar. We follow the
  non-local block that §3.2 says it follows (Wang et al. 2018, embedded Gaussian): g divided by
  its sum over the positions being aggregated, i.e. a softmax over the motion positions j for the
  appearance output (rows of S) and over the appearance positions i for the motion output
  (columns of S).
- What each stream aggregates. Eq. 3 as printed, ``h^f(Y) = w^f x_i^f y``, is garbled; we read it
  as the *other* stream's features weighted by the correlation, so that each stream receives
  information from the other ("a bridge for information of appearance and motion stream flowing
  to each other", §3.3; "the features learned by the two distinct networks should enhance each
  other", §1). The aggregated features are the other stream's raw features: Fig. 3 and §4.3 name
  only phi, kappa, W^f, W^o, with no value embedding g as in the non-local block.
- No scaling of the exponent: ``e^{phi^T kappa}`` (Eq. 2), Wang et al.'s embedded Gaussian.
  ``scale=None`` divides by sqrt(d) instead, as CMA's Eq. 1 does.
- d, the width of phi and kappa, is not given: default half the smaller stream's channels (Wang
  et al.'s bottleneck).
- No biases: the paper writes ``phi(x) = W_phi x``, ``kappa(x) = W_kappa x`` and W^f, W^o as
  plain products.
- No subsampling: every position meets every position of the other map (cost L_f * L_o per
  sample; Wang et al. optionally max-pool, the paper does not mention it).
- Initialisation (the paper says nothing): W^f and W^o start at zero, so the block is exactly the
  identity at init (``x + 0 == x`` bit for bit). The block has no BN to zero as CMA and Wang et al.
  do; zeroing the last layer of a residual branch has the same effect (Goyal et al. 2017).
  W^f and W^o get non-zero gradients at once; phi and kappa get theirs once W^f / W^o have moved
  off zero (from the second step). phi and kappa keep PyTorch's default conv init (the authors
  used PyTorch and say nothing else).
- The two maps may differ in channels and in grid (the correlation is global); each output has
  its input's shape. 2D and 3D maps use the same 1x1 weights (a 1x1x1 conv on 3D maps).

**Shared block** (:class:`SharedEmbedding`). §3.3: each stream's features "can be transformed into
a D-dimension features vector through aggregation operation", giving z^f and z^o; §4.3 calls it
the "shared features projection layer" / "shared full connection operation". We implement one
fully connected layer whose *single set of weights* is applied to both streams, after averaging
over positions and segments (element-wise average, the best aggregation of Fig. 5a). Sharing the
layer is what puts both modalities in one space where Eq. 4 compares them. No normalisation: Eq. 4
and 5 use plain squared Euclidean distances (``normalize=True`` projects z onto the unit sphere).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from fusionkit.fusion.base import FusionBlock, conv1x1, register_fusion

__all__ = ["ConnectionBlock", "SharedEmbedding"]


@register_fusion("ccs")
class ConnectionBlock(FusionBlock):
    """CCS connection block (§3.2, Eq. 1-3, Fig. 3): each stream attends over the other's positions
    through one shared correlation matrix, and adds what it gathers through a zero-initialised 1x1
    conv (W^f for appearance, W^o for motion). See the module docstring for the choices made.

    Args:
        rgb_channels / flow_channels: C_f and C_o.
        inner_channels: d, the width of phi and kappa; default ``max(1, min(C_f, C_o) // 2)``.
        scale: factor on the exponent phi^T kappa; 1.0 is Eq. 2, None means 1/sqrt(d).
    """

    same_spatial_size = False  # the correlation is global: the grids need not match

    def __init__(self, rgb_channels: int, flow_channels: int, inner_channels: int | None = None,
                 scale: float | None = 1.0):
        super().__init__(rgb_channels, flow_channels)
        d = max(1, min(rgb_channels, flow_channels) // 2) if inner_channels is None else inner_channels
        if min(rgb_channels, flow_channels, d) < 1:
            raise ValueError(f"ConnectionBlock: channels must be positive, got rgb={rgb_channels}, "
                             f"flow={flow_channels}, inner={d}")
        self.inner_channels, self.scale = d, scale
        self.phi = nn.Conv2d(rgb_channels, d, 1, bias=False)              # phi: appearance embedding (Eq. 2)
        self.kappa = nn.Conv2d(flow_channels, d, 1, bias=False)           # kappa: motion embedding (Eq. 2)
        self.w_f = nn.Conv2d(flow_channels, rgb_channels, 1, bias=False)  # W^f: motion -> appearance (Eq. 3)
        self.w_o = nn.Conv2d(rgb_channels, flow_channels, 1, bias=False)  # W^o: appearance -> motion (Eq. 3)
        nn.init.zeros_(self.w_f.weight)  # identity at init (see the module docstring)
        nn.init.zeros_(self.w_o.weight)

    @property
    def effective_scale(self) -> float:
        return 1.0 / math.sqrt(self.inner_channels) if self.scale is None else float(self.scale)

    def correlation(self, rgb: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
        """S ``[N, L_f, L_o]``: ``S_ij = scale * phi(x^f_i) . kappa(x^o_j)``, the exponent of Eq. 2."""
        q = conv1x1(rgb, self.phi).flatten(2)     # [N, d, L_f]
        k = conv1x1(flow, self.kappa).flatten(2)  # [N, d, L_o]
        return q.transpose(1, 2) @ k * self.effective_scale

    def attention(self, rgb: torch.Tensor, flow: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The normalised embedded Gaussian (Eq. 2 over its sum), both ways, from one S ``[N, L_f, L_o]``:
        ``softmax over j`` (each appearance position's weights on the motion positions; rows sum
        to 1) and ``softmax over i`` (each motion position's weights on the appearance positions;
        columns sum to 1). Positions unflatten row-major to the maps' (H, W) or (T, H, W)."""
        s = self.correlation(rgb, flow)
        return s.softmax(dim=2), s.softmax(dim=1)

    def fuse(self, rgb: torch.Tensor, flow: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 3: ``x'^f = x^f + W^f(A_f x^o)``, ``x'^o = x^o + W^o(A_o^T x^f)``, both from the inputs."""
        to_rgb, to_flow = self.attention(rgb, flow)
        from_flow = (flow.flatten(2) @ to_rgb.transpose(1, 2)).view(rgb.shape[0], -1, *rgb.shape[2:])  # [N, C_o, *grid_f]
        from_rgb = (rgb.flatten(2) @ to_flow).view(flow.shape[0], -1, *flow.shape[2:])               # [N, C_f, *grid_o]
        return rgb + conv1x1(from_flow, self.w_f), flow + conv1x1(from_rgb, self.w_o)

    def branch_modules(self, branch: str) -> list[nn.Module]:
        """phi and W^f belong to the appearance branch, kappa and W^o to the motion branch (Eq. 3's
        ``h_phi^f`` and ``h_kappa^o``). Note the correlation needs both phi and kappa, so freezing one
        branch still lets the other's outputs depend on the frozen embedding."""
        super().branch_modules(branch)  # validates the name
        return [self.phi, self.w_f] if branch == "rgb" else [self.kappa, self.w_o]

    def extra_repr(self) -> str:
        scale = "1/sqrt(d)" if self.scale is None else repr(self.scale)
        return f"{super().extra_repr()}, inner_channels={self.inner_channels}, scale={scale}"


class SharedEmbedding(nn.Module):
    """The shared block's projection (§3.3): average a stream's features over positions (and
    segments), then one fully connected layer ``C -> D``, the *same* layer for both streams:
    ``z^f = embed(x^f)``, ``z^o = embed(x^o)`` with one module. Averaging before or after the layer
    gives the same z (the layer is affine); averaging first is cheaper.

    Args:
        channels: C, channels of both streams' final feature maps (they must match to share weights).
        dim: D, the embedding size.
        normalize: divide z by its L2 norm (not in the paper; off by default).

    ``forward(x, segments=1)``: x is ``[N, C]``, ``[N, C, H, W]`` or ``[N, C, T, H, W]`` with
    ``N = B * segments`` (TSN's snippets folded into the batch, video-major); returns ``[B, D]``.
    """

    def __init__(self, channels: int, dim: int = 128, normalize: bool = False):
        super().__init__()
        if channels < 1 or dim < 1:
            raise ValueError(f"SharedEmbedding: channels and dim must be positive, got {channels}, {dim}")
        self.channels, self.dim, self.normalize = channels, dim, normalize
        self.fc = nn.Linear(channels, dim)

    def forward(self, x: torch.Tensor, segments: int = 1) -> torch.Tensor:
        if x.dim() not in (2, 4, 5) or x.shape[1] != self.channels:
            raise ValueError(f"SharedEmbedding: expected [N, {self.channels}], [N, {self.channels}, H, W] or "
                             f"[N, {self.channels}, T, H, W] features, got shape {tuple(x.shape)}")
        if segments < 1 or x.shape[0] % segments:
            raise ValueError(f"SharedEmbedding: {x.shape[0]} feature rows cannot be split into videos of "
                             f"{segments} segments")
        pooled = x.flatten(2).mean(-1) if x.dim() > 2 else x           # [B*T, C]: average over positions
        pooled = pooled.view(-1, segments, self.channels).mean(1)      # [B, C]: average over segments
        z = self.fc(pooled)
        return F.normalize(z, dim=-1) if self.normalize else z

    def extra_repr(self) -> str:
        return f"channels={self.channels}, dim={self.dim}, normalize={self.normalize}"
