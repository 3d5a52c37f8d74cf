"""Engine benchmark: descent's training engine against PyTorch references, measured in one run.

Usage (from the repository root)::

    .venv/bin/python -m benchmarks.engine                      # W2, W3, W4, human table
    .venv/bin/python -m benchmarks.engine --quick              # smoke test, seconds
    .venv/bin/python -m benchmarks.engine --workloads W2 --repeat 5 --markdown
    .venv/bin/python -m benchmarks.engine --json               # one JSON list on stdout
    python benchmarks/engine.py --backend cupy --markdown      # on a GPU machine (CuPy, torch CUDA)

Workloads (see the issue):
  W2  a pack of 1000 StatQuest networks [1,2,1] softplus on 3 points x 1000 steps, float64.
      Bar: descent >= 6x faster than PyTorch batched autograd (a); the hand-written PyTorch
      batched backprop with the model axis last (b) and (full runs) the same autograd step
      under torch.compile (c) are shown for information.
  W3  one [1,64,64,1] softplus network on 10,000 points x 200 steps, float64 and float32.
  W4  a pack of 64 [1,32,32,1] tanh networks on 2,000 points x 200 steps, float64 and float32.
      Bars for W3 and W4: at least as fast as torch autograd (ratio >= 1) and at least 30% of
      the machine's matmul peak measured in the same run.

The service's own work per checkpoint chunk (the state copied to the host, the checkpoint
encoded, the history rows cut) is timed on the W4 pack against the training of that chunk
(``checkpoint_every`` = 100, the spec's default). Bar: <= 5%.

Every number in a row comes from the same process: the machine's matmul peak (a large NumPy
matmul of the row's dtype), descent, and the PyTorch references, all on the same cores. Both
sides start from the same initial parameters (descent's ``init_parameters``), so their final
SSRs are compared as a sanity check that they did the same computation.

Timed regions: descent = ``init_state`` + ``train`` (what a worker calls); torch = the training
loop on tensors already built from the same host arrays. Best of ``--repeat`` runs (default 3),
descent's and torch's runs interleaved so that load from other processes hits both alike. The
first line gives the load average at start: on a busy machine the ratios are not trustworthy.

Torch is only in the ``bench`` extra; it is imported lazily and its columns are skipped when it
is missing. The engine is used only through its public API (``services.engine``).

``--backend cupy`` runs descent on the GPU: x, y and the initial parameters are moved to the device
once, outside the timed region, and every timed run ends with ``cupy.cuda.Device().synchronize()``.
The torch references then run on CUDA when ``torch.cuda.is_available()`` (tensors moved once,
``torch.cuda.synchronize()`` before each timer stops), else on the CPU as with NumPy; the matmul
peak is a CuPy matmul. Each side's device is printed in the header and in a table column, and
JSON rows carry it under "device" (also with NumPy: "cpu"). On a device every contender runs once
untimed first (kernel compilation, cuBLAS handles, caching allocators). The bars were set for the
CPU comparison; on a GPU they are shown but mean little. The GPU's own bar: W4 on the GPU at
least 20x faster than descent's W4 on the CPU in the same run, on ``THREADS`` of the host's cores
(the size of ``make bench``'s machines; a child process held to them), with the figure on all
the host's cores beside it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as a file: make `services` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SETTLE_S = 0.25  # pause before each timed call, see best_of
THREADS = 2  # this machine's cores; torch is pinned to it, OpenBLAS uses all cores by default

Timed = tuple[float, np.ndarray]  # (best seconds, final SSR per member as float64)
# A contender: (one full timed training run, final SSR (M,) as float64 from that run's result).
Runner = tuple[Callable[[], Any], Callable[[Any], np.ndarray]]
BACKENDS = ("numpy", "cupy")  # descent's array namespace (--backend)

# Rough FLOPs per (hidden or output) unit per point for activation forward + derivative.
ACTIVATION_FLOPS = {"identity": 0, "relu": 2, "sigmoid": 10, "tanh": 8, "softplus": 12}


@dataclass(frozen=True)
class Sides:
    """Where each side runs: descent's array namespace and the torch device, with their syncs."""

    backend: str = "numpy"
    xp: Any = np
    sync: Callable[[], None] = lambda: None  # descent: wait for the device before a timer stops
    descent_device: str = "cpu"  # "cpu" or "cuda:<id> (<name>)"
    torch_device: str = "cpu"  # torch's device string: "cpu" or "cuda"
    torch_sync: Callable[[], None] = lambda: None
    torch_device_text: str | None = None  # None when torch is missing

    @property
    def on_device(self) -> bool:
        """True when either side runs on a GPU (then runs get an untimed warm-up first)."""
        return self.backend != "numpy" or self.torch_device != "cpu"


def short_device(text: str | None) -> str:
    """"cuda:0 (NVIDIA H100 ...)" -> "cuda:0"; None (no torch) -> "-"."""
    return "-" if text is None else text.split(" (")[0]


@dataclass(frozen=True)
class Workload:
    """One benchmark case: a pack of equal networks trained full-batch on shared data."""

    name: str
    layers: tuple[int, ...]
    activation: str
    members: int
    points: int
    steps: int
    dtypes: tuple[str, ...]
    lr: tuple[float, float]  # learning rates spread geometrically over the pack
    bar: float  # minimum torch_s / descent_s to pass
    repeat: int  # default best-of-N
    data: str  # "statquest" or "sine"
    peak_bar: float | None = None  # minimum share of the matmul peak to pass
    gpu_bar: float | None = None  # --backend cupy: minimum speed-up over descent on THREADS CPU cores


