"""Where W4's time goes on CuPy: what the next change to the CuPy path needs to know.

Run by ``benchmarks/gpu_check.sh`` on a lent GPU machine (``python benchmarks/gpu_probe.py``):

1. ``train`` for 1, 20 and 200 steps: the fixed cost of a call and the cost of a step; which
   networks hold CUDA graphs of blocks (``services.engine.cuda_graphs``) or why graphs are off;
   200 steps with blocks run kernel by kernel instead of as graphs (and whether the two give the
   same bits), with the stop tests read after every update instead of once per block
   (``services.engine.blocks``), with one CuPy ufunc per op instead of ``cupy_kernels``, and
   with ``cupy.matmul`` instead of ``cuda_gemm``'s direct cuBLAS calls: what each gains.
2. CuPy's own profiler (``cupyx.profiler.benchmark``) on 20 steps: CPU time against GPU time. When
   the two are close, the loop is bound by launching kernels, not by the GPU.
3. The loop's updates with no stop tests at all, and a block's updates kernel by kernel: what
   the tests' kernels cost.

Step 3 reaches into ``services.engine.loop.Trainer`` on purpose: it times variants of the loop
that the engine does not have. Each step prints its own line; a failure prints its traceback and
the probe goes on.
"""

from __future__ import annotations

import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np

if __package__ in (None, ""):  # run as a file: make `services` and `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import engine as bench  # noqa: E402
from services.engine import Architecture, PackConfig, init_state, train  # noqa: E402
from services.engine.loop import Trainer  # noqa: E402
from services.engine.training import network  # noqa: E402

W4 = bench.FULL["W4"]


def setup(cp: Any, dtype: str) -> tuple[Architecture, PackConfig, dict[str, Any], Any, Any]:
    """W4 on the device, with no stop rule that could end it early (max_steps far away)."""
    arch = Architecture(layers=W4.layers, activation=W4.activation, output_activation="identity")
    params = {k: cp.asarray(v) for k, v in bench.make_parameters(W4, dtype).items()}
    x, y = (cp.asarray(a) for a in bench.make_data(W4, dtype))
    config = PackConfig(learning_rate=bench.learning_rates(W4),
                        trainable={n: np.ones(W4.members, dtype=bool) for n in params},
                        max_steps=np.full(W4.members, 10**6, dtype=np.int64), min_step_size=np.zeros(W4.members),
                        target_ssr=np.full(W4.members, -np.inf), dtype=dtype)
    return arch, config, params, x, y


def wall(cp: Any, fn: Callable[[], Any], repeat: int = 3) -> float:
    """Best wall time of ``repeat`` calls, the device synchronised before and after each."""
    best = float("inf")
    for _ in range(repeat):
        cp.cuda.Device().synchronize()
        t0 = time.perf_counter()
        fn()
        cp.cuda.Device().synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def per_step(label: str, seconds: float, steps: int) -> None:
    print(f"{label}: {1000 * seconds:.2f} ms for {steps} steps ({1e6 * seconds / steps:.1f} us/step)", flush=True)


