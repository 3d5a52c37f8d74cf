"""The cuBLAS calls of ``cuda_gemm`` checked on the CPU: each plan, run through an emulation of
column-major strided batched GEMM on the operands' raw buffers, gives NumPy's matmul.

The GPU runs the same plans through cuBLAS (tests/engine/test_cupy.py on a lent GPU); here the
emulation reads memory exactly as cuBLAS documents it (element (r, c) of a stored matrix at
r + c * ld, matrix i at i * stride), so a wrong transpose, leading dimension or batch stride
gives wrong numbers, not an error.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from services.engine.cuda_gemm import N, Gemm, plan

RNG = np.random.default_rng(7)


def in_buffer(shape: tuple[int, ...], pad: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """A C-contiguous array of ``shape`` inside a bigger 1-d buffer of random values (so that a
    read outside the array picks up numbers that show), and the buffer."""
    size = int(np.prod(shape))
    buf = RNG.standard_normal(size + 2 * pad)
    return buf[pad:pad + size].reshape(shape), buf


def offset(x: np.ndarray, buf: np.ndarray) -> int:
    return (x.__array_interface__["data"][0] - buf.__array_interface__["data"][0]) // x.itemsize


def stored(buf: np.ndarray, start: int, rows: int, cols: int, ld: int) -> np.ndarray:
    """A column-major (rows x cols) matrix with leading dimension ld at element ``start``."""
    return np.lib.stride_tricks.as_strided(buf[start:], shape=(rows, cols), strides=(buf.itemsize, ld * buf.itemsize))


def emulate(call: Gemm, a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray],
            c: tuple[np.ndarray, np.ndarray]) -> None:
    """What cuBLAS' ?gemmStridedBatched does with ``call`` on these buffers (alpha 1, beta 0)."""
    (first, fbuf), (second, sbuf) = (b, a) if call.swap else (a, b)
    out, obuf = c
    for i in range(call.batch):
        rows, cols = (call.m, call.k) if call.transa == N else (call.k, call.m)
        op_a = stored(fbuf, offset(first, fbuf) + i * call.stride_a, rows, cols, call.lda)
        rows, cols = (call.k, call.n) if call.transb == N else (call.n, call.k)
        op_b = stored(sbuf, offset(second, sbuf) + i * call.stride_b, rows, cols, call.ldb)
        op_a = op_a if call.transa == N else op_a.T
        op_b = op_b if call.transb == N else op_b.T
        target = stored(obuf, offset(out, obuf) + i * call.stride_c, call.m, call.n, call.ldc)
        target[...] = op_a @ op_b


def check(a: np.ndarray, abuf: np.ndarray, b: np.ndarray, bbuf: np.ndarray, c: np.ndarray, cbuf: np.ndarray) -> None:
    call = plan(a, b, c)
    assert call is not None
    outside = cbuf.copy()
    expected = np.matmul(a, b)
    emulate(call, (a, abuf), (b, bbuf), (c, cbuf))
    np.testing.assert_allclose(c, expected, rtol=1e-12, atol=1e-12)
    mask = np.ones(cbuf.size, dtype=bool)  # nothing outside c's elements was written
    mask[offset(c, cbuf) + np.add.outer(np.add.outer(np.arange(c.shape[0]) * c.strides[0],
                                                     np.arange(c.shape[1]) * c.strides[1]),
                                        np.arange(c.shape[2]) * c.strides[2]).ravel() // c.itemsize] = False
    np.testing.assert_array_equal(cbuf[mask], outside[mask])


def wide_block(members: int, n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """A layer's [W | b]^T block (M, in + 1, out) as a strided view of a flat (M, total)
    parameter buffer with another layer's numbers on either side, as ``layouts`` makes it."""
    flat, buf = in_buffer((members, 5 + (n_in + 1) * n_out + 4))
    return flat[:, 5:5 + (n_in + 1) * n_out].reshape(members, n_in + 1, n_out), buf


@pytest.mark.parametrize(("members", "n_in", "n_out", "points"), [
    (64, 32, 32, 50), (64, 1, 32, 50), (64, 32, 1, 50), (1, 8, 8, 7), (3, 1, 1, 9), (5, 64, 64, 33),
])
def test_every_product_of_a_model_first_step_matches_numpy(members: int, n_in: int, n_out: int, points: int) -> None:
    block, block_buf = wide_block(members, n_in, n_out)
    shared, shared_buf = in_buffer((n_in + 1, points))  # the first layer's input: x with its row of ones
    below, below_buf = in_buffer((members, n_in + 1, points))  # a hidden layer's input
    z, z_buf = in_buffer((members, n_out, points))
    for inputs, inputs_buf in ((shared, shared_buf), (below, below_buf)):
        check(np.swapaxes(block, 1, 2), block_buf, inputs, inputs_buf, z, z_buf)  # forward: z = [W|b] [a;1]
    dz, dz_buf = in_buffer((members, n_out, points))
    grad, grad_buf = wide_block(members, n_in, n_out)
    for inputs, inputs_buf in ((shared, shared_buf), (below, below_buf)):  # [dW|db]^T = [a;1] dz^T
        check(inputs, inputs_buf, np.swapaxes(dz, 1, 2), dz_buf, grad, grad_buf)
    da, da_buf = in_buffer((members, n_in, points))
    check(block[:, :n_in, :], block_buf, dz, dz_buf, da, da_buf)  # da = W^T dz


def test_a_transposed_output_and_single_rows_and_columns() -> None:
    a, abuf = in_buffer((4, 6, 5))
    b, bbuf = in_buffer((4, 5, 3))
    c_t, cbuf = in_buffer((4, 3, 6))
    check(a, abuf, b, bbuf, np.swapaxes(c_t, 1, 2), cbuf)  # column-major output matrices
    row, rbuf = in_buffer((4, 1, 5))
    out, obuf = in_buffer((4, 1, 3))
    check(row, rbuf, b, bbuf, out, obuf)
    col, cbuf2 = in_buffer((4, 5, 1))
    out2, obuf2 = in_buffer((4, 6, 1))
    check(a, abuf, col, cbuf2, out2, obuf2)


def test_views_cublas_cannot_read_get_no_plan() -> None:
    a, _ = in_buffer((4, 6, 10))
    b, _ = in_buffer((4, 5, 3))
    c, _ = in_buffer((4, 6, 3))
    assert plan(a[:, :, ::2], b, c) is None  # no unit stride in a's matrices
    assert plan(a[:, :, :5], b, c) is not None  # a leading dimension of 10 is fine
    assert plan(a[:, :, :5], b[:, ::-1], c) is None  # negative strides
    assert plan(a[:, :, :4], b, c) is None  # shapes that do not chain
    shared_out: Any = np.broadcast_to(c[0], c.shape)
    assert plan(a[:, :, :5], b, shared_out) is None  # an output with batch stride 0
