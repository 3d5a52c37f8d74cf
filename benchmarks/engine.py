"""Engine benchmark: descent's training engine against PyTorch references, measured in one run.

Usage (from the repository root)::

    .venv/bin/python -m benchmarks.engine                      # W2, W3, W4, human table
    .venv/bin/python -m benchmarks.engine --quick              # smoke test, seconds
    .venv/bin/python -m benchmarks.engine --workloads W2 --repeat 5 --markdown
    .venv/bin/python -m benchmarks.engine --json               # one JSON list on stdout

Workloads (see the issue):
  W2  a pack of 1000 StatQuest networks [1,2,1] softplus on 3 points x 1000 steps, float64.
      Bar: descent >= 3x faster than PyTorch batched autograd (a); the hand-written PyTorch
      batched backprop with the model axis last (b) is shown for information.
  W3  one [1,64,64,1] softplus network on 10,000 points x 200 steps. Bar: within 1.5x of torch.
  W4  a pack of 64 [1,32,32,1] tanh networks on 1,000 points x 100 steps. Bar: within 1.5x.

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
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
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

# Rough FLOPs per (hidden or output) unit per point for activation forward + derivative.
ACTIVATION_FLOPS = {"identity": 0, "relu": 2, "sigmoid": 10, "tanh": 8, "softplus": 12}


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


# Learning rates: the loss is the SSR (a sum over points, not a mean), so its curvature grows with
# the number of points P and a stable plain-GD lr shrinks like 1/P. Every member must run all its
# steps with finite numbers (a diverged member stops early, which is less work for descent, and
# inf/NaN arithmetic changes torch's speed), so (checked with init_parameters' seeds):
# W2: 0.005..0.3, all finite; the output bias alone has curvature 2P = 6, so lr > 1/3 oscillates
#     with growing amplitude: with the 0.5, 47 of the 1000 members overflow to inf.
# W3: 1e-6 decreases the SSR monotonically; 1e-5 is chaotic (SSR up to 2e6) and 1e-4 diverges.
# W4: 1e-6..3e-5 decreases monotonically for every member; 1e-4 oscillates, 1e-3 gives NaN.
BOTH = ("float64", "float32")
FULL = {
    "W2": Workload("W2", (1, 2, 1), "softplus", members=1000, points=3, steps=1000,
                   dtypes=("float64",), lr=(0.005, 0.3), bar=3.0, repeat=3, data="statquest"),
    "W3": Workload("W3", (1, 64, 64, 1), "softplus", members=1, points=10_000, steps=200,
                   dtypes=BOTH, lr=(1e-6, 1e-6), bar=1 / 1.5, repeat=3, data="sine"),
    "W4": Workload("W4", (1, 32, 32, 1), "tanh", members=64, points=1_000, steps=100,
                   dtypes=BOTH, lr=(1e-6, 3e-5), bar=1 / 1.5, repeat=3, data="sine"),
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


def interleaved_best(runners: dict[str, Runner], repeat: int) -> dict[str, Timed]:
    """Best time of each contender, their runs interleaved (descent, torch, descent, torch...).

    Interleaving makes a burst of load from other processes hit both sides alike instead of
    only whichever ran during it.
    """
    best = {name: float("inf") for name in runners}
    results: dict[str, Any] = {}
    for _ in range(max(1, repeat)):
        for name, (once, _final) in runners.items():
            seconds, results[name] = best_of(once, 1)
            best[name] = min(best[name], seconds)
    return {name: (best[name], final(results[name])) for name, (_once, final) in runners.items()}


def matmul_peak(dtype: str, n: int, repeat: int = 3) -> float:
    """This machine's practical peak in GFLOP/s: a large square NumPy (OpenBLAS) matmul."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n)).astype(dtype), rng.standard_normal((n, n)).astype(dtype)
    a @ b  # warm the BLAS threads
    seconds, _ = best_of(lambda: a @ b, repeat)
    return 2.0 * n**3 / seconds / 1e9


# ----------------------------------------------------------------------------- descent


def prepare_descent(w: Workload, dtype: str) -> Runner:
    """Descent's timed run: init_state + train for all steps; the check that all steps ran."""
    from services.engine import Architecture, PackConfig, get_namespace, init_state, train

    xp = get_namespace("numpy")
    arch = Architecture(layers=w.layers, activation=w.activation, output_activation="identity")
    params, (x, y) = make_parameters(w, dtype), make_data(w, dtype)
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
        return train(xp, arch, config, state, x, y, w.steps)[0]

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


