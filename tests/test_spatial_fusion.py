"""Spatial fusion functions (Feichtenhofer et al. 2016, §3.1 Eq. 1-5) against direct computations.

The references below are written independently of fusionkit: explicit loops / indexing over the
equations as the paper writes them (1-based indices translated by hand), in float64.
"""
from __future__ import annotations

import itertools
import math

import pytest
import torch

import fusionkit.methods.conv_fusion.spatial_blocks  # noqa: F401  (registers the blocks)
from fusionkit.fusion import FUSIONS, build_fusion
from fusionkit.methods.conv_fusion.spatial_blocks import (BilinearFusion, ConcatFusion, ConvFusion, MaxFusion, SumFusion, interleave_channels)

NAMES = ["sum", "max", "concat", "conv", "bilinear"]
SHAPES = {"2d": (2, 3, 4, 5), "3d": (2, 3, 2, 4, 3)}  # [N, C, H, W] and [N, C, T, H, W]


def _pair(dims: str, rgb_channels: int = 3, flow_channels: int = 3, seed: int = 0, grad: bool = False):
    g = torch.Generator().manual_seed(seed)
    n, _, *space = SHAPES[dims]
    rgb = torch.randn(n, rgb_channels, *space, generator=g, dtype=torch.float64, requires_grad=grad)
    flow = torch.randn(n, flow_channels, *space, generator=g, dtype=torch.float64, requires_grad=grad)
    return rgb, flow


def _locations(x: torch.Tensor):
    """All spatial(-temporal) index tuples of a [N, C, ...] map."""
    return itertools.product(*(range(s) for s in x.shape[2:]))


def _concat_reference(rgb, flow):
    """Eq. 3 with the paper's 1-based d: y_{2d} = x^a_d, y_{2d-1} = x^b_d."""
    D = rgb.shape[1]
    y = torch.empty(rgb.shape[0], 2 * D, *rgb.shape[2:], dtype=rgb.dtype)
    for d in range(1, D + 1):
        y[:, 2 * d - 1] = rgb[:, d - 1]   # 1-based channel 2d     -> 0-based 2d - 1
        y[:, 2 * d - 2] = flow[:, d - 1]  # 1-based channel 2d - 1 -> 0-based 2d - 2
    return y


def _bilinear_reference(rgb, flow):
    """Eq. 5 by a double loop over locations, then signed sqrt and division by the L2 norm."""
    out = []
    for a, b in zip(rgb, flow):
        y = torch.zeros(a.shape[0], b.shape[0], dtype=a.dtype)
        for loc in _locations(rgb):
            xa, xb = a[(slice(None), *loc)], b[(slice(None), *loc)]
            for p in range(a.shape[0]):
                for q in range(b.shape[0]):
                    y[p, q] += xa[p] * xb[q]
        y = y.flatten()
        y = torch.sign(y) * torch.sqrt(torch.abs(y))
        out.append(y / math.sqrt(float((y ** 2).sum())))
    return torch.stack(out)


def _build(name: str, rgb_channels: int = 3, flow_channels: int = 3, **kwargs):
    return build_fusion(name, rgb_channels=rgb_channels, flow_channels=flow_channels, **kwargs).double()


@pytest.mark.parametrize("dims", SHAPES)
@pytest.mark.parametrize("name", NAMES)
def test_against_equation(name, dims):
    rgb, flow = _pair(dims)
    fused, flow_out = _build(name)(rgb, flow)
    if name == "sum":  # Eq. 1, element by element
        expected = torch.empty_like(rgb)
        for n, d in itertools.product(range(rgb.shape[0]), range(rgb.shape[1])):
            for loc in _locations(rgb):
                expected[(n, d, *loc)] = rgb[(n, d, *loc)] + flow[(n, d, *loc)]
    elif name == "max":  # Eq. 2
        expected = torch.where(rgb >= flow, rgb, flow)
    elif name in ("concat", "conv"):  # Eq. 3; conv at identity init is the sum (checked below)
        expected = _concat_reference(rgb, flow) if name == "concat" else rgb + flow
    else:  # Eq. 5
        expected = _bilinear_reference(rgb, flow).view(rgb.shape[0], -1, *[1] * (rgb.dim() - 2))
    assert fused.shape == expected.shape
    torch.testing.assert_close(fused, expected, rtol=1e-9, atol=0 if name != "bilinear" else 1e-12)
    assert flow_out is flow


