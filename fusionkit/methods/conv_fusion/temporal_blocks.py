"""Temporal fusion (Feichtenhofer, Pinz & Zisserman, CVPR 2016, §3.3, Fig. 3, and §3.4-3.5).

The two-stream network runs its towers on T snippets folded into the batch and, for temporal
fusion, unfolds the last feature maps into ``[B, C, T, H, W]`` (PyTorch's Conv3d layout: channels,
then time, then space; the paper writes ``x in R^{H x W x T x D}``). The blocks here take and
return such 5D maps; the network then averages each stream over (T, H, W) and classifies it.

Three ways of combining the maps ``x_t`` over time (Fig. 3):

* ``pool2d``  -- :class:`TemporalPool2D`, Fig. 3(a): max-pool each frame in x, y only. Time is
  ignored: the global average that follows just averages the frames, so the result is the same
  for any order of the frames (it cannot solve the ``order`` puzzle).
* ``pool3d``  -- :class:`TemporalPool3D`, Fig. 3(b): max-pool a T' x H' x W' cube per channel
  ("if three temporal samples are pooled, then a 3x3x3 max pooling could be used across the three
  stacked corresponding channels. Note, there is no pooling *across* different channels").
* ``conv3d_pool3d`` -- :class:`Conv3DFusion`, Fig. 3(c) and Fig. 4: concatenate the two streams,
  convolve with a 3D filter bank (Eq. 6, ``y = x_t * f + b``), then 3D-pool. This is the paper's
  proposed spatiotemporal architecture (§3.4): fused *into* the appearance stream, with the motion
  stream kept (not truncated) and 3D-pooled too.

None of these blocks keeps the feature shape (pooling shrinks T, H and W), so all set
``keeps_shape = False``; the base class still checks channels, batch sizes and that both streams
share T, H and W.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fusionkit.fusion import FusionBlock, register_fusion

Size3 = int | tuple[int, int, int]


def _triple(value: Size3, what: str) -> tuple[int, int, int]:
    out = (value,) * 3 if isinstance(value, int) else tuple(int(v) for v in value)
    if len(out) != 3:
        raise ValueError(f"{what} must be an int or a (T, H, W) triple, got {value!r}")
    return out  # type: ignore[return-value]


def _require_5d(name: str, rgb: torch.Tensor, flow: torch.Tensor) -> None:
    for stream, x in (("rgb", rgb), ("flow", flow)):
        if x.dim() != 5:
            raise ValueError(f"{name} is a temporal fusion block: the {stream} feature map must be "
                             f"[N, C, T, H, W] (unfold the T segments out of the batch first), "
                             f"got shape {tuple(x.shape)}")


def gaussian_kernel3d(kernel_size: Size3 = 3, sigma: float = 1.0) -> torch.Tensor:
    """The ``[kT, kH, kW]`` Gaussian of §3.5 ("a Gaussian of size 3x3x3 and sigma = 1"), centred on
    the middle tap and **normalised to sum 1** (the paper does not say; normalising makes the
    initialised 3D conv fusion a pure sum of the streams on maps constant in x, y, t, like the
    2D conv fusion's identity initialisation, Eq. 4).
    """
    sizes = _triple(kernel_size, "kernel_size")
    if any(k % 2 == 0 or k < 1 for k in sizes):
        raise ValueError(f"the Gaussian needs odd kernel sizes (a centre tap), got {sizes}")
    axes = [torch.arange(k, dtype=torch.float64) - (k - 1) / 2 for k in sizes]
    t, y, x = torch.meshgrid(*axes, indexing="ij")
    g = torch.exp(-(t**2 + y**2 + x**2) / (2 * sigma**2))
    return (g / g.sum()).float()


class _Pool3DArgs:
    """The 3D max-pooling settings shared by :class:`TemporalPool3D` and :class:`Conv3DFusion`."""

    def _set_pool(self, kernel_size: Size3, stride: Size3 | None, padding: Size3) -> None:
        self.pool_kernel_size = _triple(kernel_size, "pool kernel_size")
        self.pool_stride = self.pool_kernel_size if stride is None else _triple(stride, "pool stride")
        self.pool_padding = _triple(padding, "pool padding")

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool3d(x, self.pool_kernel_size, self.pool_stride, self.pool_padding)


@register_fusion("pool2d")
class TemporalPool2D(FusionBlock):
    """2D pooling (§3.3, Fig. 3(a)): max-pool each frame over x, y only; time is ignored.

    Applied to both streams independently (no fusion across streams): ``[N, C, T, H, W]`` ->
    ``[N, C, T, H', W']`` with a ``(1, k, k)`` max-pooling window, so frame t of the output depends
    on frame t of the input only. Averaging the result over T (what the network does next) is
    the order-free "averaging the network predictions over time" of the original two-stream net.

    Args:
        rgb_channels / flow_channels: channels of the two maps (they may differ).
        kernel_size: spatial window k (default 2, i.e. 2x2).
        stride: spatial stride (default: ``kernel_size``).
        padding: spatial padding (default 0).
    """

    keeps_shape = False
    fuses_streams = False  # each stream pooled on its own

    def __init__(self, rgb_channels: int, flow_channels: int, kernel_size: int = 2,
                 stride: int | None = None, padding: int = 0):
        super().__init__(rgb_channels, flow_channels)
        self.kernel_size = int(kernel_size)
        self.stride = self.kernel_size if stride is None else int(stride)
        self.padding = int(padding)

    def fuse(self, rgb, flow):
        _require_5d(type(self).__name__, rgb, flow)
        k, s = (1, self.kernel_size, self.kernel_size), (1, self.stride, self.stride)
        p = (0, self.padding, self.padding)  # a (1, k, k) window: frame t only ever sees frame t
        return F.max_pool3d(rgb, k, s, p), F.max_pool3d(flow, k, s, p)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, kernel_size=(1, {self.kernel_size}, {self.kernel_size}), "
                f"stride=(1, {self.stride}, {self.stride}), padding=(0, {self.padding}, {self.padding})")


@register_fusion("pool3d")
class TemporalPool3D(_Pool3DArgs, FusionBlock):
    """3D pooling (§3.3, Fig. 3(b)): max-pool a T' x H' x W' cube, channel by channel.

    Applied to both streams independently; there is no pooling across channels (nor across
    streams). The paper's example: three temporal samples pooled by a 3x3x3 max pooling. The
    defaults (kernel 3x3x3, stride 2, padding 1, as in ``max_pool3d``) map
    ``[N, C, T, H, W]`` -> ``[N, C, floor((T-1)/2)+1, floor((H-1)/2)+1, floor((W-1)/2)+1]``
    (T = 3 -> 2, T = 8 -> 4). Unlike :class:`TemporalPool2D`, neighbouring frames are mixed.

    Args:
        rgb_channels / flow_channels: channels of the two maps (they may differ).
        kernel_size, stride, padding: int or (T, H, W) triple, as for ``F.max_pool3d``
            (``stride=None`` means ``kernel_size``).
    """

    keeps_shape = False
    fuses_streams = False  # each stream pooled on its own

    def __init__(self, rgb_channels: int, flow_channels: int, kernel_size: Size3 = (3, 3, 3),
                 stride: Size3 | None = (2, 2, 2), padding: Size3 = (1, 1, 1)):
        super().__init__(rgb_channels, flow_channels)
        self._set_pool(kernel_size, stride, padding)

    def fuse(self, rgb, flow):
        _require_5d(type(self).__name__, rgb, flow)
        return self._pool(rgb), self._pool(flow)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, kernel_size={self.pool_kernel_size}, stride={self.pool_stride}, "
                f"padding={self.pool_padding}")


@register_fusion("conv3d_pool3d")
class Conv3DFusion(_Pool3DArgs, FusionBlock):
    """3D conv fusion + 3D pooling (§3.3 Eq. 6, Fig. 3(c); the architecture of §3.4, Fig. 4).

    ``x = cat([rgb, flow], dim=1)`` (rgb channels first, then flow: ``D = rgb_channels +
    flow_channels``), then ``y = x * f + b`` (Eq. 6) with a ``Conv3d(D, D', kernel, padding=kernel//2)``
    that keeps T, H, W, then 3D max pooling as in :class:`TemporalPool3D`.

    Returns ``(pool3d(y), pool3d(flow))``: the fused map *replaces the appearance stream*, turning it
    into the spatiotemporal stream, and the motion stream is **not truncated** -- it is 3D-pooled
    too, as §3.4 does ("we do not truncate the temporal stream and also perform 3D Pooling in the
    temporal network"). Shapes: rgb ``[N, D', T', H', W']``, flow ``[N, flow_channels, T', H', W']``.

    Initialisation (``init="paper"``, §3.5): the filter bank stacks two identity matrices, the
    temporal (motion) one weighted ``motion_weight`` = 3 higher ("the activations of the temporal
    ConvNet at the last convolutional layer are roughly 3 times lower"), times a 3x3x3 Gaussian
    ``G`` with sigma = 1 for the spatiotemporal part::

        f[o, i, t, y, x]          = I[o, i] * G[t, y, x]                  (rgb channel i)
        f[o, rgb_channels + j, ...] = motion_weight * I'[o, j] * G[t, y, x]   (flow channel j)
        b = 0

    with ``G`` normalised to sum 1 (see :func:`gaussian_kernel3d`), so on maps constant in x, y, t
    (away from the zero-padded borders) output channel o is ``rgb[o] + 3 * flow[o]``. When
    ``D'`` differs from a stream's channels, "identity" is the rectangular ``torch.eye(D', C)``:
    output channel o takes input channel o for ``o < min(D', C)``; extra input channels are
    ignored and extra output channels start at zero (they still receive gradients). The paper
    maps 1024 = 512 + 512 channels to D' = 512, i.e. two square identities.
    ``init="random"`` keeps PyTorch's default Conv3d initialisation.

    Args:
        rgb_channels / flow_channels: channels of the two maps.
        out_channels: D', the fused map's channels (default ``rgb_channels``).
        kernel_size: the conv's (T'', H'', W''), odd (default 3x3x3).
        pool_kernel_size, pool_stride, pool_padding: the 3D max pooling (defaults as :class:`TemporalPool3D`).
        motion_weight: factor on the flow identity at init (default 3.0).
        sigma: the Gaussian's sigma at init (default 1.0).
        init: ``"paper"`` or ``"random"``.
    """

    keeps_shape = False

    def __init__(self, rgb_channels: int, flow_channels: int, out_channels: int | None = None,
                 kernel_size: Size3 = 3, pool_kernel_size: Size3 = (3, 3, 3),
                 pool_stride: Size3 | None = (2, 2, 2), pool_padding: Size3 = (1, 1, 1),
                 motion_weight: float = 3.0, sigma: float = 1.0, init: str = "paper"):
        super().__init__(rgb_channels, flow_channels)
        if init not in ("paper", "random"):
            raise ValueError(f"init must be 'paper' or 'random', got {init!r}")
        kernel = _triple(kernel_size, "kernel_size")
        if any(k % 2 == 0 or k < 1 for k in kernel):
            raise ValueError(f"kernel_size must be odd (padding k//2 keeps T, H, W), got {kernel}")
        self.init, self.motion_weight, self.sigma = init, float(motion_weight), float(sigma)
        d_out = rgb_channels if out_channels is None else int(out_channels)
        self.conv = nn.Conv3d(rgb_channels + flow_channels, d_out, kernel, padding=tuple(k // 2 for k in kernel),
                              bias=True)
        self._set_pool(pool_kernel_size, pool_stride, pool_padding)
        self.reset_parameters()

    @property
    def out_channels(self) -> int:
        return self.conv.out_channels

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """(Re-)initialise the filter bank as ``self.init`` says (§3.5 for ``"paper"``)."""
        self.conv.reset_parameters()
        if self.init == "random":
            return
        w, d_out, c_rgb = self.conv.weight, self.conv.out_channels, self.rgb_channels
        g = gaussian_kernel3d(self.conv.kernel_size, self.sigma).to(w)
        eye_rgb = torch.eye(d_out, c_rgb, dtype=w.dtype, device=w.device)
        eye_flow = torch.eye(d_out, self.flow_channels, dtype=w.dtype, device=w.device) * self.motion_weight
        w.copy_(torch.cat([eye_rgb, eye_flow], dim=1)[:, :, None, None, None] * g)
        self.conv.bias.zero_()

    def fuse(self, rgb, flow):
        _require_5d(type(self).__name__, rgb, flow)
        fused = self.conv(torch.cat([rgb, flow], dim=1))  # Eq. 6: y = x_t * f + b
        return self._pool(fused), self._pool(flow)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, out_channels={self.out_channels}, init={self.init!r}, "
                f"motion_weight={self.motion_weight}, sigma={self.sigma}, pool_kernel_size={self.pool_kernel_size}, "
                f"pool_stride={self.pool_stride}, pool_padding={self.pool_padding}")
