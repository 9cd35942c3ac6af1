"""Cross-modality attention (Chi et al. 2019, §3, Eq. 1-5) and the non-local block (its
same-modality case) against references written here from the equations.

The references use only the blocks' parameters: explicit einsums for the 1x1 convs (conv_q,
conv_k, conv_v, W_out), reshape-and-max for the stride-2 spatial pooling, an explicit softmax over
keys of q k^T / sqrt(d_k) (Eq. 1), and BatchNorm written out in eval mode (Eq. 5 + §3.2). Float64.
"""
from __future__ import annotations

import math

import pytest
import torch

import fusionkit.methods.cma  # noqa: F401  (registers the blocks)
from fusionkit.fusion import FUSIONS, build_fusion
from fusionkit.methods.cma import CMABlock, CrossModalityAttention, NonLocalBlock

NAMES = ["cma", "nonlocal"]
RGB_C, FLOW_C = 6, 4  # the streams' channels differ on purpose
SPACES = {"2d": (4, 6), "3d": (2, 4, 4), "2d_odd": (7, 7), "3d_odd": (3, 5, 7)}  # (T,) H, W
DIMS = ["2d", "3d"]


def _pair(space, seed=0, dtype=torch.float64, grad=False, n=2, flow_space=None):
    g = torch.Generator().manual_seed(seed)
    rgb = torch.randn(n, RGB_C, *space, generator=g, dtype=dtype)
    flow = torch.randn(n, FLOW_C, *(flow_space or space), generator=g, dtype=dtype)
    return rgb.requires_grad_(grad), flow.requires_grad_(grad)


def _block(name, seed=0, dtype=torch.float64, **kwargs) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_fusion(name, rgb_channels=RGB_C, flow_channels=FLOW_C, **kwargs).to(dtype)


def _units(block):
    return [u for u in (block.rgb_attention, block.flow_attention) if u is not None]


@torch.no_grad()
def _randomise_bn(block, seed=1):
    """Non-zero gamma, beta and running statistics, so BN(W_out z) is no longer 0."""
    g = torch.Generator().manual_seed(seed)
    for unit in _units(block):
        bn = unit.bn
        c = bn.weight.shape[0]
        bn.weight.copy_(torch.rand(c, generator=g, dtype=torch.float64) + 0.5)
        bn.bias.copy_(torch.randn(c, generator=g, dtype=torch.float64))
        bn.running_mean.copy_(torch.randn(c, generator=g, dtype=torch.float64))
        bn.running_var.copy_(torch.rand(c, generator=g, dtype=torch.float64) + 0.5)


# ---- references ---------------------------------------------------------------------------------

def _ref_conv1x1(conv, x):
    """1x1 (or 1x1x1) conv as an einsum over channels."""
    w = conv.weight.reshape(conv.weight.shape[0], conv.weight.shape[1])
    out = torch.einsum("dc,nc...->nd...", w, x)
    return out + conv.bias.reshape(1, -1, *[1] * (x.dim() - 2))


def _ref_pool(y):
    """Max over 2x2 spatial windows (time untouched), dropping an odd last row/column (floor)."""
    h, w = y.shape[-2] // 2, y.shape[-1] // 2
    y = y[..., : 2 * h, : 2 * w]
    y = y.reshape(*y.shape[:-2], h, 2, w, 2)
    return y.amax(dim=(-3, -1))


def _ref_positions(grid, frequencies):
    """Fourier features of cell centres, written out per cell: [4F, L] (x sines, y sines, x cosines, y cosines)."""
    *t, h, w = grid
    columns = []
    for _ in range(t[0] if t else 1):
        for i in range(h):
            for j in range(w):
                u, v = (j + 0.5) / w, (i + 0.5) / h
                angles = [2 * math.pi * 2**f * u for f in range(frequencies)] + \
                         [2 * math.pi * 2**f * v for f in range(frequencies)]
                columns.append([math.sin(a) for a in angles] + [math.cos(a) for a in angles])
    return torch.tensor(columns, dtype=torch.float64).T


