"""The fused wide network (``numba_wide``): a chunk's step in one compiled call gives the SSR and
gradients of the layer-by-layer network, and each member's numbers whatever chunk it is in
(skipped without numba, or where NumPy's BLAS is not one it can call)."""

from __future__ import annotations

import numpy as np
import pytest

from services.engine import Architecture
from services.engine.layouts import layout_for
from services.engine.model_first import WideNetwork
from tests.engine.helpers import sine_data, stacked

numba_wide = pytest.importorskip("services.engine.numba_wide", exc_type=ImportError)
numba = pytest.importorskip("numba")

ARCHES = [
    Architecture((1, 32, 32, 1), "tanh"),  # W4's shape: the fused first layer, an outer product last
    Architecture((2, 6, 5, 1), "softplus"),
    Architecture((3, 20, 4), "sigmoid", "tanh"),  # an output activation, several outputs
    Architecture((1, 20, 20, 2), "relu", "softplus"),
    Architecture((1, 24, 1), "identity"),  # a hidden identity layer
]


@numba.njit
def _product(trans_a, trans_b, a, b, c, k):  # noqa: ANN001, ANN202 - the compiled gemm, called from a test
    numba_wide.gemm(trans_a, trans_b, a, b, c, k)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_gemm_is_numpys_product(dtype: str) -> None:
    """The BLAS call on row-major blocks with contiguous rows, strided between them (a block of a
    member inside a flat buffer), transposed or not, as NumPy's matmul computes it."""
    rng = np.random.default_rng(0)
    flat = rng.standard_normal((3, 200)).astype(dtype)
    block = flat[1, 7:7 + 33 * 5].reshape(33, 5)  # (i + 1, o) inside a member's row
    inputs = rng.standard_normal((33, 70)).astype(dtype)
    out = np.full((5, 70), np.nan, dtype)
    _product(numba_wide.TRANS, numba_wide.NO_TRANS, block, inputs, out, 33)
    tol = 1e-13 if dtype == "float64" else 2e-5
    np.testing.assert_allclose(out, block.T @ inputs, rtol=tol, atol=tol)
    grad = np.full((33, 5), np.nan, dtype)
    _product(numba_wide.NO_TRANS, numba_wide.TRANS, inputs, out, grad, 70)
    np.testing.assert_allclose(grad, inputs @ out.T, rtol=tol, atol=tol * 100)


def _loss_and_grad(cls: type, arch: Architecture, dtype: str, seeds: tuple[int, ...] = (0, 1, 2, 3),
                   points: int = 57) -> tuple:
    """SSR and flat gradient of the members ``seeds`` on sine data, and the network."""
    from services.engine.backend import kernels_for

    layout = layout_for(np, arch, len(seeds), dtype)
    net = cls(np, arch, layout, kernels_for(np, "numba")[1])
    x, y = sine_data(points, arch.layers[0], arch.layers[-1])
    params = layout.pack(stacked(arch, list(seeds), dtype))
    grad = layout.empty()
    ssr = net.loss_and_grad(layout.views(params), *net.data(x, y), layout.views(grad))
    return np.array(ssr), grad, net


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("arch", ARCHES, ids=str)
def test_fused_step_matches_layer_by_layer(arch: Architecture, dtype: str) -> None:
    ssr, grad, net = _loss_and_grad(numba_wide.FusedWideNetwork, arch, dtype)
    want_ssr, want_grad, _ = _loss_and_grad(WideNetwork, arch, dtype)
    assert type(net) is numba_wide.FusedWideNetwork
    assert np.isfinite(ssr).all() and np.abs(grad).max() > 0
    tol = 1e-12 if dtype == "float64" else 3e-5
    np.testing.assert_allclose(ssr, want_ssr, rtol=tol)
    np.testing.assert_allclose(grad, want_grad, rtol=tol, atol=tol * np.abs(want_grad).max())


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_a_member_gets_the_same_bits_in_any_chunk(dtype: str) -> None:
    """Members are computed one by one: in a chunk of four each gets the bits it gets alone."""
    ssr, grad, _ = _loss_and_grad(numba_wide.FusedWideNetwork, ARCHES[0], dtype)
    for m in range(4):
        alone, alone_grad, _ = _loss_and_grad(numba_wide.FusedWideNetwork, ARCHES[0], dtype, seeds=(m,))
        np.testing.assert_array_equal(alone[0], ssr[m])
        np.testing.assert_array_equal(alone_grad[0], grad[m])


def test_non_finite_values_reach_the_ssr() -> None:
    """A NaN parameter gives a NaN SSR (the loop's divergence test must see it), for that member only."""
    from services.engine.backend import kernels_for

    arch = ARCHES[0]
    layout = layout_for(np, arch, 3, "float64")
    net = numba_wide.FusedWideNetwork(np, arch, layout, kernels_for(np, "numba")[1])
    params = layout.pack(stacked(arch, [0, 1, 2]))
    params[1, 5] = np.nan
    x, y = sine_data(20)
    ssr = net.loss(layout.views(params), *net.data(x, y))
    assert np.isnan(ssr[1]) and np.isfinite(ssr[[0, 2]]).all()
