"""CCS connection block (Zhang et al. 2019, §3.2, Eq. 1-3, Fig. 3) and shared-block embedding
(§3.3) against references written here from the equations, with explicit loops over positions
and the blocks' weights. Float64.
"""
from __future__ import annotations

import math

import pytest
import torch

from fusionkit.fusion import FUSIONS, build_fusion
from fusionkit.methods.ccs import ConnectionBlock, SharedEmbedding

RGB_C, FLOW_C = 6, 4  # the streams' channels differ on purpose
SPACES = {"2d": (3, 4), "3d": (2, 3, 2)}


def _pair(space, flow_space=None, seed=0, grad=False):
    g = torch.Generator().manual_seed(seed)
    rgb = torch.randn(2, RGB_C, *space, generator=g, dtype=torch.float64)
    flow = torch.randn(2, FLOW_C, *(flow_space or space), generator=g, dtype=torch.float64)
    return rgb.requires_grad_(grad), flow.requires_grad_(grad)


def _block(seed=0, randomise=True, **kwargs) -> ConnectionBlock:
    torch.manual_seed(seed)
    block = build_fusion("ccs", rgb_channels=RGB_C, flow_channels=FLOW_C, **kwargs).double()
    if randomise:  # W^f, W^o start at zero; give them weights so the cross-stream terms show
        with torch.no_grad():
            block.w_f.weight.normal_()
            block.w_o.weight.normal_()
    return block


def _matrix(conv) -> torch.Tensor:
    return conv.weight.reshape(conv.weight.shape[0], conv.weight.shape[1])


@torch.no_grad()
def _reference(block, rgb, flow, scale=1.0):
    """Eq. 2-3 position by position: (attention_f [N, L_f, L_o], attention_o [N, L_f, L_o], rgb', flow')."""
    n = rgb.shape[0]
    xf, xo = rgb.flatten(2), flow.flatten(2)  # [N, C, L], positions row-major
    lf, lo = xf.shape[2], xo.shape[2]
    phi, kappa, wf, wo = (_matrix(c) for c in (block.phi, block.kappa, block.w_f, block.w_o))
    att_f = torch.zeros(n, lf, lo, dtype=rgb.dtype)
    att_o = torch.zeros(n, lf, lo, dtype=rgb.dtype)
    out_f, out_o = xf.clone(), xo.clone()
    for b in range(n):
        g = torch.tensor([[math.exp(scale * float(phi @ xf[b, :, i] @ (kappa @ xo[b, :, j]))) for j in range(lo)]
                          for i in range(lf)], dtype=rgb.dtype)       # Eq. 2: g(x^f_i, x^o_j)
        att_f[b] = g / g.sum(1, keepdim=True)                          # normalised over motion positions j
        att_o[b] = g / g.sum(0, keepdim=True)                          # normalised over appearance positions i
        for i in range(lf):
            out_f[b, :, i] += wf @ sum(att_f[b, i, j] * xo[b, :, j] for j in range(lo))
        for j in range(lo):
            out_o[b, :, j] += wo @ sum(att_o[b, i, j] * xf[b, :, i] for i in range(lf))
    return att_f, att_o, out_f.reshape(rgb.shape), out_o.reshape(flow.shape)


def test_registered():
    assert FUSIONS.lookup("ccs") is ConnectionBlock and ConnectionBlock.registered_name == "ccs"
    block = build_fusion("ccs", rgb_channels=8, flow_channels=6)
    assert block.inner_channels == 3 and block.fuses_streams and block.keeps_shape


@pytest.mark.parametrize("dims", list(SPACES))
def test_identity_when_output_convs_are_zero(dims):
    rgb, flow = _pair(SPACES[dims])
    block = _block(randomise=False)
    assert not block.w_f.weight.any() and not block.w_o.weight.any()  # the init
    for mode in (block.eval, block.train):
        mode()
        out_rgb, out_flow = block(rgb, flow)
        assert torch.equal(out_rgb, rgb) and torch.equal(out_flow, flow)


