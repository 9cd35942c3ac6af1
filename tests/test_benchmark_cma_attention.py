"""benchmarks/cma_attention.py: its naive explicit-softmax attention equals the CMA unit's own SDPA
``attend`` on tiny 2D and 3D maps (also with the optional positional terms), outputs and gradients.
No timing."""
from __future__ import annotations

import pytest
import torch

from fusionkit.methods.cma import CrossModalityAttention
from tests.helpers import load_benchmark_script

bench = load_benchmark_script("cma_attention")

# (target shape, source shape): 2D, 3D, odd sizes (floor pooling), and cross-modality with
# different channels and grids
CASES = {
    "2d": ((2, 6, 6, 8), (2, 6, 6, 8)),
    "3d": ((2, 6, 3, 4, 6), (2, 6, 3, 4, 6)),
    "2d_odd_cross": ((2, 6, 7, 5), (2, 4, 5, 9)),
    "3d_odd_cross": ((1, 6, 2, 5, 7), (1, 4, 3, 6, 4)),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("scale, position_frequencies", [(None, 0), (1.0, 0), (None, 2)])
def test_naive_matches_module_sdpa(case, scale, position_frequencies):
    target_shape, source_shape = CASES[case]
    torch.manual_seed(0)
    unit = CrossModalityAttention(target_shape[1], source_shape[1], scale=scale,
                                  position_frequencies=position_frequencies).double()
    if position_frequencies:  # phi starts at zero with positional terms: give the content keys weight
        with torch.no_grad():
            unit.phi.weight.normal_()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(target_shape, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(source_shape, generator=g, dtype=torch.float64, requires_grad=True)
    seed = torch.randn(target_shape[0], unit.inner_channels, *target_shape[2:], generator=g, dtype=torch.float64)

    expected = unit.attend(x, y)
    expected_grads = torch.autograd.grad(expected, (x, y, unit.theta.weight, unit.phi.weight), seed)
    got = bench.naive_attend(unit, x, y)
    got_grads = torch.autograd.grad(got, (x, y, unit.theta.weight, unit.phi.weight), seed)

    assert got.shape == expected.shape == (target_shape[0], unit.inner_channels, *target_shape[2:])
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    for a, b in zip(got_grads, expected_grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_naive_is_the_explicit_softmax():
    """The naive path really is softmax(q k^T * scale) v: a one-key source gives v at every query."""
    torch.manual_seed(0)
    unit = CrossModalityAttention(4, pool=False).double()
    x = torch.randn(1, 4, 3, 3, dtype=torch.float64)
    y = torch.randn(1, 4, 1, 1, dtype=torch.float64)
    out = bench.naive_attend(unit, x, y)
    v = unit.g(y).reshape(1, unit.inner_channels, 1, 1)
    torch.testing.assert_close(out, v.expand_as(out))


def test_config_shapes():
    spec2d = bench.config_shapes("res3_2d", batch=8, frames=8)
    assert spec2d["target_shape"] == [8, 512, 28, 28]
    assert (spec2d["query_positions"], spec2d["key_positions"], spec2d["inner_channels"]) == (784, 196, 256)
    spec3d = bench.config_shapes("res3_3d", batch=2, frames=8)
    assert spec3d["target_shape"] == [2, 512, 8, 28, 28]
    assert (spec3d["query_positions"], spec3d["key_positions"]) == (8 * 28 * 28, 8 * 14 * 14)


def test_implementations():
    """Two implementations: the module's own SDPA path (the reference, first) and the naive one."""
    assert bench.IMPLEMENTATIONS == ("sdpa", "naive")
    assert set(bench.FUNCTIONS) == set(bench.IMPLEMENTATIONS)
    assert bench.FUNCTIONS["sdpa"] is bench.sdpa_attend


@pytest.mark.parametrize("backward", [False, True])
def test_sdpa_backend_reports_fused_kernel_on_cpu(backward):
    """The module hands SDPA contiguous q/k/v, so on CPU it runs the fused flash kernel, not the
    ``math`` fallback that non-contiguous (stride-L last dimension) views get; and the benchmark's
    profiler-based detection names it."""
    torch.manual_seed(0)
    unit = CrossModalityAttention(8)
    x = torch.randn(2, 8, 6, 6, requires_grad=backward)
    backend = bench.sdpa_backend(bench.sdpa_attend, unit, x, backward)
    assert "_scaled_dot_product_flash_attention_for_cpu" in backend, backend