def _ref_attention(unit, x, y):
    """(softmax matrix [N, L_q, L_k], z [N, d, *x positions]) from Eq. 1, with explicit matmuls
    (plus the optional positional terms of queries and keys)."""
    q = _ref_conv1x1(unit.theta, x).flatten(2)            # [N, d, L_q]
    pooled = _ref_pool(y)
    k = _ref_conv1x1(unit.phi, pooled).flatten(2)         # [N, d, L_k]
    if unit.position_frequencies:
        f = unit.position_frequencies
        q = q + unit.theta_position.weight.flatten(1) @ _ref_positions(x.shape[2:], f)
        k = k + unit.phi_position.weight.flatten(1) @ _ref_positions(pooled.shape[2:], f)
    v = _ref_conv1x1(unit.g, pooled).flatten(2)           # [N, d, L_k]
    d = q.shape[1]
    logits = torch.einsum("ndi,ndj->nij", q, k) / math.sqrt(d)
    att = torch.exp(logits - logits.amax(-1, keepdim=True))
    att = att / att.sum(-1, keepdim=True)                 # Eq. 4: normalise over the keys j
    z = torch.einsum("nij,ndj->ndi", att, v)              # Eq. 2
    return att, z.reshape(x.shape[0], d, *x.shape[2:])


def _ref_unit(unit, x, y):
    """Eq. 5 with BN in eval mode: x + gamma * (W_out z - mean) / sqrt(var + eps) + beta."""
    _, z = _ref_attention(unit, x, y)
    wz = _ref_conv1x1(unit.w_out, z)
    bn = unit.bn
    shape = (1, -1, *[1] * (x.dim() - 2))
    normed = (wz - bn.running_mean.reshape(shape)) / torch.sqrt(bn.running_var.reshape(shape) + bn.eps)
    return x + bn.weight.reshape(shape) * normed + bn.bias.reshape(shape)


# ---- tests --------------------------------------------------------------------------------------

@pytest.mark.parametrize("dims", DIMS + ["2d_odd"])
@pytest.mark.parametrize("name", NAMES)
def test_identity_at_init_eval_and_train(name, dims):
    rgb, flow = _pair(SPACES[dims], dtype=torch.float32)
    block = _block(name, dtype=torch.float32)
    block.eval()
    out_rgb, out_flow = block(rgb, flow)
    assert torch.equal(out_rgb, rgb) and torch.equal(out_flow, flow)
    block.train()
    for seed in range(3):  # BN uses batch statistics in train mode; gamma = beta = 0 still gives exactly 0
        rgb, flow = _pair(SPACES[dims], seed=seed, dtype=torch.float32)
        out_rgb, out_flow = block(rgb, flow)
        assert torch.equal(out_rgb, rgb) and torch.equal(out_flow, flow)
    assert all(int(u.bn.num_batches_tracked) == 3 for u in _units(block))
    block.eval()
    out_rgb, out_flow = block(rgb, flow)
    assert torch.equal(out_rgb, rgb) and torch.equal(out_flow, flow)


@pytest.mark.parametrize("dims", list(SPACES))
@pytest.mark.parametrize("name", NAMES)
def test_matches_reference(name, dims):
    rgb, flow = _pair(SPACES[dims])
    block = _block(name)
    _randomise_bn(block)
    block.eval()
    out_rgb, out_flow = block(rgb, flow)
    src_for_rgb, src_for_flow = (flow, rgb) if name == "cma" else (rgb, flow)
    torch.testing.assert_close(out_rgb, _ref_unit(block.rgb_attention, rgb, src_for_rgb), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out_flow, _ref_unit(block.flow_attention, flow, src_for_flow), rtol=1e-10, atol=1e-10)
    # the pre-W_out attention map on its own
    _, z = _ref_attention(block.rgb_attention, rgb, src_for_rgb)
    torch.testing.assert_close(block.rgb_attention.attend(rgb, src_for_rgb), z, rtol=1e-10, atol=1e-10)
    assert not torch.allclose(out_rgb, rgb)