# Learning rates: the loss is the SSR (a sum over points, not a mean), so its curvature grows with
# the number of points P and a stable plain-GD lr shrinks like 1/P. Every member must run all its
# steps with finite numbers (a diverged member stops early, which is less work for descent, and
# inf/NaN arithmetic changes torch's speed), so (checked with init_parameters' seeds):
# W2: 0.005..0.3, all finite; the output bias alone has curvature 2P = 6, so lr > 1/3 oscillates
#     with growing amplitude: with the 0.5, 47 of the 1000 members overflow to inf.
# W3: 1e-6 decreases the SSR monotonically; 1e-5 is chaotic (SSR up to 2e6) and 1e-4 diverges.
# W4: 1e-6..3e-5 decreases monotonically for every member (checked on 1,000 and on 2,000 points);
#     1e-4 oscillates, 1e-3 gives NaN.
BOTH = ("float64", "float32")
FULL = {
    "W2": Workload("W2", (1, 2, 1), "softplus", members=1000, points=3, steps=1000,
                   dtypes=("float64",), lr=(0.005, 0.3), bar=6.0, repeat=3, data="statquest"),
    "W3": Workload("W3", (1, 64, 64, 1), "softplus", members=1, points=10_000, steps=200,
                   dtypes=BOTH, lr=(1e-6, 1e-6), bar=1.0, repeat=3, data="sine", peak_bar=0.30),
    "W4": Workload("W4", (1, 32, 32, 1), "tanh", members=64, points=2_000, steps=200,
                   dtypes=BOTH, lr=(1e-6, 3e-5), bar=1.0, repeat=3, data="sine", peak_bar=0.30,
                   gpu_bar=20.0),
}

# Same code paths at tiny sizes: the whole run takes seconds; the bars are not enforced.
QUICK = {
    "W2": replace(FULL["W2"], members=50, steps=50, repeat=1),
    "W3": replace(FULL["W3"], layers=(1, 16, 16, 1), points=500, steps=10, repeat=1),
    "W4": replace(FULL["W4"], layers=(1, 8, 8, 1), members=4, points=100, steps=10, repeat=1),
}


# ----------------------------------------------------------------------------- inputs


