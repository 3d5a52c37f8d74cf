"""The numba kernels' own math (services/engine/numba_kernels.py) against NumPy's, in ulps,
over the whole range the kernels use, with NaN and infinities (skipped without numba)."""

from __future__ import annotations

from pathlib import Path

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


def all_kernels() -> list[tuple[str, str, object]]:
    """(dtype, name, kernel) of every activation kernel, float64 and float32."""
    out = [("float64", name, kernel) for name, kernel in nk.KERNELS.items()]
    return out + [("float32", name, nk.FLOAT32_KERNELS.get(name, kernel)) for name, kernel in nk.KERNELS.items()]


def kernel_outputs(dtype: str, kernel, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # noqa: ANN001
    z = z.astype(dtype)
    a, slope = np.empty_like(z), np.empty_like(z)
    kernel(z, a, slope)
    return a, slope


def test_kernel_values_do_not_depend_on_their_position() -> None:
    """Vector loop and scalar remainder round alike: a value is the same at any offset."""
    z = np.random.default_rng(3).normal(scale=3, size=301)
    for dtype, name, kernel in all_kernels():
        a, slope = kernel_outputs(dtype, kernel, z)
        for start in range(1, 20):
            a2, slope2 = kernel_outputs(dtype, kernel, z[start:])
            np.testing.assert_array_equal(a2, a[start:], err_msg=f"{dtype} {name}")
            np.testing.assert_array_equal(slope2, slope[start:], err_msg=f"{dtype} {name}")


WIDTH_SCRIPT = """
import sys, numpy as np
from services.engine import numba_kernels as nk
z = np.random.default_rng(4).normal(scale=3, size=1000)
out = []
for kernels, dtype in ((nk.KERNELS, "float64"), ({**nk.KERNELS, **nk.FLOAT32_KERNELS}, "float32")):
    for name in sorted(nk.KERNELS):
        x = z.astype(dtype); a, s = np.empty_like(x), np.empty_like(x)
        kernels[name](x, a, s)
        out += [a.astype(np.float64), s.astype(np.float64)]
np.save(sys.argv[1], np.concatenate(out))
"""


def test_kernel_values_do_not_depend_on_the_vector_width(tmp_path) -> None:  # noqa: ANN001
    """Compiled for 256-bit vectors (as on AVX2 CPUs) and for this CPU's widest: the same bits."""
    import os
    import subprocess
    import sys

    from llvmlite import binding as llvm

    features = llvm.get_host_cpu_features()
    if not features.get("avx512f"):
        pytest.skip("one vector width only: no AVX-512 here")
    results = []
    for label, extra in (("narrow", ""), ("wide", ",-prefer-256-bit")):
        env = dict(os.environ, NUMBA_CPU_FEATURES=features.flatten() + extra,
                   NUMBA_CACHE_DIR=str(tmp_path / label))
        subprocess.run([sys.executable, "-c", WIDTH_SCRIPT, str(tmp_path / f"{label}.npy")], check=True, env=env,
                       cwd=Path(__file__).resolve().parents[2])
        results.append(np.load(tmp_path / f"{label}.npy"))
    np.testing.assert_array_equal(results[0], results[1])


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_fused_outer_backward_rounds_like_the_two_numpy_steps(dtype: str) -> None:
    from services.engine.network import LayerBuffers

    rng = np.random.default_rng(5)
    flat = rng.normal(size=(3, 50)).astype(dtype)
    weight_t = flat[:, 7:7 + 9].reshape(3, 9, 1)[:, :8, :]  # strided, as in the parameter buffer
    dz = rng.normal(size=(3, 1, 41)).astype(dtype)
    slope = rng.uniform(size=(3, 8, 41)).astype(dtype)
    below = LayerBuffers(*(None,) * 2, np.empty((3, 8, 41), dtype), None, slope, *(None,) * 3)
    assert nk.NumbaKernels().outer_backward("tanh", weight_t, dz, below)
    np.testing.assert_array_equal(below.d, np.multiply(weight_t, dz) * slope)
    assert not nk.NumbaKernels().outer_backward("identity", weight_t, dz, below)


def first_layer_buffers(members: int, width: int, points: int, dtype: str):  # noqa: ANN201
    """A first layer's model-first buffers: a is a view of next_input above its row of ones."""
    from services.engine.network import LayerBuffers

    next_input = np.full((members, width + 1, points), 7.0, dtype)
    next_input[:, width, :] = 1
    z, slope = np.empty((members, width, points), dtype), np.empty((members, width, points), dtype)
    return LayerBuffers(z, next_input[:, :width, :], None, next_input, slope, *(None,) * 3)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", ["tanh", "softplus"])
def test_fused_first_layer_matches_the_product_then_the_kernel(name: str, dtype: str) -> None:
    """act(w x + b) in one pass: within the kernels' tolerance of the matrix product and the
    activation kernel (w x + b is one fused multiply-add there, two roundings in BLAS), the
    same bits at any offset into the points, and the row of ones untouched."""
    rng = np.random.default_rng(6)
    block = rng.normal(scale=2, size=(3, 2, 5)).astype(dtype)  # [W | b]^T of 3 members, 5 units
    x = np.concatenate([rng.normal(scale=3, size=97), [0.0, -0.0]]).astype(dtype)
    fused, plain = first_layer_buffers(3, 5, x.size, dtype), first_layer_buffers(3, 5, x.size, dtype)
    assert nk.NumbaKernels().affine_forward(name, block, x, fused)
    np.matmul(np.swapaxes(block, 1, 2), np.stack([x, np.ones_like(x)]), out=plain.z)
    nk.NumbaKernels().forward(name, plain)
    tol = 1e-14 if dtype == "float64" else 4e-6
    np.testing.assert_allclose(fused.a, plain.a, rtol=tol, atol=tol)
    np.testing.assert_allclose(fused.slope, plain.slope, rtol=tol, atol=tol)
    assert (fused.next_input[:, 5, :] == 1).all()
    shifted = first_layer_buffers(3, 5, x.size - 13, dtype)
    assert nk.NumbaKernels().affine_forward(name, block, x[13:], shifted)
    np.testing.assert_array_equal(shifted.a, fused.a[:, :, 13:])
    assert not nk.NumbaKernels().affine_forward("relu", block, x, fused)  # no fused kernel: caller's job