def eager(cp: Any, dtype: str) -> None:
    """Items 1 and 2: the engine's ``train`` as it is."""
    arch, config, params, x, y = setup(cp, dtype)
    state = init_state(cp, arch, config, params, x, y)
    for steps in (1, 20, 200):
        train(cp, arch, config, state, x, y, steps)  # warm: kernels compiled, pool filled
        per_step(f"train {steps}", wall(cp, lambda: train(cp, arch, config, state, x, y, steps)), steps)
    from services.engine import blocks

    from services.engine import cuda_graphs, training

    print(f"CUDA graphs kept on the pooled networks: {graph_report(training)}", flush=True)
    cuda_graphs.ENABLED = False
    try:
        train(cp, arch, config, state, x, y, 200)
        per_step("train 200, blocks run kernel by kernel (no CUDA graphs)",
                 wall(cp, lambda: train(cp, arch, config, state, x, y, 200)), 200)
        without = train(cp, arch, config, state, x, y, 200)
    finally:
        cuda_graphs.ENABLED = True
    with_graphs = train(cp, arch, config, state, x, y, 200)
    same = all(bool((cp.asarray(a) == cp.asarray(b)).all()) for a, b in
               zip(with_graphs[0].to_arrays().values(), without[0].to_arrays().values()))
    print(f"train 200 with CUDA graphs bit-equal to without: {same}", flush=True)
    blocks.FORCE = 0
    try:
        train(cp, arch, config, state, x, y, 200)
        per_step("train 200, stop tests read after every update (no blocks)",
                 wall(cp, lambda: train(cp, arch, config, state, x, y, 200)), 200)
    finally:
        blocks.FORCE = None
    from services.engine import cuda_gemm

    for label, kernels, direct in (("one CuPy ufunc per op (kernels='numpy')", "numpy", True),
                                   ("cupy.matmul, not one cuBLAS call per product", "auto", False)):
        cuda_gemm.DIRECT = direct
        try:
            train(cp, arch, config, state, x, y, 200, kernels=kernels)
            per_step(f"train 200, {label}",
                     wall(cp, lambda: train(cp, arch, config, state, x, y, 200, kernels=kernels)), 200)
        finally:
            cuda_gemm.DIRECT = True
    from cupyx.profiler import benchmark

    print("cupyx.profiler.benchmark, train 20:",
          benchmark(lambda: train(cp, arch, config, state, x, y, 20), n_repeat=5, n_warmup=1), flush=True)


def unchecked(cp: Any, dtype: str) -> None:
    """Item 3: the loop's updates with no stop tests, and a block's updates kernel by kernel."""
    arch, config, params, x, y = setup(cp, dtype)
    state = init_state(cp, arch, config, params, x, y)
    with network(cp, arch, W4.members, dtype, "auto") as net:
        t = Trainer(cp, net, config, state, x, y)
        hist, health = cp.empty((200, W4.members), dtype=dtype), cp.empty(200, dtype=dtype)
        t._gradient(t.params_views, 0)

        def steps(k: int) -> None:
            for j in range(k):  # _update, _evaluate and _swap as Trainer.run does; the health
                t._update(j)  # sum goes to a device array, nothing is read
                ssr = t._evaluate(j + 1, True, hist[j])
                health[j] = ssr.sum() + t.spare.sum()
                t._swap()

        flags = cp.zeros(200, dtype=bool)

        def block(k: int) -> None:  # a block's updates (services.engine.blocks), flags not read
            for j in range(k):
                t._flagged_update(j, 10**9, hist, flags[j:j + 1])

        steps(2)
        block(2)
        per_step("updates with no stop tests", wall(cp, lambda: steps(200)), 200)
        per_step("a block's updates kernel by kernel, their flags left on the device", wall(cp, lambda: block(200)), 200)


def graph_report(training: Any) -> str:
    """What the pooled networks hold: graphs captured, or why graphs are off."""
    parts = []
    for key, net in training._POOL.items():
        graphs = net.graphs
        held = f"OFF ({graphs.off})" if graphs.off else f"{len(graphs.captured)} graph(s), warm for {sorted(graphs.warm)}"
        parts.append(f"{key[1].layers}x{key[2]} {key[3]}: {held}")
    return "; ".join(parts) or "no pooled network"


def main() -> int:
    try:
        import cupy as cp
    except ImportError as exc:
        print(f"no CuPy: {exc}")
        return 3
    for dtype in ("float64", "float32"):
        print(f"== W4 {dtype} ({W4.members} x {list(W4.layers)} {W4.activation}, {W4.points} points)", flush=True)
        for part in (eager, unchecked):
            try:
                part(cp, dtype)
            except Exception:  # noqa: BLE001 (a probe: report and go on)
                traceback.print_exc()
    return 0


if __name__ == "__main__":
    sys.exit(main())