def make_data(w: Workload, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """The workload's points (P, 1) and targets (P, 1) in ``dtype``."""
    if w.data == "statquest":
        x, y = np.array([[0.0], [0.5], [1.0]]), np.array([[0.0], [1.0], [0.0]])
    else:
        x = np.linspace(-3.0, 3.0, w.points).reshape(-1, 1)
        y = np.sin(x)
    return x.astype(dtype), y.astype(dtype)


def make_parameters(w: Workload, dtype: str) -> dict[str, np.ndarray]:
    """Member i starts from ``init_parameters(arch, seed=i)``; stacked to (M, *shape)."""
    from services.engine import Architecture, init_parameters

    arch = Architecture(layers=w.layers, activation=w.activation, output_activation="identity")
    members = [init_parameters(arch, seed=i, dtype=dtype) for i in range(w.members)]
    return {name: np.stack([m[name] for m in members]).astype(dtype) for name in members[0]}


def learning_rates(w: Workload) -> np.ndarray:
    """Per-member learning rates, spread geometrically so the pack is heterogeneous."""
    return np.geomspace(w.lr[0], w.lr[1], w.members)


# ----------------------------------------------------------------------------- measures


def step_flops(w: Workload) -> float:
    """Approximate FLOPs of one full-batch update (one forward + one backward) for the pack.

    matmuls: forward 2*in*out per point per layer; backward twice that (dW and dA), so
             6 * n_weights * P * M (the first layer's dA is counted although unneeded).
    elementwise per point and member: bias add fwd+bwd (2 per unit), activation fwd+derivative
             (ACTIVATION_FLOPS per unit), residual, square, sum and its gradient (4 per output).
    The SGD update (2 per parameter) and the engine's extra SSR after the update are not counted,
    so GFLOP/s is a lower bound of the work done.
    """
    pairs = list(zip(w.layers[:-1], w.layers[1:]))
    weights = sum(i * o for i, o in pairs)
    hidden = sum(w.layers[1:-1])
    outputs = w.layers[-1]
    elementwise = 2 * (hidden + outputs) + ACTIVATION_FLOPS[w.activation] * hidden + 4 * outputs
    per_point = 6 * weights + elementwise
    return float(per_point * w.points * w.members)


def best_of(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """Best wall time of ``repeat`` calls (the least disturbed one) and the last result.

    Each call starts after a short pause: OpenBLAS worker threads keep spinning for about 0.1 s
    after a NumPy matmul (and torch's OpenMP threads after torch ops), and on two cores they
    measurably slow whichever library runs next (a 5 ms torch run took 0.1 s right after a
    matmul).
    """
    best, result = float("inf"), None
    for _ in range(max(1, repeat)):
        time.sleep(SETTLE_S)
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def interleaved_best(runners: dict[str, Runner], repeat: int, warmup: bool = False) -> dict[str, Timed]:
    """Best time of each contender, their runs interleaved (descent, torch, descent, torch...).

    Interleaving makes a burst of load from other processes hit both sides alike instead of
    only whichever ran during it. ``warmup``: one untimed run of each first (GPU: kernel
    compilation, library handles and memory pools stay out of the timings).
    """
    best = {name: float("inf") for name in runners}
    results: dict[str, Any] = {}
    if warmup:
        for once, _final in runners.values():
            once()
    for _ in range(max(1, repeat)):
        for name, (once, _final) in runners.items():
            seconds, results[name] = best_of(once, 1)
            best[name] = min(best[name], seconds)
    return {name: (best[name], final(results[name])) for name, (_once, final) in runners.items()}


def matmul_peak(dtype: str, n: int, repeat: int = 3, sides: Sides = Sides()) -> float:
    """This machine's practical peak in GFLOP/s: a large square NumPy (OpenBLAS) matmul, or with
    ``--backend cupy`` a CuPy (cuBLAS) matmul on the GPU, synchronized before the timer stops."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n)).astype(dtype), rng.standard_normal((n, n)).astype(dtype)
    if sides.backend == "numpy":
        a @ b  # warm the BLAS threads
        seconds, _ = best_of(lambda: a @ b, repeat)
        return 2.0 * n**3 / seconds / 1e9
    a, b = sides.xp.asarray(a), sides.xp.asarray(b)

    def product() -> None:
        a @ b
        sides.sync()

    product()  # cuBLAS handle and kernel selection
    seconds, _ = best_of(product, repeat)
    return 2.0 * n**3 / seconds / 1e9


# ----------------------------------------------------------------------------- descent


def prepare_descent(w: Workload, dtype: str, sides: Sides = Sides()) -> Runner:
    """Descent's timed run: init_state + train for all steps; the check that all steps ran.

    On a GPU backend the data and initial parameters are moved to the device here, once, and the
    timed run waits for the device before it returns."""
    from services.engine import Architecture, PackConfig, init_state, train

    xp, sync = sides.xp, sides.sync
    arch = Architecture(layers=w.layers, activation=w.activation, output_activation="identity")
    params, (x, y) = make_parameters(w, dtype), make_data(w, dtype)
    if sides.backend != "numpy":
        params = {name: xp.asarray(value) for name, value in params.items()}
        x, y = xp.asarray(x), xp.asarray(y)
    config = PackConfig(
        learning_rate=learning_rates(w),
        trainable={name: np.ones(w.members, dtype=bool) for name in params},
        max_steps=np.full(w.members, w.steps, dtype=np.int64),
        min_step_size=np.zeros(w.members),
        target_ssr=np.full(w.members, -np.inf),
        dtype=dtype,
    )

    def once() -> Any:
        state = init_state(xp, arch, config, params, x, y)
        new = train(xp, arch, config, state, x, y, w.steps)[0]
        sync()
        return new

    def final(state: Any) -> np.ndarray:
        arrays = state.to_arrays()
        check_all_steps(w, dtype, arrays["step"], arrays["stop_reason"])
        return np.asarray(arrays["ssr"], dtype=np.float64)

    return once, final


def check_all_steps(w: Workload, dtype: str, step: np.ndarray, stop_reason: np.ndarray) -> None:
    """Fail loudly when a member stopped early: its timing would not be comparable."""
    step = np.asarray(step)
    if np.all(step == w.steps):
        return
    from services.engine import STOP_REASONS

    codes, counts = np.unique(np.asarray(stop_reason)[step != w.steps], return_counts=True)
    reasons = {STOP_REASONS[int(c)]: int(n) for c, n in zip(codes, counts)}
    raise RuntimeError(
        f"{w.name} {dtype}: {int(np.sum(step != w.steps))} of {w.members} members stopped before "
        f"{w.steps} steps (steps {int(step.min())}..{int(step.max())}, reasons {reasons})"
    )


# ----------------------------------------------------------------------------- torch


def import_torch() -> Any | None:
    """Torch is optional (the ``bench`` extra): None when missing, so its columns are skipped."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(THREADS)
    weight = torch.ones((4, 4, 4), dtype=torch.float64, requires_grad=True)
    torch.bmm(weight, weight).sum().backward()  # start autograd's machinery outside the timings
    return torch


def torch_on_device(torch: Any, backend: str) -> tuple[str, Callable[[], None], str]:
    """(torch device, its synchronize, device text): CUDA with a GPU backend when torch sees a GPU,
    else the CPU (always with ``--backend numpy``, so the CPU comparison is unchanged)."""
    if backend == "numpy" or not torch.cuda.is_available():
        return "cpu", lambda: None, "cpu"
    try:
        index = torch.cuda.current_device()
        weight = torch.ones((4, 4, 4), dtype=torch.float64, device="cuda", requires_grad=True)
        torch.bmm(weight, weight).sum().backward()  # CUDA context, cuBLAS and autograd, untimed
        torch.cuda.synchronize()
    except Exception as exc:  # a torch build that sees the GPU but cannot use it: stay on the CPU
        return "cpu", lambda: None, f"cpu (torch CUDA unusable: {type(exc).__name__}: {exc})"
    return "cuda", torch.cuda.synchronize, f"cuda:{index} ({torch.cuda.get_device_name(index)})"


def tensor_copies(torch: Any, arrays: list[np.ndarray], device: str) -> Callable[[], list[Any]]:
    """Fresh tensors of ``arrays`` for each timed run (training updates them in place).

    On the CPU a host copy as ever; on CUDA the arrays are moved once, here, and each run clones
    them on the device."""
    if device == "cpu":
        return lambda: [torch.from_numpy(v.copy()) for v in arrays]
    moved = [torch.from_numpy(np.ascontiguousarray(v)).to(device) for v in arrays]
    return lambda: [t.clone() for t in moved]


def torch_activation(torch: Any, name: str) -> Callable[[Any], Any]:
    """The torch function for one of the engine's activation names."""
    functional = torch.nn.functional
    return {"identity": lambda z: z, "relu": torch.relu, "sigmoid": torch.sigmoid,
            "tanh": torch.tanh, "softplus": functional.softplus}[name]


def torch_forward(torch: Any, w: Workload, p: list[Any], x: Any) -> Any:
    """Forward pass, model axis first: bmm over the pack, or F.linear for a single network."""
    act, n = torch_activation(torch, w.activation), len(w.layers) - 1
    a = x if w.members == 1 else x.expand(w.members, -1, -1)
    for i in range(n):
        weight, bias = p[2 * i], p[2 * i + 1]
        if w.members == 1:
            z = torch.nn.functional.linear(a, weight[0], bias[0])
        else:
            z = torch.baddbmm(bias.unsqueeze(1), a, weight.transpose(1, 2))
        a = act(z) if i < n - 1 else z
    return a


def ssr_per_member(torch: Any, w: Workload, out: Any, y: Any) -> Any:
    """SSR per network, (M,)."""
    r = out - y
    return (r * r).sum(dim=(-2, -1)).reshape(w.members)


def prepare_torch_autograd(torch: Any, w: Workload, dtype: str, sides: Sides = Sides(),
                           params: dict[str, np.ndarray] | None = None, rates: np.ndarray | None = None) -> Runner:
    """Reference (a): plain autograd, sum of per-member SSRs, backward, manual SGD per member.
    ``params`` (M, *shape) and ``rates`` (M,) replace the workload's own (the sweep benchmark)."""
    params = make_parameters(w, dtype) if params is None else params
    x_np, y_np = make_data(w, dtype)
    device = sides.torch_device
    x, y = torch.from_numpy(x_np).to(device), torch.from_numpy(y_np).to(device)
    rates = learning_rates(w) if rates is None else rates
    lr = torch.from_numpy(rates.astype(dtype)).to(device)
    copies = tensor_copies(torch, list(params.values()), device)

    def once() -> list[Any]:
        p = [t.requires_grad_() for t in copies()]
        scales = [lr.reshape((w.members,) + (1,) * (t.dim() - 1)) for t in p]
        history = torch.empty((w.steps, w.members), dtype=x.dtype, device=x.device)
        for step in range(w.steps):
            ssr = ssr_per_member(torch, w, torch_forward(torch, w, p, x), y)
            ssr.sum().backward()
            with torch.no_grad():
                history[step] = ssr
                for t, s in zip(p, scales):
                    t.sub_(s * t.grad)
                    t.grad = None
        sides.torch_sync()
        return p

    def final(p: list[Any]) -> np.ndarray:
        with torch.no_grad():
            return ssr_per_member(torch, w, torch_forward(torch, w, p, x), y).double().cpu().numpy()

    return once, final


def prepare_torch_compiled(torch: Any, w: Workload, dtype: str, sides: Sides = Sides()) -> Runner:
    """Reference (c): reference (a) with forward and SSR under ``torch.compile`` (inductor; its
    backward graph is compiled with it). Compiled here, untimed; raises where it cannot compile."""
    params, (x_np, y_np) = make_parameters(w, dtype), make_data(w, dtype)
    device = sides.torch_device
    x, y = torch.from_numpy(x_np).to(device), torch.from_numpy(y_np).to(device)
    lr = torch.from_numpy(learning_rates(w).astype(dtype)).to(device)
    copies = tensor_copies(torch, list(params.values()), device)
    loss = torch.compile(lambda p: ssr_per_member(torch, w, torch_forward(torch, w, p, x), y), dynamic=False)

    def train(steps: int) -> list[Any]:
        p = [t.requires_grad_() for t in copies()]
        scales = [lr.reshape((w.members,) + (1,) * (t.dim() - 1)) for t in p]
        for _ in range(steps):
            loss(p).sum().backward()
            with torch.no_grad():
                for t, s in zip(p, scales):
                    t.sub_(s * t.grad)
                    t.grad = None
        sides.torch_sync()
        return p

    train(2)  # compile (forward and backward), outside the timings

    def final(p: list[Any]) -> np.ndarray:
        with torch.no_grad():
            return ssr_per_member(torch, w, torch_forward(torch, w, p, x), y).double().cpu().numpy()

    return (lambda: train(w.steps)), final


def activation_derivative(torch: Any, name: str, z: Any, a: Any) -> Any:
    """d activation / dz from the pre-activation z or the activation a (whichever is cheaper)."""
    if name == "softplus":
        return torch.sigmoid(z)
    if name == "tanh":
        return 1 - a * a
    if name == "sigmoid":
        return a * (1 - a)
    if name == "relu":
        return (z > 0).to(z.dtype)
    return torch.ones_like(z)


def prepare_torch_handwritten(torch: Any, w: Workload, dtype: str, sides: Sides = Sides()) -> Runner:
    """Reference (b): hand-written batched backprop, layout (units, points, members).

    With the model axis last and tiny layers, each layer is a broadcast multiply-and-sum over
    contiguous member vectors, which is what a fast pack engine for StatQuest-sized nets does.
    """
    params, (x_np, y_np) = make_parameters(w, dtype), make_data(w, dtype)
    device = sides.torch_device
    x = torch.from_numpy(np.ascontiguousarray(x_np.T[:, :, None])).to(device)  # (1, P, 1)
    y = torch.from_numpy(np.ascontiguousarray(y_np.T[:, :, None])).to(device)  # (n_out, P, 1)
    lr = torch.from_numpy(learning_rates(w).astype(dtype)).to(device)
    # a fresh copy every run: sub_ works in place and moveaxis may return a view of params
    copies = tensor_copies(torch, [np.moveaxis(v, 0, -1) for v in params.values()], device)

    def once() -> list[Any]:
        p = copies()
        history = torch.empty((w.steps, w.members), dtype=x.dtype, device=x.device)
        with torch.inference_mode():
            for step in range(w.steps):
                history[step] = handwritten_step(torch, w, p, x, y, lr)
        sides.torch_sync()
        return p

    def final(p: list[Any]) -> np.ndarray:
        with torch.inference_mode():
            out = handwritten_forward(torch, w, p, x)[-1][1]
            return ((out - y) ** 2).sum(dim=(0, 1)).double().cpu().numpy()

    return once, final


def handwritten_forward(torch: Any, w: Workload, p: list[Any], x: Any) -> list[tuple[Any, Any]]:
    """Forward pass keeping (z, a) per layer; weights (out, in, M), activations (n, P, M)."""
    act, n = torch_activation(torch, w.activation), len(w.layers) - 1
    a, cache = x, [(None, x)]
    for i in range(n):
        weight, bias = p[2 * i], p[2 * i + 1]
        z = (weight.unsqueeze(2) * a.unsqueeze(0)).sum(1) + bias.unsqueeze(1)
        a = act(z) if i < n - 1 else z
        cache.append((z, a))
    return cache


def handwritten_step(torch: Any, w: Workload, p: list[Any], x: Any, y: Any, lr: Any) -> Any:
    """One SGD update in place; returns the SSR (M,) at the parameters before the update."""
    cache, n = handwritten_forward(torch, w, p, x), len(w.layers) - 1
    residual = cache[-1][1] - y
    ssr = (residual * residual).sum(dim=(0, 1))
    grad = 2 * residual  # dSSR/dz of the identity output layer
    for i in reversed(range(n)):
        if i < n - 1:
            z, a = cache[i + 1]
            grad = grad * activation_derivative(torch, w.activation, z, a)
        a_in, weight = cache[i][1], p[2 * i]
        grad_w = (grad.unsqueeze(1) * a_in.unsqueeze(0)).sum(2)
        grad_b = grad.sum(1)
        if i > 0:
            grad = (weight.unsqueeze(2) * grad.unsqueeze(1)).sum(0)
        weight.sub_(lr * grad_w)
        p[2 * i + 1].sub_(lr * grad_b)
    return ssr


# ----------------------------------------------------------------------------- rows and output


def measure(w: Workload, dtype: str, torch: Any | None, repeat: int, peak: float,
            sides: Sides = Sides(), compiled: bool = False) -> dict[str, Any]:
    """One row: descent and torch timings for a workload and dtype, plus derived columns."""
    runners = {"descent": prepare_descent(w, dtype, sides)}
    if torch is not None:  # the first reference is the bar's: plain autograd, reference (a)
        runners[torch_variants(w)[0]] = prepare_torch_autograd(torch, w, dtype, sides)
        if w.name == "W2":
            runners[torch_variants(w)[1]] = prepare_torch_handwritten(torch, w, dtype, sides)
            if compiled:
                try:
                    runners["autograd-bmm-compiled"] = prepare_torch_compiled(torch, w, dtype, sides)
                except Exception as exc:  # no C++ compiler, an unsupported platform: say so
                    print(f"torch.compile unavailable for {w.name}: {type(exc).__name__}: {str(exc)[:200]}",
                          file=sys.stderr)
    timed = interleaved_best(runners, w.repeat if repeat <= 0 else repeat, warmup=sides.on_device)
    descent_s, descent_ssr = timed.pop("descent")
    gflops = step_flops(w) * w.steps / descent_s / 1e9
    row: dict[str, Any] = {
        "workload": w.name, "dtype": dtype, "members": w.members, "points": w.points,
        "steps": w.steps, "layers": list(w.layers), "activation": w.activation,
        "descent_s": descent_s, "steps_per_s": w.steps / descent_s, "gflops": gflops,
        "peak_gflops": peak, "peak_share": gflops / peak, "bar": w.bar, "peak_bar": w.peak_bar,
        "torch_s": None, "torch_variant": None, "ratio": None, "pass": None, "torch_refs": {},
        "device": {"descent": sides.descent_device, "torch": sides.torch_device_text},
    }
    for variant, (seconds, ssr) in timed.items():
        if not np.all(np.isfinite(ssr)):
            raise RuntimeError(f"{w.name} {dtype} torch {variant}: non-finite SSR, lower the lr")
        row["torch_refs"][variant] = {"torch_s": seconds, "ratio": seconds / descent_s,
                                      "ssr_median_rel_diff": relative_difference(descent_ssr, ssr)}
    if timed:
        variant = next(iter(timed))
        row.update(torch_s=timed[variant][0], torch_variant=variant,
                   ratio=timed[variant][0] / descent_s)
        row["pass"] = bool(row["ratio"] >= w.bar and (w.peak_bar is None or row["peak_share"] >= w.peak_bar))
    if sides.backend != "numpy" and w.gpu_bar is not None:
        try:
            row["gpu_vs_cpu"] = gpu_vs_cpu(w, dtype, descent_s, w.repeat if repeat <= 0 else repeat)
        except Exception as exc:  # the rest of the table still counts: say why this line is missing
            print(f"{w.name} {dtype}: no CPU comparison: {type(exc).__name__}: {str(exc)[:300]}", file=sys.stderr)
    return row


def gpu_vs_cpu(w: Workload, dtype: str, gpu_s: float, repeat: int) -> dict[str, Any]:
    """The same descent run on this host's CPU (NumPy), in the same run: the GPU's speed-up over
    it, against the workload's ``gpu_bar``. The bar's CPU figure is the one ``make bench`` gives
    on its machines, ``THREADS`` cores: on a host with more, that run is a child process held to
    that many CPUs; the figure on every core of the host is given beside it."""
    cores = len(os.sched_getaffinity(0))
    all_s = descent_cpu_seconds(w, dtype, repeat)
    bench_s = pinned_cpu_seconds(w, dtype, repeat, THREADS) if cores > THREADS else all_s
    speedup = bench_s / gpu_s
    return {"cpu_s": bench_s, "cpu_cores": min(cores, THREADS), "cpu_all_s": all_s, "cores": cores,
            "gpu_s": gpu_s, "speedup": speedup, "speedup_all_cores": all_s / gpu_s, "bar": w.gpu_bar,
            "pass": bool(speedup >= w.gpu_bar)}


def descent_cpu_seconds(w: Workload, dtype: str, repeat: int) -> float:
    """Best time of descent's run of ``w`` on NumPy, every member checked to run all its steps."""
    once, final = prepare_descent(w, dtype)
    seconds, state = best_of(once, repeat)
    final(state)
    return seconds


def pinned_cpu_seconds(w: Workload, dtype: str, repeat: int, cpus: int) -> float:
    """``descent_cpu_seconds`` in a child process allowed on ``cpus`` CPUs only, so that its BLAS
    and chunk threads (which count the CPUs when they start) see a machine of that size."""
    allowed = sorted(os.sched_getaffinity(0))[:cpus]
    code = ("import json, sys; from benchmarks.engine import Workload, descent_cpu_seconds; "
            "f = {k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(sys.argv[1]).items()}; "
            "from services.engine.parallel import cores; "
            "print(descent_cpu_seconds(Workload(**f), sys.argv[2], int(sys.argv[3])), cores())")
    out = subprocess.run([sys.executable, "-c", code, json.dumps(asdict(w)), dtype, str(repeat)],
                         cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=900,
                         preexec_fn=lambda: os.sched_setaffinity(0, allowed))
    if out.returncode != 0:
        raise RuntimeError(f"the CPU run on {cpus} CPUs failed: {out.stderr[-1000:]}")
    seconds, seen = out.stdout.split()[-2:]
    if int(seen) != len(allowed):
        raise RuntimeError(f"the CPU run was to see {len(allowed)} CPUs, it saw {seen}")
    return float(seconds)


def torch_variants(w: Workload) -> tuple[str, str]:
    """Names of reference (a), plain autograd, and (b), the hand-written batched backprop."""
    return ("autograd-bmm" if w.members > 1 else "autograd-linear"), "hand-backprop-model-last"


def relative_difference(a: np.ndarray, b: np.ndarray) -> float:
    """Median relative difference of the final SSRs: both sides must have done the same training.

    The median, not the max: W2's high-lr members oscillate chaotically, so rounding differences
    grow to O(1) there (the two torch references disagree with each other just as much), while a
    different computation would move every member.
    """
    return float(np.median(np.abs(a - b) / np.maximum(np.abs(b), 1e-12)))


def environment(torch: Any | None, sides: Sides = Sides()) -> list[str]:
    """Versions, BLAS and load, so that a result can be read against the machine that made it."""
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        blas_text = f"{blas.get('name')} {blas.get('version')}"
    except Exception:  # the config layout is not a stable API
        blas_text = "unknown"
    torch_text = (f"{torch.__version__}, {torch.get_num_threads()} threads"
                  if torch is not None else "not installed")
    load = os.getloadavg()[0]
    busy = " (other work may share the cores: compare with care)" if load > 1.0 else ""
    lines = [f"cpu: {cpu_model()}, {os.cpu_count()} cores, load average {load:.2f} at start{busy}",
             f"numpy {np.__version__}, BLAS {blas_text}", f"torch: {torch_text}", cpu_paths()]
    if sides.backend != "numpy":
        lines.append(f"{sides.backend} {sides.xp.__version__}, {cuda_versions(sides.xp)}")
    if sides.on_device:
        torch_where = f"on {sides.torch_device_text}" if sides.torch_device_text else "not installed"
        lines.append(f"devices: descent ({sides.backend}) on {sides.descent_device}; torch {torch_where}")
    return lines


def cpu_paths() -> str:
    """The engine's paths on NumPy: a slow CPU row on another machine may mean that one of the
    optional fast paths (numba's kernels, the fused wide network on NumPy's OpenBLAS) is missing."""
    from services.engine.backend import kernels_for

    kernels = kernels_for(np)[0]
    try:
        import numba

        numba_text = f"numba {numba.__version__}"
    except ImportError:
        numba_text = "no numba"
    try:
        importlib.import_module("services.engine.numba_wide")
        wide = "fused (numba on NumPy's OpenBLAS)"
    except ImportError as exc:
        wide = f"NumPy's matmul ({str(exc)[:120]})"
    return f"engine on NumPy: {kernels} kernels, wide layers {wide}, {numba_text}"


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo) and the kernels OpenBLAS picked for it
    (threadpoolctl): ratios against the CPU move with both (benchmarks/RESULTS.md)."""
    name = "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            name = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), name)
    except OSError:
        pass
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return name
    kernels = sorted({str(lib.get("architecture")) for lib in threadpool_info() if lib.get("internal_api") == "openblas"})
    return f"{name} (OpenBLAS {', '.join(kernels)} kernels)" if kernels else name


def cuda_versions(cupy: Any) -> str:
    """CUDA runtime and driver versions as CuPy sees them (best effort)."""
    try:
        runtime = cupy.cuda.runtime
        return f"CUDA runtime {runtime.runtimeGetVersion()}, driver {runtime.driverGetVersion()}"
    except Exception as exc:  # informational only
        return f"CUDA versions unknown ({type(exc).__name__})"


HEADERS = ("workload", "dtype", "descent s", "steps/s", "GFLOP/s", "% of peak",
           "torch s (variant)", "ratio torch/descent", "bar", "result")


DEVICE_HEADER = "device descent / torch"


def shows_devices(rows: list[dict[str, Any]]) -> bool:
    """The device column appears only when a side ran off the CPU (the CPU table is unchanged)."""
    return any(d not in ("cpu", None) for row in rows for d in row["device"].values())


def headers(rows: list[dict[str, Any]]) -> tuple[str, ...]:
    """Column titles: HEADERS, plus the device column when a side ran on a GPU."""
    return HEADERS + ((DEVICE_HEADER,) if shows_devices(rows) else ())


def table_lines(row: dict[str, Any], devices: bool = False) -> list[tuple[str, ...]]:
    """Table cells for a row: one line for the bar reference, one per extra torch reference."""
    head = (row["workload"], row["dtype"], f"{row['descent_s']:.3f}", f"{row['steps_per_s']:.0f}",
            f"{row['gflops']:.2f}", f"{100 * row['peak_share']:.1f}%")
    bar = f">= {row['bar']:.2f}x" + (f", >= {100 * row['peak_bar']:.0f}% peak" if row.get("peak_bar") else "")
    tail = ((f"{short_device(row['device']['descent'])} / {short_device(row['device']['torch'])}",)
            if devices else ())
    if row["torch_s"] is None:
        return [head + ("n/a (no torch)", "-", bar, "-") + tail]
    lines = []
    for variant, ref in row["torch_refs"].items():
        is_bar = variant == row["torch_variant"]
        result = ("PASS" if row["pass"] else "FAIL") if is_bar else "info"
        lines.append(head + (f"{ref['torch_s']:.3f} ({variant})", f"{ref['ratio']:.2f}",
                             bar if is_bar else "-", result) + tail)
    return lines


def render_text(rows: list[dict[str, Any]]) -> str:
    """Fixed-width table for a terminal."""
    titles, devices = headers(rows), shows_devices(rows)
    cells = [titles] + [line for row in rows for line in table_lines(row, devices)]
    widths = [max(len(c[i]) for c in cells) for i in range(len(titles))]

    def fmt(line: tuple[str, ...]) -> str:
        cells = (c.rjust(n) if i > 1 else c.ljust(n) for i, (c, n) in enumerate(zip(line, widths)))
        return "  ".join(cells)

    rule = "  ".join("-" * n for n in widths)
    return "\n".join([fmt(cells[0]), rule] + [fmt(c) for c in cells[1:]])


def render_markdown(rows: list[dict[str, Any]]) -> str:
    """The same table as Markdown (for benchmarks/RESULTS.md)."""
    titles, devices = headers(rows), shows_devices(rows)
    aligns = ["---"] * 2 + ["---:"] * 8 + (["---"] if devices else [])
    lines = ["| " + " | ".join(titles) + " |", "|" + "|".join(aligns) + "|"]
    lines += ["| " + " | ".join(c) + " |" for row in rows for c in table_lines(row, devices)]
    return "\n".join(lines)


def command_line() -> str:
    """The exact command that produced the output, to reproduce it."""
    spec = globals().get("__spec__")
    target = ["-m", spec.name] if spec is not None and spec.name != "__main__" else [sys.argv[0]]
    return shlex.join([sys.executable, *target, *sys.argv[1:]])


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    parser = argparse.ArgumentParser(description="Benchmark descent's engine against PyTorch.")
    parser.add_argument("--workloads", default="W2,W3,W4", help="comma-separated, e.g. W2,W4")
    parser.add_argument("--repeat", type=int, default=0, help="best of N (default: per workload)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, a smoke test in seconds")
    parser.add_argument("--backend", choices=BACKENDS, default="numpy",
                        help="descent's array namespace: numpy (CPU, default) or cupy (GPU; torch then "
                             "uses CUDA when it sees a GPU)")
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print only a JSON list of rows")
    out.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    args = parser.parse_args(argv)
    known = QUICK if args.quick else FULL
    args.selected = [name.strip().upper() for name in args.workloads.split(",") if name.strip()]
    unknown = [name for name in args.selected if name not in known]
    if unknown or not args.selected:
        parser.error(f"unknown workloads {unknown}; choose from {','.join(known)}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the selected workloads; exit status 1 when a bar is missed (never with --quick), 2 when
    the backend cannot be used (e.g. ``--backend cupy`` without CuPy or a GPU)."""
    global SETTLE_S
    args = parse_args(argv)
    workloads = QUICK if args.quick else FULL
    if args.quick:  # a smoke test: its timings mean nothing, so skip the pauses
        SETTLE_S = 0.0
    torch = import_torch()
    try:
        sides = make_sides(args.backend, torch)
    except Exception as exc:  # CuPy missing, or no CUDA driver/device: say so, no traceback
        print(f"--backend {args.backend} is not usable here: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    say = (lambda text: print(text, file=sys.stderr)) if args.json else print
    if not args.json:
        say(f"`{command_line()}`\n" if args.markdown else f"$ {command_line()}")
    if torch is None:
        say("torch is not installed (pip install 'descent[bench]'): torch columns are skipped")
    if args.backend == "numpy":
        peak_n, peak_name = (256 if args.quick else 2048), "NumPy"
    else:
        peak_n, peak_name = (512 if args.quick else 4096), "CuPy"
    dtypes = dict.fromkeys(d for name in args.selected for d in workloads[name].dtypes)
    peaks = {dtype: matmul_peak(dtype, peak_n, sides=sides) for dtype in dtypes}
    if not args.json:
        peak_text = ", ".join(f"{d} {g:.1f} GFLOP/s" for d, g in peaks.items())
        lines = environment(torch, sides) + [f"matmul peak ({peak_name} n={peak_n}, this run): {peak_text}"]
        say("\n".join(("- " if args.markdown else "") + line for line in lines) + "\n")
    rows = []
    for name in args.selected:
        for dtype in workloads[name].dtypes:
            rows.append(measure(workloads[name], dtype, torch, args.repeat, peaks[dtype], sides,
                                compiled=not args.quick and not sides.on_device))
            if name == "W4" and sides.backend == "numpy":
                rows[-1]["service_overhead"] = service_overhead(workloads[name], dtype)
            row = rows[-1]  # progress on stderr: a run cut short by a time limit still tells
            torch_s = "-" if row["torch_s"] is None else f"{row['torch_s']:.4f} s ({row.get('torch_variant')})"
            print(f"[{name} {dtype}] descent {row['descent_s']:.4f} s, torch {torch_s}", file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        say(render_markdown(rows) if args.markdown else render_text(rows))
        say(check_lines(rows))
        say(overhead_lines(rows))
        say(gpu_lines(rows))
    missed = [row for row in rows if not row.get("service_overhead", {}).get("pass", True)
              or not row.get("gpu_vs_cpu", {}).get("pass", True)]
    if missed and not args.quick:
        return 1
    if args.quick:  # a smoke test: tiny sizes say nothing about the bars
        say("(--quick: tiny sizes, the bars are not meaningful and not enforced)")
        return 0
    return 0 if all(row["pass"] is not False for row in rows) else 1


def make_sides(backend: str, torch: Any | None) -> Sides:
    """Descent's namespace and torch's device for ``--backend``; raises when CuPy is missing
    (ImportError) or sees no usable GPU (CuPy's CUDA errors)."""
    torch_device, torch_sync, torch_text = "cpu", (lambda: None), "cpu"
    if torch is not None:
        torch_device, torch_sync, torch_text = torch_on_device(torch, backend)
    if backend == "numpy":
        return Sides(torch_device=torch_device, torch_sync=torch_sync,
                     torch_device_text=torch_text if torch is not None else None)
    from services.engine import get_namespace

    xp = get_namespace(backend)
    if xp.cuda.runtime.getDeviceCount() < 1:
        raise RuntimeError("CuPy sees no CUDA device")
    device = xp.cuda.Device()
    name = xp.cuda.runtime.getDeviceProperties(device.id)["name"]
    name = name.decode() if isinstance(name, bytes) else str(name)
    return Sides(backend=backend, xp=xp, sync=device.synchronize, descent_device=f"cuda:{device.id} ({name})",
                 torch_device=torch_device, torch_sync=torch_sync,
                 torch_device_text=torch_text if torch is not None else None)


# The service's own work per chunk must stay under this share of the chunk's training time.
OVERHEAD_BAR = 0.05
CHECKPOINT_EVERY = 100  # the job spec's default checkpoint_every


def service_overhead(w: Workload, dtype: str, repeat: int = 3) -> dict[str, Any]:
    """What ``services/training.py`` does on the host per chunk besides training, timed on this
    pack: read the steps, copy the state to the host (``to_arrays``), encode every member's
    checkpoint (``pack_members``) and cut the history rows, against ``train`` of the chunk."""
    from services.db.arrays import pack_members
    from services.engine import Architecture, PackConfig, init_state, to_host, train

    steps = min(CHECKPOINT_EVERY, w.steps)
    arch = Architecture(layers=w.layers, activation=w.activation, output_activation="identity")
    (x, y), params = make_data(w, dtype), make_parameters(w, dtype)
    config = PackConfig(learning_rate=learning_rates(w), max_steps=np.full(w.members, 10 * w.steps), dtype=dtype)
    state = init_state(np, arch, config, params, x, y)
    train_s, (state, history) = best_of(lambda: train(np, arch, config, state, x, y, steps), repeat)

    def host_work() -> None:
        old = np.array(to_host(np, state.step), dtype=np.int64)
        arrays = state.to_arrays()
        pack_members(arrays)
        [history[i, :steps] for i in range(len(old))]

    host_s, _ = best_of(host_work, repeat)
    share = host_s / train_s
    return {"checkpoint_every": steps, "train_s": train_s, "host_s": host_s, "share": share,
            "bar": OVERHEAD_BAR, "pass": bool(share <= OVERHEAD_BAR)}


def overhead_lines(rows: list[dict[str, Any]]) -> str:
    """One line per W4 row: the service's host work per chunk against the chunk's training."""
    lines = []
    for r in rows:
        o = r.get("service_overhead")
        if o:
            lines.append(f"service overhead per chunk, {r['workload']} {r['dtype']} (checkpoint_every "
                         f"{o['checkpoint_every']}): {1000 * o['host_s']:.2f} ms host work vs "
                         f"{1000 * o['train_s']:.0f} ms training = {100 * o['share']:.2f}% "
                         f"[bar <= {100 * o['bar']:.0f}%: {'PASS' if o['pass'] else 'FAIL'}]")
    return "\n".join(lines)


def gpu_lines(rows: list[dict[str, Any]]) -> str:
    """One line per GPU row that has a CPU comparison (``--backend cupy``, W4)."""
    lines = []
    for r in rows:
        g = r.get("gpu_vs_cpu")
        if g:
            lines.append(f"GPU vs CPU, {r['workload']} {r['dtype']}: descent {g['gpu_s']:.4f} s on "
                         f"{r['device']['descent']} vs {g['cpu_s']:.4f} s on NumPy, {g['cpu_cores']} of this "
                         f"host's cores (make bench's machines) = {g['speedup']:.1f}x [bar >= {g['bar']:.0f}x: "
                         f"{'PASS' if g['pass'] else 'FAIL'}]; on all {g['cores']} cores {g['cpu_all_s']:.4f} s "
                         f"= {g['speedup_all_cores']:.1f}x")
    return "\n".join(lines)


def check_lines(rows: list[dict[str, Any]]) -> str:
    """Sanity line: descent and torch started from the same parameters, so final SSRs agree."""
    diffs = [f"{r['workload']} {r['dtype']} {v}: {ref['ssr_median_rel_diff']:.1e}"
             for r in rows for v, ref in r["torch_refs"].items()]
    text = "; ".join(diffs) or "n/a"
    return f"\nsame start, final SSR median relative difference descent vs torch: {text}"


if __name__ == "__main__":
    sys.exit(main())