def prepare_torch_autograd(torch: Any, w: Workload, dtype: str) -> Runner:
    """Reference (a): plain autograd, sum of per-member SSRs, backward, manual SGD per member."""
    params, (x_np, y_np) = make_parameters(w, dtype), make_data(w, dtype)
    x, y = torch.from_numpy(x_np), torch.from_numpy(y_np)
    lr = torch.from_numpy(learning_rates(w).astype(dtype))

    def once() -> list[Any]:
        p = [torch.from_numpy(v.copy()).requires_grad_() for v in params.values()]
        scales = [lr.reshape((w.members,) + (1,) * (t.dim() - 1)) for t in p]
        history = torch.empty((w.steps, w.members), dtype=x.dtype)
        for step in range(w.steps):
            ssr = ssr_per_member(torch, w, torch_forward(torch, w, p, x), y)
            ssr.sum().backward()
            with torch.no_grad():
                history[step] = ssr
                for t, s in zip(p, scales):
                    t.sub_(s * t.grad)
                    t.grad = None
        return p

    def final(p: list[Any]) -> np.ndarray:
        with torch.no_grad():
            return ssr_per_member(torch, w, torch_forward(torch, w, p, x), y).double().numpy()

    return once, final


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


def prepare_torch_handwritten(torch: Any, w: Workload, dtype: str) -> Runner:
    """Reference (b): hand-written batched backprop, layout (units, points, members).

    With the model axis last and tiny layers, each layer is a broadcast multiply-and-sum over
    contiguous member vectors, which is what a fast pack engine for StatQuest-sized nets does.
    """
    params, (x_np, y_np) = make_parameters(w, dtype), make_data(w, dtype)
    x = torch.from_numpy(np.ascontiguousarray(x_np.T[:, :, None]))  # (1, P, 1)
    y = torch.from_numpy(np.ascontiguousarray(y_np.T[:, :, None]))  # (n_out, P, 1)
    lr = torch.from_numpy(learning_rates(w).astype(dtype))

    def once() -> list[Any]:
        # a fresh copy every run: sub_ works in place and moveaxis may return a view of params
        p = [torch.from_numpy(np.moveaxis(v, 0, -1).copy()) for v in params.values()]
        history = torch.empty((w.steps, w.members), dtype=x.dtype)
        with torch.inference_mode():
            for step in range(w.steps):
                history[step] = handwritten_step(torch, w, p, x, y, lr)
        return p

    def final(p: list[Any]) -> np.ndarray:
        with torch.inference_mode():
            out = handwritten_forward(torch, w, p, x)[-1][1]
            return ((out - y) ** 2).sum(dim=(0, 1)).double().numpy()

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


