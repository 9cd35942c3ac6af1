"""Cross-modality attention (CMA) of Chi, Tian, Mu & Tian, "Two-Stream Video Classification with
Cross-Modality Attention" (ICCV-W 2019), §3, and its same-modality special case, the non-local
block of Wang, Girshick, Gupta & He, "Non-local Neural Networks" (CVPR 2018).

One attention unit, :class:`CrossModalityAttention`, updates a *target* map x with information
gathered from a *source* map y (§3.1):

    q = theta(x),  k = phi(pool(y)),  v = g(pool(y))                        (1x1 convs, §3.2)
    attn = softmax(q k^T / sqrt(d_k)) v                                     (Eq. 1; Eq. 2-4)
    z = x + BN(W_out(attn))                                                 (Eq. 5 + §3.2 BN)

- :class:`CMABlock` (``"cma"``) runs it both ways, each with its own weights: rgb <- flow (RGB
  queries, flow keys/values, Fig. 1) and flow <- rgb. Both directions read the block's *inputs*
  (they are computed side by side, not one after the other).
- :class:`NonLocalBlock` (``"nonlocal"``) runs the same class with target = source on each stream
  (rgb <- rgb, flow <- flow): "the non-local operation can be regarded as a special case of CMA
  when K, Q and V are all from the same modality" (§3.1). It does not mix the streams.

Positions ("i and j are both indices of feature maps (can be in space, time, or spacetime)",
§3.1): a 2D map ``[N, C, H, W]`` has H*W query positions, a 3D map ``[N, C, T, H, W]`` has T*H*W.
The keys/values are max-pooled over *space only* (kernel = stride = 2; ``(1, 2, 2)`` on 3D maps),
so there are ``T * floor(H/2) * floor(W/2)`` of them.

Decisions where the paper leaves room (see :class:`CrossModalityAttention` for the details):

- Scaling. Eq. 1 divides the logits by sqrt(d_k) *inside* the softmax. Eq. 3 as printed,
  ``f = e^{q k^T} / sqrt(d_k)``, has the division outside the exponential, where the normaliser
  C(x, y) of Eq. 4 cancels it, which would leave the unscaled embedded Gaussian of Wang et al.
  (their Eq. 3). We follow Eq. 1 (the generic definition, "following the notations in [34]",
  i.e. scaled dot-product attention) by default: ``scale=None`` means 1/sqrt(d_k); pass
  ``scale=1.0`` for the literal Eq. 3 / Wang et al.'s embedded Gaussian.
- Embedded Gaussian: yes. "For simplicity, we choose the embedded Gaussian version" (§3.1), i.e.
  f = exp(q . k) normalised over the keys j, which is a softmax over keys (Eq. 2-4).
- d_k = half the target's channels (§3.2, "conv_q reduce the number of channels to be half of
  that in x, and conv_k and conv_v have same number of channels as conv_q").
- Pooling floors odd sizes (``ceil_mode=False``, PyTorch's default and what Wang et al.'s
  reference code uses): a 7x7 source gives 3x3 keys, and its last row and column reach no
  key or value (ceil mode would add half-empty windows at the border). Maps smaller than 2 in H
  or W cannot be pooled; build with ``pool=False`` (Wang et al.'s ``sub_sample=False``) for them.
- Biases on theta, phi, g and W_out, as in Wang et al.'s code; weights He-initialised ("the CMA
  blocks are initialized via the same scheme in [9]", §4.1), biases zero.

One option that is *not* in the paper, off by default: ``position_frequencies``. Attention
compares contents only: q_i . k_j does not depend on where i and j are, so a query cannot prefer
the key at its own location unless the features carry their position. ResNet-50 features at
224x224 do (zero padding and receptive fields larger than the image leak absolute position); a
small CNN's early maps hardly do. On ``registration`` (two same-shaped sprites, one moves) the
paper's CMA then learns what Fig. 5 shows, every query attending to the moving sprite, which
tells each RGB position the direction but not *whose* motion it is (notebook 06 measures it).
With ``position_frequencies = F > 0`` the queries and keys get a learned linear map of 2D Fourier
features of their cell centres added to them (sin and cos of ``2 pi 2^f u`` for f < F, u = x and
y in [0, 1] of the frame, 4F channels), as transformers add positional encodings (Vaswani et al.
2017, §3.5): p_i . p_j = sum cos(w (u_i - u_j)), so q . k can peak where query and key coincide.
Initialisation of the option: the positional maps start as a locality prior (:data:`LOCALITY_PEAK`)
and the content key conv phi at zero, so attention starts local and learns content on top (with
He-initialised content logits, tens of units on trained features, it collapsed onto the moving
sprite). Values are unchanged, and the block is still the identity at init.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from typing import Sequence

from fusionkit.fusion import FusionBlock, FusionChain, build_fusion, conv1x1, register_fusion
from fusionkit.methods.recipe import Method, register_method
from fusionkit.models.backbones import StagedBackbone
from fusionkit.models.positions import Position, PositionLike, order_positions
from fusionkit.models.two_stream import TwoStreamNet, channels_at, probe_backbone

__all__ = ["CrossModalityAttention", "CMABlock", "NonLocalBlock"]

DIRECTIONS = ("both", "rgb", "flow")
# Initial positional logit of a query's own cell above the mean (position_frequencies > 0 only).
# Chosen from exploratory single-seed runs on `registration` (tiny towers, 15 epochs, before initial
# weights were seeded): with a peak of 4 the content terms took over and every query attended to the
# moving sprite (own-cell mass 0.07, test 0.58); with 10 the queries stayed local enough to register
# (own-cell mass 0.28, test 1.00); 20 also gave 1.00. Notebook 06 measures the chosen value over 2 seeds.
LOCALITY_PEAK = 10.0


class _BatchNormND(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the channels of a 2D ``[N, C, H, W]`` or 3D ``[N, C, T, H, W]`` map: the
    same parameters and buffers (and state-dict keys) as BatchNorm2d/BatchNorm3d, for either."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() not in (4, 5):
            raise ValueError(f"expected a 4D or 5D input, got shape {tuple(input.shape)}")


def fourier_positions(grid: tuple[int, ...], frequencies: int, device=None, dtype=None) -> torch.Tensor:
    """``[4F, *grid]``: sin and cos of ``2 pi 2^f u`` (f < F) for u = the x and y of each cell centre
    in [0, 1] of the frame (``(i + 0.5) / size``), repeated over time for a ``(T, H, W)`` grid. Cell
    centres make a pooled grid line up with the full one (both cover the same frame)."""
    h, w = grid[-2:]
    ys = (torch.arange(h, device=device, dtype=dtype) + 0.5) / h
    xs = (torch.arange(w, device=device, dtype=dtype) + 0.5) / w
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    omegas = 2 * math.pi * 2.0 ** torch.arange(frequencies, device=device, dtype=dtype)
    phases = torch.cat([xx[None] * omegas[:, None, None], yy[None] * omegas[:, None, None]])  # [2F, H, W]
    features = torch.cat([phases.sin(), phases.cos()])
    return features[:, None].expand(-1, grid[0], h, w) if len(grid) == 3 else features


def _pool_space(x: torch.Tensor) -> torch.Tensor:
    """Spatial max-pooling with stride 2 "before k and v" (§3.2): kernel 2x2 (1x2x2 on 3D maps,
    time untouched), floor mode."""
    if x.shape[-1] < 2 or x.shape[-2] < 2:
        raise ValueError(f"CrossModalityAttention: cannot max-pool a source map of spatial size "
                         f"{tuple(x.shape[-2:])} with stride 2 (shape {tuple(x.shape)}); build the block "
                         f"with pool=False for maps this small")
    if x.dim() == 4:
        return F.max_pool2d(x, kernel_size=2, stride=2)
    return F.max_pool3d(x, kernel_size=(1, 2, 2), stride=(1, 2, 2))


class CrossModalityAttention(nn.Module):
    """One direction of CMA: the *target* map x attends over all positions of the *source* map y.

    ``forward(target, source) = target + BN(W_out(attend(target, source)))`` (Eq. 5 with §3.2's BN),
    where :meth:`attend` is Eq. 1 / Eq. 2-4 with

    - queries q = theta(x): 1x1 conv ``target_channels -> inner_channels`` (conv_q, §3.2),
    - keys k = phi(pool(y)) and values v = g(pool(y)): 1x1 convs ``source_channels -> inner_channels``
      after a spatial max-pool with stride 2 (conv_k, conv_v, §3.2),
    - ``softmax(q k^T * scale) v`` over the key positions, with ``scale = 1/sqrt(d_k)`` (Eq. 1)
      unless given, d_k = ``inner_channels``; computed by
      :func:`torch.nn.functional.scaled_dot_product_attention` on ``[N, 1 head, L, d_k]`` tensors, so
      PyTorch picks a fused / memory-efficient kernel and never builds the L_q x L_k matrix on the
      normal path,
    - W_out: 1x1 conv ``inner_channels -> target_channels``, then BatchNorm with scale gamma = 0 and
      shift beta = 0 at init (§3.2, after Wang et al.), so the block is exactly the identity at init:
      BN's output is then exactly 0 in eval *and* train mode, and ``target + 0 == target`` bit for bit.
      The gradient w.r.t. gamma is not zero, so training moves it off 0.

    The convs are picked by the input's dimension: 2D maps use the 1x1 Conv2d weights directly, 3D
    maps use the same weights as a 1x1x1 Conv3d (one set of parameters, one code path). Target and
    source may have different channels, different spatial sizes, and even different dimensions
    (2D queries over 3D keys): attention only sees sets of positions. The output has the target's shape.

    Attention weights for visualisation: set ``keep_attention = True`` (attribute or constructor
    argument). Each forward then *also* computes the explicit matrix ``softmax(q k^T * scale)`` naively
    and stores it, detached, in ``last_attention`` ``[N, L_q, L_k]``, with ``last_query_shape`` and
    ``last_key_shape`` the position grids ((H, W) or (T, H, W); keys after pooling) that the row and
    column indices unflatten to (row-major, as ``torch.unravel_index``). The output still comes from
    the SDPA path, unchanged. With the flag off (default) nothing extra is computed or kept.

    Args:
        target_channels: channels of x (queries; the output has these).
        source_channels: channels of y (keys and values); defaults to ``target_channels``.
        inner_channels: d_k; default ``max(1, target_channels // 2)`` (§3.2).
        scale: logit scale; None = 1/sqrt(d_k) (Eq. 1); 1.0 = Wang et al.'s embedded Gaussian.
        pool: max-pool the source before k and v (§3.2); False for maps smaller than 2x2.
        keep_attention: keep the explicit attention matrix of each forward (see above).
        position_frequencies: F > 0 adds learned positional terms to q and k (not in the paper;
            see the module docstring); 0 (default) is the paper's content-only attention.
    """

    def __init__(self, target_channels: int, source_channels: int | None = None, inner_channels: int | None = None,
                 scale: float | None = None, pool: bool = True, keep_attention: bool = False,
                 position_frequencies: int = 0):
        super().__init__()
        source_channels = target_channels if source_channels is None else source_channels
        inner_channels = max(1, target_channels // 2) if inner_channels is None else inner_channels
        if min(target_channels, source_channels, inner_channels) < 1:
            raise ValueError(f"CrossModalityAttention: channels must be positive, got target={target_channels}, "
                             f"source={source_channels}, inner={inner_channels}")
        self.target_channels, self.source_channels, self.inner_channels = target_channels, source_channels, inner_channels
        self.scale = scale
        self.pool = pool
        self.keep_attention = keep_attention
        self.theta = nn.Conv2d(target_channels, inner_channels, 1)   # conv_q
        self.phi = nn.Conv2d(source_channels, inner_channels, 1)     # conv_k
        self.g = nn.Conv2d(source_channels, inner_channels, 1)       # conv_v
        self.w_out = nn.Conv2d(inner_channels, target_channels, 1)   # W_out, Eq. 5
        self.position_frequencies = position_frequencies
        if position_frequencies:  # not in the paper: see the module docstring
            self.theta_position = nn.Conv2d(4 * position_frequencies, inner_channels, 1, bias=False)
            self.phi_position = nn.Conv2d(4 * position_frequencies, inner_channels, 1, bias=False)
        self.bn = _BatchNormND(target_channels)
        self.last_attention: torch.Tensor | None = None
        self.last_query_shape: tuple[int, ...] | None = None
        self.last_key_shape: tuple[int, ...] | None = None
        self.reset_parameters()

    @property
    def effective_scale(self) -> float:
        """The factor the logits q k^T are multiplied by: 1/sqrt(d_k) (Eq. 1) unless ``scale`` was given."""
        return 1.0 / math.sqrt(self.inner_channels) if self.scale is None else float(self.scale)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """He init for the convs (§4.1: "initialized via the same scheme in [9]"), zero biases, and
        BN gamma = beta = 0 (§3.2), so the unit starts as the identity."""
        for conv in (self.theta, self.phi, self.g, self.w_out):
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)
        if self.position_frequencies:
            # a locality prior: theta_position = phi_position = s * A with orthonormal columns A (when
            # d_k >= 4F), so the positional logit is s^2 * p_i . p_j * scale = s^2 * scale * sum_f cos(w_f du),
            # peaking at the query's own cell, LOCALITY_PEAK above the mean logit
            weight = torch.empty(self.inner_channels, 4 * self.position_frequencies)
            nn.init.orthogonal_(weight)
            s = math.sqrt(LOCALITY_PEAK / (2 * self.position_frequencies * self.effective_scale))
            for conv in (self.theta_position, self.phi_position):
                conv.weight.copy_(s * weight.reshape(conv.weight.shape))
            # content keys start at zero: He-initialised q . k on trained features is tens of units and would
            # drown the prior (measured: attention collapsed onto one salient key); phi learns from here
            # (its gradient is not zero while theta is not), so content is added to locality, not the reverse
            nn.init.zeros_(self.phi.weight)
        self.bn.reset_running_stats()
        nn.init.zeros_(self.bn.weight)
        nn.init.zeros_(self.bn.bias)

    def attend(self, target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """The CMA operation, Eq. 1 (= Eq. 2-4 with the embedded Gaussian f): ``[N, d_k, *target
        positions]``, i.e. z before W_out. Row i is ``sum_j softmax_j(q_i . k_j * scale) v_j``."""
        n = target.shape[0]
        q = conv1x1(target, self.theta)
        pooled = _pool_space(source) if self.pool else source
        k = conv1x1(pooled, self.phi)
        v = conv1x1(pooled, self.g)
        if self.position_frequencies:
            q = q + self._position_term(q, self.theta_position)
            k = k + self._position_term(k, self.phi_position)
        # [N, d, *pos] -> [N, 1 head, L, d], contiguous: PyTorch's fused SDPA kernels need the last dim at
        # stride 1 and silently fall back to the unfused math kernel otherwise (benchmarks/cma_attention.py)
        q_seq, k_seq, v_seq = (t.flatten(2).transpose(1, 2).unsqueeze(1).contiguous() for t in (q, k, v))
        out = F.scaled_dot_product_attention(q_seq, k_seq, v_seq, scale=self.effective_scale)
        if self.keep_attention:
            with torch.no_grad():  # at least float32 even under autocast, so the kept rows sum to 1
                dtype = torch.promote_types(q_seq.dtype, torch.float32)
                logits = q_seq.squeeze(1).to(dtype) @ k_seq.squeeze(1).to(dtype).transpose(1, 2) * self.effective_scale
                self.last_attention = torch.softmax(logits, dim=-1)
            self.last_query_shape = tuple(target.shape[2:])
            self.last_key_shape = tuple(pooled.shape[2:])
        else:  # never leave an earlier batch's matrix behind to be mistaken for this one's
            self.last_attention = self.last_query_shape = self.last_key_shape = None
        # [N, 1, L_q, d] -> [N, d, *target positions]
        return out.squeeze(1).transpose(1, 2).reshape(n, self.inner_channels, *target.shape[2:])

    def _position_term(self, x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
        """The learned positional term of queries or keys ``x`` ``[N, d, *grid]``, broadcast over N."""
        features = fourier_positions(tuple(x.shape[2:]), self.position_frequencies, x.device, x.dtype)
        return conv1x1(features.unsqueeze(0), conv)

    def forward(self, target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """Eq. 5: ``out = BN(W_out z) + x`` (BN after W_out as in §3.2)."""
        if target.dim() not in (4, 5) or source.dim() not in (4, 5):
            raise ValueError(f"CrossModalityAttention: maps must be [N, C, H, W] or [N, C, T, H, W], got "
                             f"target {tuple(target.shape)} and source {tuple(source.shape)}")
        if target.shape[1] != self.target_channels or source.shape[1] != self.source_channels:
            raise ValueError(f"CrossModalityAttention: built for target/source channels {self.target_channels}/"
                             f"{self.source_channels}, got {target.shape[1]}/{source.shape[1]}")
        if target.shape[0] != source.shape[0]:
            raise ValueError(f"CrossModalityAttention: batch sizes differ: target {tuple(target.shape)} vs "
                             f"source {tuple(source.shape)}")
        return target + self.bn(conv1x1(self.attend(target, source), self.w_out))

    def extra_repr(self) -> str:
        scale = "1/sqrt(d_k)" if self.scale is None else repr(self.scale)
        position = f", position_frequencies={self.position_frequencies}" if self.position_frequencies else ""
        return (f"target_channels={self.target_channels}, source_channels={self.source_channels}, "
                f"inner_channels={self.inner_channels}, scale={scale}, pool={self.pool}{position}")


class _AttentionFusion(FusionBlock):
    """Shared plumbing of :class:`CMABlock` and :class:`NonLocalBlock`: the ``directions`` argument,
    the attention units ``rgb_attention`` / ``flow_attention`` (None for a stream left unchanged) and
    a ``keep_attention`` switch that reaches both."""

    same_spatial_size = False  # attention is global: the streams' grids need not match

    def __init__(self, rgb_channels: int, flow_channels: int, directions: str = "both", *, cross: bool,
                 inner_channels: int | None = None, scale: float | None = None, pool: bool = True,
                 keep_attention: bool = False, position_frequencies: int = 0):
        super().__init__(rgb_channels, flow_channels)
        if directions not in DIRECTIONS:
            raise ValueError(f"{type(self).__name__}: directions must be one of {DIRECTIONS}, got {directions!r}")
        self.directions = directions
        common = dict(inner_channels=inner_channels, scale=scale, pool=pool, keep_attention=keep_attention,
                      position_frequencies=position_frequencies)
        self.rgb_attention = (CrossModalityAttention(rgb_channels, flow_channels if cross else rgb_channels, **common)
                              if directions in ("both", "rgb") else None)
        self.flow_attention = (CrossModalityAttention(flow_channels, rgb_channels if cross else flow_channels, **common)
                               if directions in ("both", "flow") else None)

    @property
    def keep_attention(self) -> bool:
        return any(a.keep_attention for a in (self.rgb_attention, self.flow_attention) if a is not None)

    @keep_attention.setter
    def keep_attention(self, value: bool) -> None:
        for a in (self.rgb_attention, self.flow_attention):
            if a is not None:
                a.keep_attention = bool(value)

    def branch_modules(self, branch: str) -> list[nn.Module]:
        """Each attention unit belongs to the branch it writes into: ``rgb_attention`` (RGB queries)
        to the RGB branch, ``flow_attention`` to the flow branch (Fig. 2: n blocks "in each branch";
        §4.3 freezes "all the layers in the Flow branch, including CMA blocks of the Flow branch")."""
        super().branch_modules(branch)  # validates the name
        unit = self.rgb_attention if branch == "rgb" else self.flow_attention
        return [unit] if unit is not None else []

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, directions={self.directions!r}"


@register_fusion("cma")
class CMABlock(_AttentionFusion):
    """CMA block (§3.2, Fig. 1-2): each stream attends over the other stream's positions.

    ``fuse(rgb, flow) -> (rgb + BN(W_out CMA(Q_rgb, K_flow, V_flow)), flow + BN(W_out' CMA(Q_flow,
    K_rgb, V_rgb)))`` (Eq. 1, 5), the two directions with separate weights (Fig. 2 puts CMA blocks
    in *each* branch) and both computed from the block's inputs.

    ``directions``: ``"both"`` (default), ``"rgb"`` (only rgb <- flow, Fig. 1; flow returned as the
    same tensor) or ``"flow"`` (only flow <- rgb; rgb returned as is, so ``fuses_streams`` is False).
    The streams may have different channels (each direction's d_k is half its target's channels)
    and different spatial sizes. Other keyword arguments go to :class:`CrossModalityAttention`.
    Identity at init: both outputs equal the inputs exactly until BN's gamma moves off 0.
    """

    def __init__(self, rgb_channels: int, flow_channels: int, directions: str = "both", **kwargs):
        super().__init__(rgb_channels, flow_channels, directions, cross=True, **kwargs)
        self.fuses_streams = directions != "flow"  # the RGB output mixes in flow unless only flow is updated

    def fuse(self, rgb, flow):
        new_rgb = rgb if self.rgb_attention is None else self.rgb_attention(rgb, flow)
        new_flow = flow if self.flow_attention is None else self.flow_attention(flow, rgb)
        return new_rgb, new_flow


@register_fusion("nonlocal")
class NonLocalBlock(_AttentionFusion):
    """Non-local block (Wang et al. 2018, embedded Gaussian), the same-modality case of CMA (§3.1):
    each stream attends over its own positions, rgb <- rgb and flow <- flow, with the same
    :class:`CrossModalityAttention` class (target = source), separate weights per stream.

    It never mixes the streams (``fuses_streams = False``). ``directions`` picks the streams that
    get a block (``"both"``, ``"rgb"``, ``"flow"``); the other is returned unchanged. Note the
    default scale is CMA's Eq. 1 (1/sqrt(d_k)); ``scale=1.0`` gives Wang et al.'s unscaled softmax.
    """

    fuses_streams = False

    def __init__(self, rgb_channels: int, flow_channels: int, directions: str = "both", **kwargs):
        super().__init__(rgb_channels, flow_channels, directions, cross=False, **kwargs)

    def fuse(self, rgb, flow):
        new_rgb = rgb if self.rgb_attention is None else self.rgb_attention(rgb, rgb)
        new_flow = flow if self.flow_attention is None else self.flow_attention(flow, flow)
        return new_rgb, new_flow


# ---- the network: where the blocks go (§4.2) and what the -R prediction costs (Table 2) ----------
def cma_positions(backbone: StagedBackbone) -> list[str]:
    """Where Chi et al. insert CMA blocks (§4.2): "5 CMA blocks in res_3 and res_4 to every other
    residual block" -- for a ResNet, children 1, 3 of stage2 (res_3) and 1, 3, 5 of stage3 (res_4) in
    ResNet-50. For other staged backbones the same rule: every other child (the second, fourth, ...)
    of the two stages before the last."""
    positions = []
    for stage in backbone.stage_names[-3:-1]:
        n = len(list(backbone.stages[stage].children()))
        positions += [str(Position(stage, i)) for i in range(1, n, 2)]
    return positions


def cma(num_classes: int, positions: Sequence[PositionLike] | None = None, fusion: str | Sequence[str] = "cma",
        rgb_weight: float = 5 / 6, fusion_options: dict | Sequence[dict] | None = None, **network) -> TwoStreamNet:
    """Cross-modality attention network: ``fusion`` (``cma``, or ``nonlocal`` for the same-modality
    case) after each of ``positions`` (default :func:`cma_positions`, the paper's preset). Outputs
    ``cma-R``, ``-F`` and ``-S`` = w p_R + (1 - w) p_F, with the paper's 5:1 weighting for a model
    whose RGB branch was trained last (``rgb_weight``).

    A sequence of blocks is applied in turn at each position (a :class:`FusionChain`), with one
    ``fusion_options`` dict per block: Table 4's "CMA + non-local" is ``fusion=("nonlocal", "cma")``,
    ``fusion_options=({"directions": "rgb"}, {})`` (non-local blocks in the RGB branch only, each
    followed by a CMA block)."""
    probe = probe_backbone(**network)
    positions = list(positions) if positions is not None else cma_positions(probe)
    names = [fusion] if isinstance(fusion, str) else list(fusion)
    options = [fusion_options or {}] if isinstance(fusion_options, dict) or fusion_options is None else list(fusion_options)
    if len(options) != len(names):
        raise ValueError(f"cma: {len(names)} blocks {names} but {len(options)} fusion_options; give one dict per block")

    def build(position: PositionLike):
        c = channels_at(probe, position)
        chain = [build_fusion(n, rgb_channels=c, flow_channels=c, **o) for n, o in zip(names, options)]
        return chain[0] if len(chain) == 1 else FusionChain(chain)

    network.setdefault("method", "cma")  # the non-local method names its outputs after itself
    return TwoStreamNet(num_classes, fusion_blocks={p: build(p) for p in positions}, keep_flow_tower=True,
                        rgb_weight=rgb_weight, **network)


def nonlocal_network(num_classes: int, positions: Sequence[PositionLike] | None = None, directions: str = "both",
                     rgb_weight: float = 0.5, **network) -> TwoStreamNet:
    """Non-local blocks (Wang et al. 2018) at CMA's positions (:func:`cma_positions`) in each tower
    (``directions="rgb"``: the RGB tower only, as Chi et al. Table 4 do), towers trained separately;
    outputs ``nonlocal-R``, ``-F``, ``-S``. ``-S`` weights the two towers equally (``rgb_weight=0.5``):
    §5.2 fuses separately trained two-stream models with equal weights; the 5:1 weighting belongs to
    the ``cma`` network, whose RGB branch is trained last. (Notebook 06's committed non-local number
    was made with 5/6 and passes it explicitly.)"""
    return cma(num_classes, positions=positions, fusion="nonlocal", fusion_options={"directions": directions},
               rgb_weight=rgb_weight, method="nonlocal", **network)


def rgb_prediction_parameters(model: TwoStreamNet) -> int:
    """Parameters the ``-R`` prediction of a CMA-style network depends on (Chi et al. Table 2 counts
    them relative to one ResNet-50): the RGB tower and classifier, every RGB-side attention unit, the
    flow-side units before the last fusion point (they shape the flow features read later), and the
    flow tower up to the last fusion point."""
    positions = order_positions((Position.from_key(k) for k in model.fusion_blocks), model.rgb_tower.stage_names)
    if not positions:
        raise ValueError("the model has no fusion blocks: its -R prediction is the RGB tower alone")
    last = positions[-1]
    last_stage = model.rgb_tower.stage_names.index(last.stage)
    last_child = last.child if last.child is not None else 10**6

    def count(module: nn.Module | None) -> int:
        return sum(p.numel() for p in module.parameters()) if module is not None else 0

    total = count(model.rgb_tower) + count(model.rgb_head)
    for position in positions:
        block = model.block_at(position)
        total += sum(count(m) for m in block.branch_modules("rgb"))
        if position != last:
            total += sum(count(m) for m in block.branch_modules("flow"))
    for name in model.flow_tower.stage_names[:last_stage]:
        total += count(model.flow_tower.stages[name])
    stage = model.flow_tower.stages[model.flow_tower.stage_names[last_stage]]
    total += sum(count(child) for i, child in enumerate(stage.children()) if i <= last_child)
    return total


register_method(Method(
    name="cma", build=cma, schedule="alternate", pretrain="late", initialise=("flow_tower.", "flow_head."),
    description="Cross-modality attention (Chi et al. 2019): CMA blocks in both branches (every other residual "
                "block of the two stages before the last), the flow branch trained first on its own (Sec. 4.3), "
                "then the branches trained in turn with the other frozen (iterations; RGB first), outputs -R/-F/-S."))
register_method(Method(
    name="nonlocal", build=nonlocal_network, schedule="separate",
    description="Non-local blocks (Wang et al. 2018) at CMA's positions in each tower, the towers trained "
                "separately: CMA's same-modality special case (Chi et al. Table 4)."))


# ---- the paper's tables and the recipes (fusionkit.methods.tables, .training_recipes) ---------------
def _count_relative(row, model) -> float:
    """Chi et al. Table 2's parameter counts, relative to one ResNet-50 (here: one tower and its
    classifier of the backbone run): what the row's prediction depends on."""
    def count(module) -> int:
        return sum(p.numel() for p in module.parameters()) if module is not None else 0

    one = count(model.rgb_tower) + count(model.rgb_head)
    if row.method == "cma":
        return rgb_prediction_parameters(model) / one
    return (one if row.role == "rgb" else count(model)) / one


def _register_tables_and_recipes() -> None:
    from fusionkit.methods.tables import AblationTable, Claim, Column, register_table, rows
    from fusionkit.methods.training_recipes import TEACHING_DATA, Recipe, register_recipe, teaching_config
    from fusionkit.training.trainer import TrainConfig

    kinetics = "Kinetics"
    columns1 = tuple(Column(f"{name} {metric}", role, kinetics, metric.replace("-", ""))
                     for name, role in (("RGB", "rgb"), ("Flow", "flow"), ("two-stream", "fused"))
                     for metric in ("top-1", "top-5"))
    three = {"iterations": 3}  # rows 1-3 are the iterations of one run, read at the end of each
    register_table(AblationTable(
        "chi2019", 1, "Accuracies at each iteration on the Kinetics dataset", columns1,
        rows(columns1,
             ("0", "late", {}, (67.73, 87.94, 55.73, 79.04, 71.21, 89.92),
              dict(note="iter_0: the two branches trained independently (the two-stream baseline)")),
             ("1", "cma", {}, (72.17, 90.70, 55.73, 79.04, 72.62, 91.04), dict(train=three, at_iteration=1)),
             ("2", "cma", {}, (68.45, 88.54, 71.17, 90.12, 71.55, 90.24), dict(train=three, at_iteration=2)),
             ("3", "cma", {}, (72.19, 90.63, 69.81, 89.41, 72.55, 90.82), dict(train=three, at_iteration=3))),
        claims=(
            Claim("After iter_1 the RGB branch exceeds two-stream", ((("1", "Kinetics RGB top-1"), ">",
                                                                        ("0", "Kinetics two-stream top-1")),),
                  "Kinetics RGB top-1", source="§5.3"),
            Claim("After iter_1 the Flow branch keeps the baseline's accuracy (its CMA blocks are still the identity)",
                  (("1", "~", "0"),), "Kinetics Flow top-1", source="§5.3"),
            Claim("Training the Flow branch in iter_2 improves it, and the RGB branch drops",
                  (("2", ">", "1"), (("2", "Kinetics RGB top-1"), "<", ("1", "Kinetics RGB top-1"))),
                  "Kinetics Flow top-1", source="§5.3"),
            Claim("The fusion score is not improved after iter_1 ('the first iteration is almost sufficient')",
                  (("1", ">=", "2"), ("1", ">=", "3")), "Kinetics two-stream top-1", source="§5.3"),
        ),
        recipe_method="cma",
        note="The -S output of an iteration weights the branches 5:1 towards the branch just trained (§5.2); top-5 "
             "is not measured on the 4-class puzzles."))

    columns2 = (Column("top-1", None, kinetics), Column("top-5", None, kinetics, "top5"))
    register_table(AblationTable(
        "chi2019", 2, "CMA model vs two-stream in terms of parameter number and accuracy (parameters relative to the "
                      "ResNet50 baseline)", columns2,
        rows(columns2,
             ("ResNet50-R", "late", {}, (67.73, 87.94), dict(role="rgb", parameters=1.0)),
             ("two-stream", "late", {}, (71.21, 89.92), dict(role="fused", parameters=2.0)),
             ("CMA_iter1-R", "cma", {}, (72.17, 90.70),
              dict(role="rgb", parameters=1.8,
                   note="what the -R prediction depends on (rgb_prediction_parameters): 1.87x for ResNet-50 with "
                        "400 classes, the paper's 1.8x"))),
        claims=(Claim("CMA_iter1-R is more accurate than two-stream, with fewer parameters",
                      (("CMA_iter1-R", ">", "two-stream"),), "Kinetics top-1", source="§5.4"),),
        recipe_method="cma", parameter_unit="x one tower", count_parameters=_count_relative,
        paper_network={"num_classes": 400, "backbone": "resnet50", "new_length": 5},
        note="Parameter counts as the paper's: ResNet-50 towers on Kinetics' 400 classes (paper_network)."))

    columns4 = (Column("top-1", None, kinetics), Column("top-5", None, kinetics, "top5"))
    nl_rgb = {"fusion": ("nonlocal", "cma"), "fusion_options": ({"directions": "rgb"}, {})}
    both = {"directions": "both", "rgb_weight": 0.5}
    register_table(AblationTable(
        "chi2019", 4, "Comparisons with non-local networks on Kinetics (model / non-local / modality)", columns4,
        rows(columns4,
             ("ResNet50 / - / RGB", "late", {}, (67.73, 87.94), dict(role="rgb")),
             ("ResNet50 / - / Flow", "late", {}, (55.73, 79.04), dict(role="flow")),
             ("ResNet50 / - / RGB + Flow", "late", {}, (71.21, 89.92), dict(role="fused")),
             ("ResNet50 / Yes / RGB", "nonlocal", both, (68.74, 88.43),
              dict(role="rgb", note="five non-local blocks at CMA's positions in each tower, the towers trained "
                                    "separately, fused with equal weights")),
             ("ResNet50 / Yes / Flow", "nonlocal", both, (56.66, 80.11), dict(role="flow")),
             ("ResNet50 / Yes / RGB + Flow", "nonlocal", both, (71.67, 89.87), dict(role="fused")),
             ("CMA_iter1-R / - / RGB + Flow", "cma", {}, (72.17, 90.70), dict(role="rgb")),
             ("CMA_iter1-S / - / RGB + Flow", "cma", {}, (72.62, 91.04), dict(role="fused")),
             ("CMA_iter1-R / Yes / RGB + Flow", "cma", nl_rgb, (72.27, 90.76),
              dict(role="rgb", note="a CMA block just behind each non-local block; non-local blocks in the RGB branch "
                                    "only, so the Flow branch is the plain ResNet50's (§5.5)")),
             ("CMA_iter1-S / Yes / RGB + Flow", "cma", nl_rgb, (72.60, 91.01), dict(role="fused"))),
        claims=(
            Claim("Non-local blocks improve top-1 by about 1% in both modalities",
                  (("ResNet50 / Yes / RGB", ">", "ResNet50 / - / RGB"), ("ResNet50 / Yes / Flow", ">", "ResNet50 / - / Flow")),
                  "Kinetics top-1", source="§5.5"),
            Claim("Even CMA's RGB branch alone beats the fusion of ResNet50 with non-local blocks",
                  (("CMA_iter1-R / - / RGB + Flow", ">", "ResNet50 / Yes / RGB + Flow"),), "Kinetics top-1",
                  source="§5.5"),
            Claim("CMA beats two-stream", (("CMA_iter1-S / - / RGB + Flow", ">", "ResNet50 / - / RGB + Flow"),),
                  "Kinetics top-1", source="Table 4"),
            Claim("Non-local blocks seem unnecessary with CMA blocks (within 0.5 points)",
                  (("CMA_iter1-R / Yes / RGB + Flow", "~", "CMA_iter1-R / - / RGB + Flow"),
                   ("CMA_iter1-S / Yes / RGB + Flow", "~", "CMA_iter1-S / - / RGB + Flow")),
                  "Kinetics top-1", tolerance=0.5, source="§5.5"),
        ),
        recipe_method="cma",
        note="Rows sharing a model (the -R and -S rows of one CMA network; the three modalities of one two-stream "
             "network) are read from one run."))

    columns5 = (Column("RGB", "rgb", kinetics), Column("Flow", "flow", kinetics), Column("two-stream", "fused", kinetics))
    no_p3d = dict(buildable=False, reason="P3D ResNet-152 is not among fusionkit's backbones; the 3D-CMA structure "
                                          "(one CMA block after the last res4 block, training it and what follows) "
                                          "is cma(positions=['stage3']) with finetune='above_fusion' on a 3D backbone "
                                          "(r2plus1d_18), the clip's frames as segments")
    register_table(AblationTable(
        "chi2019", 5, "Performance of P3D and 3D-CMA models on Kinetics when varying the count of input frames "
                      "(ResNet-152, 3D CMA blocks)", columns5,
        rows(columns5,
             ("P3D / 12 frames", None, {}, (70.98, 63.80, 73.91), no_p3d),
             ("P3D / 16 frames", None, {}, (71.50, 66.20, 74.62), no_p3d),
             ("CMA_iter1 / 12 frames", None, {"positions": ["stage3"]}, (74.41, 63.80, 75.22), no_p3d),
             ("CMA_iter1 / 16 frames", None, {"positions": ["stage3"]}, (74.86, 66.20, 75.98), no_p3d)),
        claims=(Claim("The 3D CMA block improves P3D's two-stream fusion",
                      (("CMA_iter1 / 12 frames", ">", "P3D / 12 frames"), ("CMA_iter1 / 16 frames", ">", "P3D / 16 frames")),
                      "Kinetics two-stream", source="§5.6"),),
        recipe_method="cma"))

    columns6 = (Column("top-1", None, "UCF101"),)
    classifier = {"finetune": "classifier"}
    transfer = ("the paper fine-tunes only the last fc layer of a model trained on Kinetics, on UCF-101 (§5.7). With "
                "one dataset here, the network starts from the separately trained streams (every matching layer "
                "copied) and only the last fc layer of each classifier trains (finetune='classifier')")
    register_table(AblationTable(
        "chi2019", 6, "Comparison with state-of-the-art on UCF-101: the paper's own rows, transfer learning from "
                      "Kinetics by fine-tuning only the last fc layer (§5.7)", columns6,
        rows(columns6,
             ("ResNet50-R", "late", classifier, (90.9,), dict(role="rgb", note=transfer)),
             ("ResNet50-F", "late", classifier, (92.4,), dict(role="flow")),
             ("ResNet50-S", "late", classifier, (95.5,), dict(role="fused")),
             ("CMA_iter_1-R", "cma", classifier, (95.3,),
              dict(role="rgb", note=transfer + "; the CMA blocks keep their identity init, so on one dataset this row "
                                               "is the streams' with new classifiers. The paper's transfer is "
                                               "run_method('cma', <UCF-101>, ..., init_from=<a CMA model trained on "
                                               "Kinetics>, finetune='classifier')")),
             ("CMA_iter_1-S", "cma", classifier, (96.5,), dict(role="fused"))),
        claims=(Claim("After transfer, CMA_iter_1-S beats the two-stream ResNet50-S, and CMA_iter_1-R ResNet50-R",
                      (("CMA_iter_1-S", ">", "ResNet50-S"), ("CMA_iter_1-R", ">", "ResNet50-R")), "UCF101 top-1",
                      source="Table 6, §5.7"),),
        recipe_method="cma",
        note="Only the paper's own rows (the first set of Table 6 is other papers'). -S weights the branches 5:1 "
             "towards RGB, as CMA_iter_1-S; the two-stream -S weights them equally."))

    streams = teaching_config(20)
    teaching_notes = {"epochs": "20 for the separately trained streams, 20 per CMA iteration (the paper: 30)",
                      "position_frequencies": "0, as published: notebook 06's positional terms are an option of "
                                              "ours (fusion_options={'position_frequencies': 3}), not the paper's"}
    register_recipe(Recipe(
        "cma", "teaching", teaching_config(20, iterations=1), pretrain=streams, finetune="all", model={"dropout": 0.3},
        data=dict(TEACHING_DATA), source="notebooks/06_cma.ipynb", notes=teaching_notes))
    register_recipe(Recipe(
        "nonlocal", "teaching", streams, model={"dropout": 0.3}, data=dict(TEACHING_DATA),
        source="notebooks/06_cma.ipynb", notes={"epochs": "20, as the streams CMA starts from"}))
    sgd = dict(batch_size=128, optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=5e-4, lr_schedule="plateau",
               lr_patience=3, sync_batchnorm=True)
    data = {"segments": 3, "test_segments": 25, "new_length": 5, "input_size": 224, "ten_crop": True,
            "sampling": "3 segments (§4.4); the RGB frame is the first of its stack of 5 flow fields, spatially "
                        "aligned; random flips, crops and scale jittering",
            "test_protocol": "25 equally spaced segments, ten crops (4 corners and the centre, flipped), the frame-level "
                             "scores fused by weighted sum (5:1 towards the branch trained last, §5.2), then averaged"}
    paper_notes = {"optimizer": "mini-batch SGD, batch 128 (§4.4); momentum not stated: chose 0.9",
                   "lr": "0.01, divided by 10 'when the accuracy is stuck in some plateau', reset at the start of each "
                         "iteration (§4.4): plateau, patience not stated, chose 3 epochs",
                   "epochs": "30 per iteration (§4.3); one iteration ('the first iteration is almost sufficient', §5.3)",
                   "frozen": "the flow branch trained first on its own; then in iter_1, 3, ... the RGB branch with the "
                             "whole flow branch (its CMA blocks too) frozen, in iter_2, 4, ... the reverse (§4.3)",
                   "batchnorm": "BN enabled, synchronized across GPUs (§4.4): sync_batchnorm under torchrun",
                   "dropout": "0.7, weight decay 5e-4 (§4.4)",
                   "backbone": "ResNet-50 from ImageNet: --backbone resnet50 --pretrained",
                   "streams": "how the flow branch is first trained on Kinetics is not stated: chose the same SGD "
                              "settings, 30 epochs"}
    register_recipe(Recipe(
        "cma", "paper", TrainConfig(epochs=30, iterations=1, **sgd), pretrain=TrainConfig(epochs=30, **sgd),
        finetune="all", model={"dropout": 0.7}, data=data, source="Chi et al. 2019 §4.3-4.4, §5.2", notes=paper_notes))
    register_recipe(Recipe(
        "nonlocal", "paper", TrainConfig(epochs=30, **sgd), model={"dropout": 0.7, "rgb_weight": 0.5},
        data={**data, "test_protocol": "as CMA's, the two streams fused with equal weights (§5.2)"},
        source="Chi et al. 2019 §5.5 (the settings of §4.4)",
        notes={**{k: v for k, v in paper_notes.items() if k not in ("frozen", "epochs", "streams")},
               "epochs": "not stated for the non-local baseline: chose CMA's 30",
               "blocks": "five non-local blocks in res_3 and res_4 at CMA's positions, following Wang et al. (§5.5)"}))


_register_tables_and_recipes()
