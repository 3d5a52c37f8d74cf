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
loop on tensors already built from the same host arrays. Best of ``--repeat`` runs.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as a file: make `services` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

THREADS = 2  # this machine's cores; torch is pinned to it, OpenBLAS uses all cores by default

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


FULL = {
    # lr tops out at 0.3, not 0.5: the SSR's curvature along the output bias alone is 2 * P = 6, so
    # plain GD with lr > 2/6 oscillates with growing amplitude and those members would diverge and
    # stop early (less work for descent, NaN for torch); every member must run all 1000 steps.
    "W2": Workload("W2", (1, 2, 1), "softplus", 1000, 3, 1000, ("float64",), (0.005, 0.3), 3.0, 3, "statquest"),
    "W3": Workload("W3", (1, 64, 64, 1), "softplus", 1, 10_000, 200, ("float64", "float32"), (1e-4, 1e-4), 1 / 1.5, 2, "sine"),
    "W4": Workload("W4", (1, 32, 32, 1), "tanh", 64, 1_000, 100, ("float64", "float32"), (1e-4, 1e-3), 1 / 1.5, 2, "sine"),
}

QUICK = {  # same code paths, tiny sizes: the whole run takes a few seconds
    "W2": Workload("W2", (1, 2, 1), "softplus", 50, 3, 50, ("float64",), (0.005, 0.3), 3.0, 1, "statquest"),
    "W3": Workload("W3", (1, 16, 16, 1), "softplus", 1, 500, 10, ("float64", "float32"), (1e-4, 1e-4), 1 / 1.5, 1, "sine"),
    "W4": Workload("W4", (1, 8, 8, 1), "tanh", 4, 100, 10, ("float64", "float32"), (1e-4, 1e-3), 1 / 1.5, 1, "sine"),
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
    per_point = 6 * weights + 2 * (hidden + outputs) + ACTIVATION_FLOPS[w.activation] * hidden + 4 * outputs
    return float(per_point * w.points * w.members)


def best_of(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """Best wall time of ``repeat`` calls (the least disturbed one) and the last result."""
    best, result = float("inf"), None
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def matmul_peak(dtype: str, n: int, repeat: int = 3) -> float:
    """This machine's practical peak in GFLOP/s: a large square NumPy (OpenBLAS) matmul."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n)).astype(dtype), rng.standard_normal((n, n)).astype(dtype)
    a @ b  # warm the BLAS threads
    seconds, _ = best_of(lambda: a @ b, repeat)
    return 2.0 * n**3 / seconds / 1e9


# ----------------------------------------------------------------------------- descent


def run_descent(w: Workload, dtype: str, repeat: int) -> tuple[float, np.ndarray]:
    """Time descent's init_state + train for the full run; returns (seconds, final SSR (M,))."""
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

    seconds, state = best_of(once, w.repeat if repeat <= 0 else repeat)
    arrays = state.to_arrays()
    check_all_steps(w, dtype, arrays["step"], arrays["stop_reason"])
    return seconds, np.asarray(arrays["ssr"], dtype=np.float64)


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


def run_torch_autograd(torch: Any, w: Workload, dtype: str, repeat: int) -> tuple[float, np.ndarray]:
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

    seconds, p = best_of(once, repeat)
    with torch.no_grad():
        final = ssr_per_member(torch, w, torch_forward(torch, w, p, x), y)
    return seconds, final.double().numpy()


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


def run_torch_handwritten(torch: Any, w: Workload, dtype: str, repeat: int) -> tuple[float, np.ndarray]:
    """Reference (b): hand-written batched backprop, layout (units, points, members).

    With the model axis last and tiny layers, each layer is a broadcast multiply-and-sum over
    contiguous member vectors, which is what a fast pack engine for StatQuest-sized nets does.
    """
    params, (x_np, y_np) = make_parameters(w, dtype), make_data(w, dtype)
    x = torch.from_numpy(np.ascontiguousarray(x_np.T[:, :, None]))  # (1, P, 1)
    y = torch.from_numpy(np.ascontiguousarray(y_np.T[:, :, None]))  # (n_out, P, 1)
    lr = torch.from_numpy(learning_rates(w).astype(dtype))

    def once() -> list[Any]:
        p = [torch.from_numpy(np.ascontiguousarray(np.moveaxis(v, 0, -1))) for v in params.values()]
        history = torch.empty((w.steps, w.members), dtype=x.dtype)
        with torch.inference_mode():
            for step in range(w.steps):
                history[step] = handwritten_step(torch, w, p, x, y, lr)
        return p

    seconds, p = best_of(once, repeat)
    with torch.inference_mode():
        out = handwritten_forward(torch, w, p, x)[-1][1]
        final = ((out - y) ** 2).sum(dim=(0, 1))
    return seconds, final.double().numpy()


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
    reps = w.repeat if repeat <= 0 else repeat
    descent_s, descent_ssr = run_descent(w, dtype, reps)
    flops = step_flops(w) * w.steps
    row: dict[str, Any] = {
        "workload": w.name, "dtype": dtype, "members": w.members, "points": w.points,
        "steps": w.steps, "layers": list(w.layers), "activation": w.activation,
        "descent_s": descent_s, "steps_per_s": w.steps / descent_s, "gflops": flops / descent_s / 1e9,
        "peak_gflops": peak, "peak_share": flops / descent_s / 1e9 / peak, "bar": w.bar,
        "torch_s": None, "torch_variant": None, "ratio": None, "pass": None, "torch_refs": {},
    }
    if torch is None:
        return row
    refs = {"autograd-bmm" if w.members > 1 else "autograd-linear": run_torch_autograd}
    if w.name == "W2":
        refs["hand-backprop-model-last"] = run_torch_handwritten
    for variant, runner in refs.items():
        seconds, ssr = runner(torch, w, dtype, reps)
        row["torch_refs"][variant] = {"torch_s": seconds, "ratio": seconds / descent_s,
                                      "ssr_rel_diff": relative_difference(descent_ssr, ssr)}
    variant = next(iter(refs))  # the bar is always against plain autograd, reference (a)
    row.update(torch_s=row["torch_refs"][variant]["torch_s"], torch_variant=variant,
               ratio=row["torch_refs"][variant]["ratio"])
    row["pass"] = bool(row["ratio"] >= w.bar)
    return row


def relative_difference(a: np.ndarray, b: np.ndarray) -> float:
    """Max relative difference of the final SSRs: both sides must have done the same training."""
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-12)))