def test_cma_streams_of_different_grids_match_reference():
    """Attention is global: 2D rgb queries over a differently sized flow map (and back)."""
    rgb, flow = _pair((4, 6), flow_space=(6, 4))
    block = _block("cma")
    _randomise_bn(block)
    block.eval()
    out_rgb, out_flow = block(rgb, flow)
    torch.testing.assert_close(out_rgb, _ref_unit(block.rgb_attention, rgb, flow), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out_flow, _ref_unit(block.flow_attention, flow, rgb), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dims", DIMS + ["3d_odd"])
def test_kept_attention_matrix(dims):
    space = SPACES[dims]
    rgb, flow = _pair(space)
    block = _block("cma")
    _randomise_bn(block)
    block.eval()
    plain_rgb, plain_flow = block(rgb, flow)
    assert block.rgb_attention.last_attention is None  # nothing kept unless asked
    block.keep_attention = True
    assert block.rgb_attention.keep_attention and block.flow_attention.keep_attention
    kept_rgb, kept_flow = block(rgb, flow)
    assert torch.equal(kept_rgb, plain_rgb) and torch.equal(kept_flow, plain_flow)

    unit = block.rgb_attention
    *t, h, w = space
    key_shape = (*t, h // 2, w // 2)
    att = unit.last_attention
    assert att.shape == (2, math.prod(space), math.prod(key_shape)) and not att.requires_grad
    assert unit.last_query_shape == tuple(space) and unit.last_key_shape == key_shape
    torch.testing.assert_close(att.sum(-1), torch.ones(att.shape[:2], dtype=att.dtype), rtol=0, atol=1e-12)
    ref_att, _ = _ref_attention(unit, rgb, flow)
    torch.testing.assert_close(att, ref_att, rtol=1e-10, atol=1e-12)
    # mapping an index back: the key that query 0 of sample 0 looks at most
    j = int(att[0, 0].argmax())
    assert len(torch.unravel_index(torch.tensor(j), unit.last_key_shape)) == len(key_shape)


def test_scale_option_gives_unscaled_embedded_gaussian():
    rgb, flow = _pair(SPACES["2d"])
    unit = CrossModalityAttention(RGB_C, FLOW_C, scale=1.0, keep_attention=True).double()
    unit(rgb, flow)
    q = _ref_conv1x1(unit.theta, rgb).flatten(2)
    k = _ref_conv1x1(unit.phi, _ref_pool(flow)).flatten(2)
    torch.testing.assert_close(unit.last_attention, torch.softmax(torch.einsum("ndi,ndj->nij", q, k), -1))
    assert CrossModalityAttention(RGB_C, FLOW_C).effective_scale == 1 / math.sqrt(RGB_C // 2)


@pytest.mark.parametrize("dims", DIMS)
def test_direction_semantics(dims):
    rgb, flow = _pair(SPACES[dims])
    flow2 = _pair(SPACES[dims], seed=5)[1]

    only_rgb = _block("cma", directions="rgb")
    assert only_rgb.flow_attention is None and only_rgb.fuses_streams
    _randomise_bn(only_rgb)
    only_rgb.eval()
    out_rgb, out_flow = only_rgb(rgb, flow)
    assert out_flow is flow
    assert not torch.allclose(only_rgb(rgb, flow2)[0], out_rgb)  # rgb <- flow reads the flow stream

    only_flow = _block("cma", directions="flow")
    assert only_flow.rgb_attention is None and not only_flow.fuses_streams
    assert only_flow(rgb, flow)[0] is rgb

    both = _block("cma")
    _randomise_bn(both)
    both.eval()
    a_rgb, a_flow = both(rgb, flow)
    b_rgb, b_flow = both(rgb, flow2)
    assert not torch.allclose(a_rgb, b_rgb)
    # flow <- rgb uses the block's rgb *input*, whatever the flow is (only the residual changes)
    torch.testing.assert_close(a_flow - flow, both.flow_attention(flow, rgb) - flow)

    nonlocal_block = _block("nonlocal")
    _randomise_bn(nonlocal_block)
    nonlocal_block.eval()
    assert not torch.allclose(nonlocal_block(rgb, flow)[0], rgb)
    assert torch.equal(nonlocal_block(rgb, flow)[0], nonlocal_block(rgb, flow2)[0])  # never reads flow


@pytest.mark.parametrize("dims", DIMS)
@pytest.mark.parametrize("name", NAMES)
def test_gradients(name, dims):
    rgb, flow = _pair(SPACES[dims], grad=True)
    block = _block(name)
    block.train()
    # at init (gamma = 0) only BN's gamma and beta get a gradient from the attention path, so training can start
    out_rgb, out_flow = block(rgb, flow)
    ((out_rgb * torch.randn_like(out_rgb)).sum() + (out_flow * torch.randn_like(out_flow)).sum()).backward()
    for unit in _units(block):
        assert unit.bn.weight.grad.abs().sum() > 0
        assert unit.theta.weight.grad.abs().sum() == 0  # blocked by gamma = 0
    block.zero_grad()

    _randomise_bn(block)
    rgb, flow = _pair(SPACES[dims], grad=True)
    out_rgb, _ = block(rgb, flow)
    (out_rgb * torch.randn_like(out_rgb)).sum().backward()  # the rgb output alone
    unit = block.rgb_attention
    for conv in (unit.theta, unit.phi, unit.g, unit.w_out):
        assert conv.weight.grad.abs().sum() > 0 and conv.bias.grad is not None
    assert rgb.grad.abs().sum() > 0
    if name == "cma":
        assert flow.grad.abs().sum() > 0  # the rgb output depends on the flow input
    else:
        assert flow.grad is None or flow.grad.abs().sum() == 0


def test_registry_and_flags():
    assert FUSIONS["cma"] is CMABlock and FUSIONS["nonlocal"] is NonLocalBlock
    cma = build_fusion("cma", rgb_channels=8, flow_channels=4)
    nl = build_fusion("nonlocal", rgb_channels=8, flow_channels=4)
    assert isinstance(cma, CMABlock) and isinstance(nl, NonLocalBlock)
    assert cma.fuses_streams and not nl.fuses_streams and cma.keeps_shape and nl.keeps_shape
    assert cma.out_channels == 8 == nl.out_channels
    # channels: d_k is half of each direction's target (§3.2)
    assert cma.rgb_attention.inner_channels == 4 and cma.flow_attention.inner_channels == 2
    assert cma.rgb_attention.source_channels == 4 and nl.rgb_attention.source_channels == 8
    assert type(cma.rgb_attention) is type(nl.rgb_attention) is CrossModalityAttention
    with pytest.raises(ValueError, match="directions"):
        build_fusion("cma", rgb_channels=8, flow_channels=4, directions="up")


def test_small_maps_need_pool_false():
    rgb, flow = _pair((1, 1), dtype=torch.float32)
    with pytest.raises(ValueError, match="pool=False"):
        _block("cma", dtype=torch.float32)(rgb, flow)
    out_rgb, out_flow = _block("cma", dtype=torch.float32, pool=False)(rgb, flow)
    assert torch.equal(out_rgb, rgb) and torch.equal(out_flow, flow)


# ---- positional terms (not in the paper; off by default) ------------------------------------------

def test_fourier_positions_dot_product_is_a_sum_of_cosines_of_the_offset():
    from fusionkit.methods.cma import fourier_positions

    p = fourier_positions((4, 6), 3, dtype=torch.float64).flatten(1)  # [12, 24]
    torch.testing.assert_close(p, _ref_positions((4, 6), 3))
    i, j = 5, 22  # cells (0, 5) and (3, 4)
    (yi, xi), (yj, xj) = divmod(i, 6), divmod(j, 6)
    expected = sum(math.cos(2 * math.pi * 2**f * (xi - xj) / 6) + math.cos(2 * math.pi * 2**f * (yi - yj) / 4)
                   for f in range(3))
    assert float(p[:, i] @ p[:, j]) == pytest.approx(expected)
    # a 2x2-pooled grid's cell centres are the centres of the 2x2 windows they pool
    coarse = fourier_positions((2, 3), 1, dtype=torch.float64)
    fine_centre_x = (torch.arange(6, dtype=torch.float64) + 0.5) / 6
    pooled_x = fine_centre_x.reshape(3, 2).mean(1)
    torch.testing.assert_close(coarse[0, 0], torch.sin(2 * math.pi * pooled_x))
    assert fourier_positions((2, 4, 6), 2).shape == (8, 2, 4, 6)


@pytest.mark.parametrize("dims", ["2d", "3d_odd"])
def test_positional_terms_match_reference_and_keep_identity_at_init(dims):
    rgb, flow = _pair(SPACES[dims])
    block = _block("cma", position_frequencies=2)
    block.eval()
    out_rgb, out_flow = block(rgb, flow)
    assert torch.equal(out_rgb, rgb) and torch.equal(out_flow, flow)
    _randomise_bn(block)
    block.keep_attention = True
    out_rgb, _ = block(rgb, flow)
    torch.testing.assert_close(out_rgb, _ref_unit(block.rgb_attention, rgb, flow), rtol=1e-10, atol=1e-10)
    ref_att, _ = _ref_attention(block.rgb_attention, rgb, flow)
    torch.testing.assert_close(block.rgb_attention.last_attention, ref_att, rtol=1e-10, atol=1e-12)


def test_positional_init_makes_each_query_look_at_its_own_cell_first():
    """At init the content keys are zero, so whatever the source holds, a query without content
    (a zero target: theta's bias is zero) gets only positional logits, which peak at the key cell
    that contains it (the locality prior of the initialisation)."""
    unit = CrossModalityAttention(8, inner_channels=16, position_frequencies=3, keep_attention=True).double()
    assert not unit.phi.weight.any() and unit.theta.weight.any()
    unit(torch.zeros(1, 8, 8, 8, dtype=torch.float64), 10 * torch.randn(1, 8, 8, 8, dtype=torch.float64))
    best = unit.last_attention[0].argmax(-1)  # [64] key index per query
    for i in range(64):
        (y, xq), (ky, kx) = divmod(i, 8), divmod(int(best[i]), 4)
        assert (ky, kx) == (y // 2, xq // 2), (i, ky, kx)
