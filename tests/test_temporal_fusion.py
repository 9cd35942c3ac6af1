"""Temporal fusion blocks (Feichtenhofer et al. 2016, §3.3 Fig. 3, Eq. 6; §3.4-3.5 initialisation)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fusionkit.fusion import FUSIONS, build_fusion
from fusionkit.methods.conv_fusion.temporal_blocks import (Conv3DFusion, TemporalPool2D, TemporalPool3D, gaussian_kernel3d)


def _pair(n=2, c_rgb=8, c_flow=8, t=8, h=8, w=8, seed=0, integer=False):
    g = torch.Generator().manual_seed(seed)
    if integer:  # small integers: sums are exact, so "equal" can be tested with torch.equal
        return (torch.randint(-8, 9, (n, c_rgb, t, h, w), generator=g).float(),
                torch.randint(-8, 9, (n, c_flow, t, h, w), generator=g).float())
    return torch.randn(n, c_rgb, t, h, w, generator=g), torch.randn(n, c_flow, t, h, w, generator=g)


def _independent_gaussian():
    """exp(-(t^2 + y^2 + x^2) / 2) on {-1, 0, 1}^3, normalised to sum 1, by plain loops."""
    values = [[[math.exp(-(t * t + y * y + x * x) / 2) for x in (-1, 0, 1)] for y in (-1, 0, 1)] for t in (-1, 0, 1)]
    total = sum(v for plane in values for row in plane for v in row)
    return torch.tensor(values, dtype=torch.float64) / total


# --- the Gaussian and the §3.5 initialisation -----------------------------------------------------

def test_gaussian_is_normalised_symmetric_and_matches_independent_formula():
    g = gaussian_kernel3d(3, sigma=1.0)
    assert g.shape == (3, 3, 3)
    torch.testing.assert_close(g.sum(), torch.tensor(1.0))
    torch.testing.assert_close(g.double(), _independent_gaussian(), rtol=1e-6, atol=1e-7)
    for dim in range(3):
        assert torch.equal(g, g.flip(dim))
    assert torch.equal(g, g.permute(1, 2, 0))  # isotropic in t, y, x
    assert g.argmax() == 13  # the centre tap is the largest
    # centre tap: 1 / (1 + 6 e^-1/2 + 12 e^-1 + 8 e^-3/2)
    expected_centre = 1 / (1 + 6 * math.exp(-0.5) + 12 * math.exp(-1) + 8 * math.exp(-1.5))
    assert g[1, 1, 1].item() == pytest.approx(expected_centre, rel=1e-6)


def test_paper_init_stacks_identities_motion_three_times_higher_times_gaussian():
    block = Conv3DFusion(rgb_channels=8, flow_channels=8)
    w = block.conv.weight
    assert w.shape == (8, 16, 3, 3, 3)
    eye = torch.eye(8)
    g = _independent_gaussian().float()
    torch.testing.assert_close(w[:, :, 1, 1, 1], g[1, 1, 1] * torch.cat([eye, 3 * eye], dim=1))
    for o in range(8):
        torch.testing.assert_close(w[o, o], g)                # rgb identity x G
        torch.testing.assert_close(w[o, 8 + o], 3 * g)        # flow identity x 3 x G
    mask = torch.cat([eye, eye], dim=1).bool()
    assert torch.count_nonzero(w[~mask]) == 0                 # nothing off the two identities
    assert torch.count_nonzero(block.conv.bias) == 0


def test_paper_init_rectangular_identity_when_channels_differ():
    block = Conv3DFusion(rgb_channels=6, flow_channels=4, out_channels=5, motion_weight=3.0)
    w = block.conv.weight
    assert w.shape == (5, 10, 3, 3, 3) and block.out_channels == 5
    centre = gaussian_kernel3d()[1, 1, 1]
    torch.testing.assert_close(w[:, :6, 1, 1, 1], centre * torch.eye(5, 6))
    torch.testing.assert_close(w[:, 6:, 1, 1, 1], 3 * centre * torch.eye(5, 4))
    # output channel 4 has an rgb identity entry but no flow one (flow has only 4 channels)
    assert w[4, 4].sum() > 0 and torch.count_nonzero(w[4, 6:]) == 0
    # fewer outputs than inputs: rgb channel 5 is ignored at init
    assert torch.count_nonzero(w[:, 5]) == 0


def test_random_init_is_not_the_identity_and_bad_init_is_refused():
    w = Conv3DFusion(8, 8, init="random").conv.weight
    assert torch.count_nonzero(w[:, :8, 1, 1, 1] * (1 - torch.eye(8))) > 0
    with pytest.raises(ValueError, match="init"):
        Conv3DFusion(8, 8, init="xavier")
    with pytest.raises(ValueError, match="odd"):
        Conv3DFusion(8, 8, kernel_size=2)


def test_dirac_input_gives_gaussian_of_rgb_plus_three_flow():
    """One non-zero voxel per stream: each output channel is G-weighted rgb + 3 x G-weighted flow."""
    block = Conv3DFusion(4, 4, pool_kernel_size=1, pool_stride=1, pool_padding=0)  # isolate the conv
    rgb, flow = torch.zeros(1, 4, 5, 5, 5), torch.zeros(1, 4, 5, 5, 5)
    rgb[0, 1, 2, 2, 2] = 2.0
    flow[0, 1, 2, 2, 2] = 0.5
    flow[0, 3, 2, 2, 2] = 1.0
    fused, flow_out = block(rgb, flow)
    assert torch.equal(flow_out, flow)  # pooling with a 1x1x1 window leaves the motion stream as is
    g = gaussian_kernel3d()
    expected = torch.zeros(1, 4, 5, 5, 5)
    expected[0, 1, 1:4, 1:4, 1:4] = (2.0 + 3 * 0.5) * g
    expected[0, 3, 1:4, 1:4, 1:4] = 3 * 1.0 * g
    torch.testing.assert_close(fused, expected)


def test_constant_input_hand_computed_sum_at_interior_voxels():
    """G sums to 1, so on constant maps the initialised fusion is rgb + 3 * flow (interior voxels)."""
    block = Conv3DFusion(3, 3, pool_kernel_size=1, pool_stride=1, pool_padding=0)
    xa = torch.tensor([1.0, -2.0, 0.5]).view(1, 3, 1, 1, 1).expand(1, 3, 5, 6, 6)
    xb = torch.tensor([0.25, 1.0, -1.0]).view(1, 3, 1, 1, 1).expand(1, 3, 5, 6, 6)
    fused, _ = block(xa, xb)
    hand = torch.tensor([1.0 + 0.75, -2.0 + 3.0, 0.5 - 3.0])  # xa + 3 xb, channel by channel
    interior = fused[0, :, 1:-1, 1:-1, 1:-1]
    torch.testing.assert_close(interior, hand.view(3, 1, 1, 1).expand_as(interior))
    # at the borders zero padding removes Gaussian mass, so the output is smaller in magnitude
    assert fused[0, 0, 0, 0, 0] < hand[0]


# --- pooling ---------------------------------------------------------------------------------------

def test_pool3d_equals_max_pool3d_on_both_streams():
    rgb, flow = _pair(c_flow=4)
    block = TemporalPool3D(8, 4)
    out_rgb, out_flow = block(rgb, flow)
    torch.testing.assert_close(out_rgb, F.max_pool3d(rgb, 3, 2, 1), rtol=0, atol=0)
    torch.testing.assert_close(out_flow, F.max_pool3d(flow, 3, 2, 1), rtol=0, atol=0)
    assert out_rgb.shape == (2, 8, 4, 4, 4) and out_flow.shape == (2, 4, 4, 4, 4)
    custom = TemporalPool3D(8, 4, kernel_size=(2, 2, 2), stride=None, padding=0)
    torch.testing.assert_close(custom(rgb, flow)[0], F.max_pool3d(rgb, 2), rtol=0, atol=0)


def test_pool2d_equals_per_frame_max_pool2d_on_both_streams():
    rgb, flow = _pair()
    out_rgb, out_flow = TemporalPool2D(8, 8)(rgb, flow)
    for x, out in ((rgb, out_rgb), (flow, out_flow)):
        assert out.shape == (2, 8, 8, 4, 4)
        for t in range(x.shape[2]):
            torch.testing.assert_close(out[:, :, t], F.max_pool2d(x[:, :, t], 2), rtol=0, atol=0)


def test_pool2d_never_mixes_frames_but_pool3d_does():
    """Fig. 3(a) vs 3(b): a change in frame t moves only output frame t under 2D pooling, and the
    neighbouring output frames too under 3D pooling."""
    rgb, flow = _pair(t=6)
    changed = rgb.clone()
    changed[:, :, 3] += 10.0  # a large change, so it wins every max it takes part in
    p2d = TemporalPool2D(8, 8)
    a, b = p2d(rgb, flow)[0], p2d(changed, flow)[0]
    for t in range(6):
        assert torch.equal(a[:, :, t], b[:, :, t]) == (t != 3), t

    p3d = TemporalPool3D(8, 8, stride=(1, 2, 2))  # stride 1 in time: output frame t is centred on input t
    a, b = p3d(rgb, flow)[0], p3d(changed, flow)[0]
    changed_frames = [t for t in range(6) if not torch.equal(a[:, :, t], b[:, :, t])]
    assert changed_frames == [2, 3, 4]
    # the default stride 2: input frame 3 lies in the windows of output frames 1 (1..3) and 2 (3..5)
    a, b = TemporalPool3D(8, 8)(rgb, flow)[0], TemporalPool3D(8, 8)(changed, flow)[0]
    assert [t for t in range(3) if not torch.equal(a[:, :, t], b[:, :, t])] == [1, 2]


def test_order_sensitivity_conv3d_vs_order_free_pool2d():
    """The `order` puzzle: the same frames in reversed order. 2D pooling + a global average over
    (T, H, W) cannot tell them apart; 3D conv fusion + 3D pooling can."""
    rgb, flow = _pair(t=6, integer=True)
    rev_rgb, rev_flow = rgb.flip(2), flow.flip(2)

    def gap(x):
        return x.mean(dim=(2, 3, 4))

    p2d = TemporalPool2D(8, 8)
    for forward, backward in zip(p2d(rgb, flow), p2d(rev_rgb, rev_flow)):
        assert torch.equal(gap(forward), gap(backward))

    torch.manual_seed(0)
    conv = Conv3DFusion(8, 8, init="random")
    with torch.no_grad():
        forward, backward = gap(conv(rgb, flow)[0]), gap(conv(rev_rgb, rev_flow)[0])
    assert (forward - backward).abs().max() > 1e-2


# --- shapes, gradients, registry, error messages --------------------------------------------------

@pytest.mark.parametrize("shape, pooled", [((2, 8, 3, 8, 8), (2, 2, 4, 4)),
                                           ((1, 8, 5, 7, 7), (1, 3, 4, 4)),
                                           ((3, 8, 1, 2, 2), (3, 1, 1, 1))])
def test_shapes(shape, pooled):
    n, c, t, h, w = shape
    rgb, flow = torch.randn(shape), torch.randn(n, 4, t, h, w)
    tp, hp, wp = pooled[1:]
    out_rgb, out_flow = TemporalPool3D(c, 4)(rgb, flow)
    assert out_rgb.shape == (n, c, tp, hp, wp) and out_flow.shape == (n, 4, tp, hp, wp)
    block = Conv3DFusion(c, 4, out_channels=6)
    out_rgb, out_flow = block(rgb, flow)
    assert out_rgb.shape == (n, 6, tp, hp, wp) and out_flow.shape == (n, 4, tp, hp, wp)
    assert block.out_channels == 6 and Conv3DFusion(c, 4).out_channels == c
    if h % 2 == 0:
        out_rgb, out_flow = TemporalPool2D(c, 4)(rgb, flow)
        assert out_rgb.shape == (n, c, t, h // 2, w // 2) and out_flow.shape == (n, 4, t, h // 2, w // 2)


@pytest.mark.parametrize("init", ["paper", "random"])
def test_gradients_reach_both_inputs_and_the_filters(init):
    rgb, flow = (x.requires_grad_() for x in _pair(t=3))
    block = Conv3DFusion(8, 8, init=init)
    fused, flow_out = block(rgb, flow)
    fused.mean(dim=(2, 3, 4)).sum().backward()  # the fused (spatiotemporal) stream alone
    assert rgb.grad.abs().sum() > 0 and flow.grad.abs().sum() > 0
    assert block.conv.weight.grad.abs().sum() > 0 and block.conv.bias.grad.abs().sum() > 0
    for cls in (TemporalPool2D, TemporalPool3D):
        rgb.grad = flow.grad = None
        sum(o.sum() for o in cls(8, 8)(rgb, flow)).backward()
        assert rgb.grad.abs().sum() > 0 and flow.grad.abs().sum() > 0


def test_registry_builds_them_by_name():
    for name, cls in (("pool2d", TemporalPool2D), ("pool3d", TemporalPool3D), ("conv3d_pool3d", Conv3DFusion)):
        assert FUSIONS[name] is cls and cls.registered_name == name
        assert cls.keeps_shape is False and cls.same_spatial_size is True
    block = build_fusion("conv3d_pool3d", rgb_channels=8, flow_channels=8)
    assert isinstance(block, Conv3DFusion) and block.conv.in_channels == 16 and block.out_channels == 8
    assert isinstance(build_fusion("pool3d", rgb_channels=8, flow_channels=4, kernel_size=2), TemporalPool3D)
    assert "motion_weight=3.0" in repr(block)


def test_error_messages():
    block = build_fusion("conv3d_pool3d", rgb_channels=8, flow_channels=8)
    with pytest.raises(ValueError, match="built for 8 flow channels but got 4"):
        block(torch.randn(2, 8, 3, 4, 4), torch.randn(2, 4, 3, 4, 4))
    with pytest.raises(ValueError, match="same spatial size"):  # T differs: the streams must share T, H, W
        block(torch.randn(2, 8, 3, 4, 4), torch.randn(2, 8, 2, 4, 4))
    for cls in (TemporalPool2D, TemporalPool3D, Conv3DFusion):
        with pytest.raises(ValueError, match=r"temporal fusion block.*\[N, C, T, H, W\]"):
            cls(8, 8)(torch.randn(2, 8, 4, 4), torch.randn(2, 8, 4, 4))