def environment(torch: Any | None) -> list[str]:
    """Versions and BLAS so that a result can be read against the machine that produced it."""
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        blas_text = f"{blas.get('name')} {blas.get('version')}"
    except Exception:  # the config layout is not a stable API
        blas_text = "unknown"
    torch_text = "not installed" if torch is None else f"{torch.__version__}, {torch.get_num_threads()} threads"
    return [f"cpu cores: {os.cpu_count()}", f"numpy {np.__version__}, BLAS {blas_text}", f"torch: {torch_text}"]


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
    fmt = lambda c: "  ".join(s.rjust(n) if i > 1 else s.ljust(n) for i, (s, n) in enumerate(zip(c, widths)))
    return "\n".join([fmt(cells[0]), "  ".join("-" * n for n in widths)] + [fmt(c) for c in cells[1:]])


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
    parser.add_argument("--workloads", default="W2,W3,W4", help="comma-separated subset of W2,W3,W4")
    parser.add_argument("--repeat", type=int, default=0, help="best of N runs (default: per workload)")
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
    """Run the selected workloads; exit status 1 when a bar is missed."""
    args = parse_args(argv)
    workloads = QUICK if args.quick else FULL
    torch = import_torch()
    say = (lambda text: print(text, file=sys.stderr)) if args.json else print
    if not args.json:
        say(f"$ {command_line()}" if not args.markdown else f"`{command_line()}`\n")
        say("\n".join(("- " if args.markdown else "") + line for line in environment(torch)))
    if torch is None:
        say("torch is not installed (pip install 'descent[bench]'): torch columns are skipped")
    peak_n = 256 if args.quick else 2048
    peaks: dict[str, float] = {}
    rows = []
    for name in args.selected:
        for dtype in workloads[name].dtypes:
            if dtype not in peaks:
                peaks[dtype] = matmul_peak(dtype, peak_n)
            rows.append(measure(workloads[name], dtype, torch, args.repeat, peaks[dtype]))
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        say("matmul peak (NumPy, n=%d): %s" % (peak_n, ", ".join(f"{d} {g:.1f} GFLOP/s" for d, g in peaks.items())))
        say("")
        say(render_markdown(rows) if args.markdown else render_text(rows))
        say(check_lines(rows))
    return 0 if all(row["pass"] is not False for row in rows) else 1


def check_lines(rows: list[dict[str, Any]]) -> str:
    """Sanity line: descent and torch started from the same parameters, so final SSRs agree."""
    diffs = [f"{r['workload']} {r['dtype']} {v}: {ref['ssr_rel_diff']:.1e}"
             for r in rows for v, ref in r["torch_refs"].items()]
    return "\nfinal SSR max relative difference descent vs torch: " + ("; ".join(diffs) or "n/a")


if __name__ == "__main__":
    sys.exit(main())