@pytest.mark.parametrize("dims", list(SPACES))
def test_matches_reference(dims):
    rgb, flow = _pair(SPACES[dims])
    block = _block()
    att_f, att_o, ref_rgb, ref_flow = _reference(block, rgb, flow)
    out_rgb, out_flow = block(rgb, flow)
    assert out_rgb.shape == rgb.shape and out_flow.shape == flow.shape
    torch.testing.assert_close(out_rgb, ref_rgb, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out_flow, ref_flow, rtol=1e-10, atol=1e-10)
    to_rgb, to_flow = block.attention(rgb, flow)
    torch.testing.assert_close(to_rgb, att_f, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(to_flow, att_o, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(to_rgb.sum(2), torch.ones(2, math.prod(SPACES[dims]), dtype=torch.float64))
    torch.testing.assert_close(to_flow.sum(1), torch.ones(2, math.prod(SPACES[dims]), dtype=torch.float64))


def test_different_grids_and_scale_option():
    """The correlation is global: a 3x4 appearance map meets a 2x2 motion map; scale=None is 1/sqrt(d)."""
    rgb, flow = _pair((3, 4), flow_space=(2, 2))
    block = _block(scale=None, inner_channels=2)
    assert block.effective_scale == 1 / math.sqrt(2)
    _, _, ref_rgb, ref_flow = _reference(block, rgb, flow, scale=1 / math.sqrt(2))
    out_rgb, out_flow = block(rgb, flow)
    torch.testing.assert_close(out_rgb, ref_rgb, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out_flow, ref_flow, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dims", list(SPACES))
def test_gradients_cross_the_streams(dims):
    rgb, flow = _pair(SPACES[dims], grad=True)
    block = _block()
    out_rgb, out_flow = block(rgb, flow)
    (g_flow,) = torch.autograd.grad(out_rgb.sum(), flow, retain_graph=True)  # appearance output reads motion
    (g_rgb,) = torch.autograd.grad(out_flow.sum(), rgb, retain_graph=True)   # and the reverse
    assert g_flow.abs().sum() > 0 and g_rgb.abs().sum() > 0
    (out_rgb.pow(2).sum() + out_flow.pow(2).sum()).backward()
    assert rgb.grad.abs().sum() > 0 and flow.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in block.parameters())


def test_at_init_output_convs_learn_first():
    """With W^f = W^o = 0 the output convs get gradients; phi and kappa only once those have moved."""
    rgb, flow = _pair(SPACES["2d"])
    block = _block(randomise=False)
    out_rgb, out_flow = block(rgb, flow)
    (out_rgb.pow(2).sum() + out_flow.pow(2).sum()).backward()
    assert block.w_f.weight.grad.abs().sum() > 0 and block.w_o.weight.grad.abs().sum() > 0
    assert not block.phi.weight.grad.any() and not block.kappa.weight.grad.any()


def test_branch_modules():
    block = _block()
    assert block.branch_modules("rgb") == [block.phi, block.w_f]
    assert block.branch_modules("flow") == [block.kappa, block.w_o]
    owned = {id(p) for b in ("rgb", "flow") for m in block.branch_modules(b) for p in m.parameters()}
    assert owned == {id(p) for p in block.parameters()}
    with pytest.raises(ValueError, match="branch must be"):
        block.branch_modules("both")


def test_errors():
    block = _block()
    rgb, flow = _pair(SPACES["2d"])
    with pytest.raises(ValueError, match="flow_channels=6"):
        block(rgb, rgb)
    with pytest.raises(ValueError, match="channels must be positive"):
        ConnectionBlock(RGB_C, FLOW_C, inner_channels=0)


# ---- shared block --------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(6, 5), (6, 5, 3, 2), (6, 5, 2, 3, 2)])
def test_shared_embedding_is_one_layer_over_averaged_features(shape):
    torch.manual_seed(0)
    embed = SharedEmbedding(5, dim=7).double()
    x = torch.randn(*shape, dtype=torch.float64)
    z = embed(x, segments=3)                                   # 2 videos x 3 segments
    pooled = x.reshape(2, 3, 5, -1).mean(dim=(1, 3))           # average over segments and positions
    torch.testing.assert_close(z, pooled @ embed.fc.weight.T + embed.fc.bias)
    assert z.shape == (2, 7)
    # shared: the same module embeds both streams, so equal features give equal embeddings
    torch.testing.assert_close(embed(x.clone(), segments=3), z)


def test_shared_embedding_normalize_and_errors():
    embed = SharedEmbedding(5, dim=3, normalize=True)
    z = embed(torch.randn(4, 5, 2, 2))
    torch.testing.assert_close(z.norm(dim=1), torch.ones(4))
    with pytest.raises(ValueError, match=r"\[N, 5, H, W\]"):
        embed(torch.randn(4, 6, 2, 2))
    with pytest.raises(ValueError, match="segments"):
        embed(torch.randn(4, 5), segments=3)
