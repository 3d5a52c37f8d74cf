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
numba_blas = pytest.importorskip("services.engine.numba_blas", exc_type=ImportError)
numba = pytest.importorskip("numba")

ARCHES = [
    Architecture((1, 32, 32, 1), "tanh"),  # W4's shape: the fused first layer, an outer product last
    Architecture((2, 6, 5, 1), "softplus"),
    Architecture((3, 20, 4), "sigmoid", "tanh"),  # an output activation, several outputs
    Architecture((1, 20, 20, 2), "relu", "softplus"),
    Architecture((1, 24, 1), "identity"),  # a hidden identity layer
]


@numba.njit
def _product(trans_a, trans_b, a, b, c):  # noqa: ANN001, ANN202 - the compiled gemm, called from a test
    numba_blas.gemm(trans_a, trans_b, a, b, c)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_gemm_is_numpys_product(dtype: str) -> None:
    """The three products of a step on the views the engine passes: a member's block [W | b]^T
    inside the flat parameter rows of a pack, its first rows W, and (n, P) activations."""
    rng = np.random.default_rng(0)
    flat = rng.standard_normal((3, 200)).astype(dtype)  # 3 members' parameter rows
    block = flat[:, 7:7 + 33 * 5].reshape(3, 33, 5)[1]  # member 1's (i + 1, o) block
    inputs = rng.standard_normal((33, 70)).astype(dtype)
    tol = 1e-13 if dtype == "float64" else 2e-5
    out = np.full((5, 70), np.nan, dtype)  # never read: NaN there must not spread
    _product(numba_blas.TRANS, numba_blas.NO_TRANS, block, inputs, out)
    np.testing.assert_allclose(out, block.T @ inputs, rtol=tol, atol=tol)
    grad = flat[:, 7:7 + 33 * 5].reshape(3, 33, 5)[2]  # into another member's block
    _product(numba_blas.NO_TRANS, numba_blas.TRANS, inputs, out, grad)
    np.testing.assert_allclose(grad, inputs @ out.T, rtol=tol, atol=tol * 100)
    below = np.full((32, 70), np.nan, dtype)
    _product(numba_blas.NO_TRANS, numba_blas.NO_TRANS, block[:32], out, below)
    np.testing.assert_allclose(below, block[:32] @ out, rtol=tol, atol=tol * 10)
    one_row = flat[0, :70].reshape(1, 70)  # a one-row operand: its leading dimension is its length
    row_out = np.full((5, 1), np.nan, dtype)
    _product(numba_blas.NO_TRANS, numba_blas.TRANS, out, one_row, row_out)
    np.testing.assert_allclose(row_out, out @ one_row.T, rtol=tol, atol=tol * 100)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("trans_a", ["N", "T"])
@pytest.mark.parametrize("trans_b", ["N", "T"])
def test_one_row_and_one_column_products_are_numpys(dtype: str, trans_a: str, trans_b: str) -> None:
    """A one-row or one-column result goes to gemv: every transpose, operands that are strided
    views (rows of a wider buffer), and NaN left in the result does not spread."""
    rng = np.random.default_rng(1)
    tol = 1e-13 if dtype == "float64" else 2e-5
    flags = {"N": numba_blas.NO_TRANS, "T": numba_blas.TRANS}

    def operand(rows: int, cols: int, transposed: bool) -> np.ndarray:
        wide = rng.standard_normal((cols, rows + 3) if transposed else (rows, cols + 3)).astype(dtype)
        return wide[:, 1:rows + 1] if transposed else wide[:, 1:cols + 1]  # op() of it is rows x cols

    for m, k, n in [(1, 33, 70), (70, 33, 1), (1, 5, 1), (1, 0, 4), (4, 0, 1)]:  # k = 0: zeros
        a, b = operand(m, k, trans_a == "T"), operand(k, n, trans_b == "T")
        wide_c = np.full((m, n + 2), np.nan, dtype)
        c = wide_c[:, :n]
        _product(flags[trans_a], flags[trans_b], a, b, c)
        op_a, op_b = (a.T if trans_a == "T" else a), (b.T if trans_b == "T" else b)
        np.testing.assert_allclose(c, op_a @ op_b, rtol=tol, atol=tol * 100)
        assert np.isnan(wide_c[:, n:]).all()  # nothing written beside c


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


def test_wide_packs_with_numba_get_the_fused_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where this module imports, ``build`` gives wide packs with the numba kernels the fused
    network (a broken import would otherwise pass unseen: the layer-by-layer one runs too);
    tiny packs and the NumPy kernels keep theirs."""
    from services.engine import training

    wide = Architecture((1, 32, 32, 1), "tanh")
    assert type(training.build(np, wide, 2, "float32", "numba")) is numba_wide.FusedWideNetwork
    assert type(training.build(np, wide, 2, "float32", "numpy")) is WideNetwork
    assert not isinstance(training.build(np, Architecture((1, 2, 1), "softplus"), 2, "float64", "numba"), WideNetwork)
    monkeypatch.setattr(training, "FUSED_WIDE", False)
    assert type(training.build(np, wide, 2, "float32", "numba")) is WideNetwork