def test_concat_interleaves_flow_first():
    """0-based channel 2k is flow's channel k and 2k+1 is rgb's channel k (Eq. 3, 1-based 2d-1 / 2d)."""
    rgb = torch.tensor([10.0, 11.0, 12.0]).view(1, 3, 1, 1)
    flow = torch.tensor([20.0, 21.0, 22.0]).view(1, 3, 1, 1)
    fused, _ = ConcatFusion(3, 3)(rgb, flow)
    assert fused.flatten().tolist() == [20.0, 10.0, 21.0, 11.0, 22.0, 12.0]
    assert torch.equal(interleave_channels(rgb, flow), fused)


@pytest.mark.parametrize("dims", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_conv_identity_init_is_exactly_sum(dims, dtype):
    rgb, flow = (t.to(dtype) for t in _pair(dims, 8, 8))
    conv = build_fusion("conv", rgb_channels=8, flow_channels=8, init="identity").to(dtype)
    assert isinstance(conv, ConvFusion)
    fused, _ = conv(rgb, flow)
    summed, _ = SumFusion(8, 8)(rgb, flow)
    assert torch.equal(fused, summed)
    # The 1's sit at the interleaved columns: row k reads column 2k (flow k) and 2k+1 (rgb k).
    expected = torch.zeros(8, 16, dtype=dtype)
    for k in range(8):
        expected[k, 2 * k] = expected[k, 2 * k + 1] = 1
    assert torch.equal(conv.weight.detach(), expected)
    assert torch.equal(conv.bias.detach(), torch.zeros(8, dtype=dtype))


@pytest.mark.parametrize("dims", SHAPES)
def test_conv_weighted_init(dims):
    rgb, flow = _pair(dims, 4, 4)
    fused, _ = _build("conv", 4, 4, init="weighted", rgb_weight=0.25, flow_weight=0.75)(rgb, flow)
    torch.testing.assert_close(fused, 0.25 * rgb + 0.75 * flow, rtol=1e-12, atol=1e-12)
    fused, _ = _build("conv", 4, 4, init="weighted", rgb_weight=2.0, flow_weight=-1.0)(rgb, flow)
    torch.testing.assert_close(fused, 2.0 * rgb - flow, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dims", SHAPES)
def test_conv_random_init_and_eq4(dims):
    """Random init differs from the sum; the block computes Eq. 4 for whatever f and b it holds."""
    torch.manual_seed(0)
    rgb, flow = _pair(dims, 4, 4)
    conv = _build("conv", 4, 4, init="random", out_channels=5)
    fused, _ = conv(rgb, flow)
    assert fused.shape == (rgb.shape[0], 5, *rgb.shape[2:]) and conv.out_channels == 5
    f, b, cat = conv.weight.detach(), conv.bias.detach(), _concat_reference(rgb, flow)
    expected = torch.einsum("oc,nc...->no...", f, cat) + b.view(1, -1, *[1] * (rgb.dim() - 2))
    torch.testing.assert_close(fused, expected, rtol=1e-10, atol=1e-12)
    same_width, _ = _build("conv", 4, 4, init="random")(rgb, flow)
    assert not torch.allclose(same_width, rgb + flow)


@pytest.mark.parametrize("dims", SHAPES)
@pytest.mark.parametrize("name, channels", [("sum", 3), ("max", 3), ("concat", 6), ("conv", 3), ("bilinear", 9)])
def test_shapes_out_channels_and_flow_passthrough(name, channels, dims):
    rgb, flow = _pair(dims)
    flow_before = flow.clone()
    block = _build(name)
    fused, flow_out = block(rgb, flow)
    assert block.out_channels == channels and fused.shape[1] == channels
    if name == "bilinear":
        assert fused.shape == (rgb.shape[0], channels, *[1] * (rgb.dim() - 2))
    else:
        assert fused.shape == (rgb.shape[0], channels, *rgb.shape[2:])
    assert flow_out is flow and torch.equal(flow_out, flow_before)
    assert FUSIONS[name] is type(block) and block.registered_name == name


def test_bilinear_different_channel_counts():
    rgb, flow = _pair("2d", 2, 5)
    block = _build("bilinear", 2, 5)
    fused, _ = block(rgb, flow)
    assert block.out_channels == 10 and fused.shape == (2, 10, 1, 1)
    torch.testing.assert_close(fused.flatten(1), _bilinear_reference(rgb, flow), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("dims", SHAPES)
def test_bilinear_unit_norm_and_safe_gradient_at_zero(dims):
    rgb, flow = _pair(dims, 4, 3, grad=True)
    fused, _ = BilinearFusion(4, 3)(rgb, flow)
    torch.testing.assert_close(fused.flatten(1).norm(dim=1), torch.ones(rgb.shape[0], dtype=rgb.dtype))
    # A channel of zeros makes entries of y exactly 0, where d sqrt(|y|)/dy is infinite.
    rgb0 = rgb.detach().clone()
    rgb0[:, 0] = 0
    rgb0.requires_grad_(True)
    fused, _ = BilinearFusion(4, 3)(rgb0, flow)
    fused.sum().backward()
    assert torch.isfinite(rgb0.grad).all() and torch.isfinite(flow.grad).all()


@pytest.mark.parametrize("name, kwargs", [("sum", {}), ("max", {}), ("concat", {}), ("conv", {}),
                                          ("conv", {"init": "random"})])
def test_mismatched_channels_rejected(name, kwargs):
    with pytest.raises(ValueError, match=r"rgb_channels == flow_channels.*rgb_channels=4 and flow_channels=6"):
        build_fusion(name, rgb_channels=4, flow_channels=6, **kwargs)


def test_conv_argument_errors():
    with pytest.raises(ValueError, match="init must be one of"):
        ConvFusion(4, 4, init="gaussian")
    with pytest.raises(ValueError, match="out_channels=4"):
        ConvFusion(4, 4, out_channels=2, init="identity")
    with pytest.raises(ValueError, match="only by init='weighted'"):
        ConvFusion(4, 4, init="identity", rgb_weight=0.5)
    weighted = ConvFusion(4, 4, init="weighted")
    assert (weighted.rgb_weight, weighted.flow_weight) == (0.25, 0.75)  # the official code's "2sumAB"


@pytest.mark.parametrize("dims", SHAPES)
@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_both_inputs(name, dims):
    rgb, flow = _pair(dims, grad=True)
    fused, _ = _build(name)(rgb, flow)
    weights = torch.randn(fused.shape, generator=torch.Generator().manual_seed(1), dtype=fused.dtype)
    (fused * weights).sum().backward()  # through the fused map only, not the passed-through flow
    assert rgb.grad is not None and flow.grad is not None
    assert rgb.grad.abs().sum() > 0 and flow.grad.abs().sum() > 0
    if name == "max":  # each element's gradient goes to the larger input only (no ties here)
        assert not torch.any(rgb == flow)
        larger = rgb > flow
        upstream = weights
        assert torch.equal(rgb.grad, torch.where(larger, upstream, 0.0))
        assert torch.equal(flow.grad, torch.where(larger, 0.0, upstream))


def test_all_blocks_registered():
    assert {"sum": SumFusion, "max": MaxFusion, "concat": ConcatFusion, "conv": ConvFusion,
            "bilinear": BilinearFusion}.items() <= FUSIONS.items()
