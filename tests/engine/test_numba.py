"""The numba kernels' own math (services/engine/numba_kernels.py) against NumPy's, in ulps,
over the whole range the kernels use, with NaN and infinities (skipped without numba)."""

from __future__ import annotations

import numpy as np
import pytest

nk = pytest.importorskip("services.engine.numba_kernels", exc_type=ImportError)
numba = pytest.importorskip("numba")


@numba.njit(error_model="numpy")
def _each(f, x, out):  # noqa: ANN001, ANN202 - a jitted loop over a scalar function
    for i in range(x.size):
        out[i] = f(x[i])


def ulps(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    return np.abs(got - want) / np.spacing(np.maximum(np.abs(want), np.finfo(np.float64).tiny))


def spread(scales: tuple[float, ...] = (1e-9, 1e-3, 0.1, 0.35, 1, 5, 40, 300)) -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.concatenate([rng.normal(scale=s, size=20_000) for s in scales])


@pytest.mark.parametrize(("name", "numpy_name", "domain"), [
    ("exp_nonpositive", "exp", lambda x: -np.abs(x[np.abs(x) < 700])),
    ("expm1_nonpositive", "expm1", lambda x: -np.abs(x[np.abs(x) < 700])),
    ("log1p_unit", "log1p", lambda x: np.exp(-np.abs(x))),
    ("tanh", "tanh", lambda x: x),
])
def test_scalar_functions_are_within_a_few_ulps(name: str, numpy_name: str, domain) -> None:  # noqa: ANN001
    x = domain(spread())
    out = np.empty_like(x)
    _each(getattr(nk, name), x, out)
    assert ulps(out, getattr(np, numpy_name)(x)).max() <= 4


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", list(nk.KERNELS))
def test_kernels_match_the_plain_formulas(name: str, dtype: str) -> None:
    from services.engine.reference import activate

    z = np.concatenate([spread(), [0.0, -0.0, np.inf, -np.inf, np.nan]]).astype(dtype)
    a, slope = np.empty_like(z), np.empty_like(z)
    kernels = nk.FLOAT32_KERNELS if dtype == "float32" and name in nk.FLOAT32_KERNELS else nk.KERNELS
    kernels[name](z, a, slope)
    with np.errstate(all="ignore"):
        want_a, want_slope = activate(name, z.astype(np.float64))
    finite = np.isfinite(z)
    tol = 1e-14 if dtype == "float64" else 4e-7
    np.testing.assert_allclose(a[finite], want_a[finite], rtol=tol, atol=tol)
    np.testing.assert_allclose(slope[finite], want_slope[finite], rtol=tol, atol=tol)
    assert np.isnan(a[-1]), "NaN must reach the SSR, so that a diverging member is caught"
    np.testing.assert_array_equal(a[-3:-1], want_a[-3:-1].astype(dtype))  # +-inf as NumPy


@pytest.mark.parametrize(("name", "numpy_name", "domain"), [
    ("exp_nonpositive", "exp", lambda x: -np.abs(x[np.abs(x) < 85])),
    ("log1p_unit", "log1p", lambda x: np.exp(-np.abs(x))),
    ("tanh", "tanh", lambda x: x),
])
def test_float32_functions_are_within_a_few_ulps(name: str, numpy_name: str, domain) -> None:  # noqa: ANN001
    from services.engine import numba_float32

    x = domain(spread()).astype(np.float32)
    out = np.empty_like(x)
    _each(getattr(numba_float32, name), x, out)
    want = getattr(np, numpy_name)(x.astype(np.float64)).astype(np.float32)
    tiny = np.finfo(np.float32).tiny
    assert (np.abs(out - want) / np.spacing(np.maximum(np.abs(want), tiny))).max() <= 4