def measure(w: Workload, dtype: str, torch: Any | None, repeat: int, peak: float) -> dict[str, Any]:
    """One row: descent and torch timings for a workload and dtype, plus derived columns."""
    runners = {"descent": prepare_descent(w, dtype)}
    if torch is not None:  # the first reference is the bar's: plain autograd, reference (a)
        runners[torch_variants(w)[0]] = prepare_torch_autograd(torch, w, dtype)
        if w.name == "W2":
            runners[torch_variants(w)[1]] = prepare_torch_handwritten(torch, w, dtype)
    timed = interleaved_best(runners, w.repeat if repeat <= 0 else repeat)
    descent_s, descent_ssr = timed.pop("descent")
    gflops = step_flops(w) * w.steps / descent_s / 1e9
    row: dict[str, Any] = {
        "workload": w.name, "dtype": dtype, "members": w.members, "points": w.points,
        "steps": w.steps, "layers": list(w.layers), "activation": w.activation,
        "descent_s": descent_s, "steps_per_s": w.steps / descent_s, "gflops": gflops,
        "peak_gflops": peak, "peak_share": gflops / peak, "bar": w.bar,
        "torch_s": None, "torch_variant": None, "ratio": None, "pass": None, "torch_refs": {},
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
        row["pass"] = bool(row["ratio"] >= w.bar)
    return row


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


def environment(torch: Any | None) -> list[str]:
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
    return [f"cpu cores: {os.cpu_count()}, load average {load:.2f} at start{busy}",
            f"numpy {np.__version__}, BLAS {blas_text}", f"torch: {torch_text}"]


HEADERS = ("workload", "dtype", "descent s", "steps/s", "GFLOP/s", "% of peak",
           "torch s (variant)", "ratio torch/descent", "bar", "result")


def table_lines(row: dict[str, Any]) -> list[tuple[str, ...]]:
    """Table cells for a row: one line for the bar reference, one per extra torch reference."""
    head = (row["workload"], row["dtype"], f"{row['descent_s']:.3f}", f"{row['steps_per_s']:.0f}",
            f"{row['gflops']:.2f}", f"{100 * row['peak_share']:.1f}%")
    bar = f">= {row['bar']:.2f}x"
    if row["torch_s"] is None:
        return [head + ("n/a (no torch)", "-", bar, "-")]
    lines = []
    for variant, ref in row["torch_refs"].items():
        is_bar = variant == row["torch_variant"]
        result = ("PASS" if row["pass"] else "FAIL") if is_bar else "info"
        lines.append(head + (f"{ref['torch_s']:.3f} ({variant})", f"{ref['ratio']:.2f}",
                             bar if is_bar else "-", result))
    return lines


def render_text(rows: list[dict[str, Any]]) -> str:
    """Fixed-width table for a terminal."""
    cells = [HEADERS] + [line for row in rows for line in table_lines(row)]
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEADERS))]

    def fmt(line: tuple[str, ...]) -> str:
        cells = (c.rjust(n) if i > 1 else c.ljust(n) for i, (c, n) in enumerate(zip(line, widths)))
        return "  ".join(cells)

    rule = "  ".join("-" * n for n in widths)
    return "\n".join([fmt(cells[0]), rule] + [fmt(c) for c in cells[1:]])


def render_markdown(rows: list[dict[str, Any]]) -> str:
    """The same table as Markdown (for benchmarks/RESULTS.md)."""
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * 8) + "|"]
    lines += ["| " + " | ".join(c) + " |" for row in rows for c in table_lines(row)]
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
    """Run the selected workloads; exit status 1 when a bar is missed (never with --quick)."""
    global SETTLE_S
    args = parse_args(argv)
    workloads = QUICK if args.quick else FULL
    if args.quick:  # a smoke test: its timings mean nothing, so skip the pauses
        SETTLE_S = 0.0
    torch = import_torch()
    say = (lambda text: print(text, file=sys.stderr)) if args.json else print
    if not args.json:
        say(f"`{command_line()}`\n" if args.markdown else f"$ {command_line()}")
    if torch is None:
        say("torch is not installed (pip install 'descent[bench]'): torch columns are skipped")
    peak_n = 256 if args.quick else 2048
    dtypes = dict.fromkeys(d for name in args.selected for d in workloads[name].dtypes)
    peaks = {dtype: matmul_peak(dtype, peak_n) for dtype in dtypes}
    if not args.json:
        peak_text = ", ".join(f"{d} {g:.1f} GFLOP/s" for d, g in peaks.items())
        lines = environment(torch) + [f"matmul peak (NumPy n={peak_n}, this run): {peak_text}"]
        say("\n".join(("- " if args.markdown else "") + line for line in lines) + "\n")
    rows = [measure(workloads[name], dtype, torch, args.repeat, peaks[dtype])
            for name in args.selected for dtype in workloads[name].dtypes]
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        say(render_markdown(rows) if args.markdown else render_text(rows))
        say(check_lines(rows))
    if args.quick:  # a smoke test: tiny sizes say nothing about the bars
        say("(--quick: tiny sizes, the bars are not meaningful and not enforced)")
        return 0
    return 0 if all(row["pass"] is not False for row in rows) else 1


def check_lines(rows: list[dict[str, Any]]) -> str:
    """Sanity line: descent and torch started from the same parameters, so final SSRs agree."""
    diffs = [f"{r['workload']} {r['dtype']} {v}: {ref['ssr_median_rel_diff']:.1e}"
             for r in rows for v, ref in r["torch_refs"].items()]
    text = "; ".join(diffs) or "n/a"
    return f"\nsame start, final SSR median relative difference descent vs torch: {text}"


if __name__ == "__main__":
    sys.exit(main())
