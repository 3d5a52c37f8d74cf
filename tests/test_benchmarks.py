"""The benchmarks stay runnable: their quick modes run here (figures live in RESULTS.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_json(script: str, *args: str) -> list[dict]:
    out = subprocess.run([sys.executable, f"benchmarks/{script}", "--quick", "--json", *args],
                         cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


def test_engine_benchmark_quick_run_reports_every_workload() -> None:
    rows = run_json("engine.py")
    assert {(r["workload"], r["dtype"]) for r in rows} >= {
        ("W2", "float64"), ("W3", "float64"), ("W3", "float32"), ("W4", "float64"), ("W4", "float32")}
    assert all(r["descent_s"] > 0 and "torch_s" in r for r in rows)
    overheads = [r["service_overhead"] for r in rows if r["workload"] == "W4"]
    assert len(overheads) == 2 and all(o["host_s"] > 0 and o["train_s"] > 0 for o in overheads)


def test_gpu_rows_compare_with_this_hosts_cpu_against_the_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``--backend cupy`` W4 is also trained on the host's CPU in the same run; the speed-up
    is the CPU time (on make bench's machine size, THREADS cores) over the GPU time, judged
    against the workload's 20x bar. Here THREADS is set to one core less than this machine has,
    so the bar's figure comes from the child process held to those cores."""
    from benchmarks import engine

    cores = len(os.sched_getaffinity(0))
    if cores < 2:
        pytest.skip("one CPU: no smaller machine to hold a child to")
    monkeypatch.setattr(engine, "THREADS", cores - 1)
    w = engine.QUICK["W4"]
    fast, slow = (engine.gpu_vs_cpu(w, "float64", gpu_s, repeat=1) for gpu_s in (1e-9, 1e3))
    assert fast["cpu_cores"] == cores - 1 and fast["cores"] == cores
    assert fast["cpu_s"] > 0 and fast["cpu_all_s"] > 0
    assert fast["speedup"] == pytest.approx(fast["cpu_s"] / 1e-9) and fast["pass"]
    assert slow["speedup"] < 1 and not slow["pass"] and slow["bar"] == w.gpu_bar == 20
    rows = [{"workload": "W4", "dtype": "float64", "device": {"descent": "cuda:0 (GPU)"}, "gpu_vs_cpu": g}
            for g in (fast, slow)]
    assert "PASS]" in engine.gpu_lines(rows[:1]) and "FAIL]" in engine.gpu_lines(rows[1:])
    assert len(engine.gpu_lines(rows).splitlines()) == 2


def test_a_pinned_cpu_run_sees_only_its_cpus() -> None:
    """The child's threads count the CPUs it may use (it checks that it saw as many as asked)."""
    from benchmarks import engine

    assert engine.pinned_cpu_seconds(engine.QUICK["W4"], "float32", 1, cpus=1) > 0


def test_gpu_probe_says_when_there_is_no_cupy() -> None:
    """The probe of benchmarks/gpu_check.sh runs from a bare checkout; without CuPy it says so
    and exits 3, like the check script."""
    try:
        import cupy  # noqa: F401
    except Exception:  # noqa: BLE001 (missing, or a CuPy without CUDA libraries)
        pass
    else:
        pytest.skip("CuPy is installed here: the probe would run")
    out = subprocess.run([sys.executable, "benchmarks/gpu_probe.py"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 3 and "no CuPy" in out.stdout, out.stdout + out.stderr


def test_gpu_service_check_runs_the_worker_path_on_numpy() -> None:
    """benchmarks/gpu_service.py, which a GPU machine runs with CuPy, on NumPy here: StatQuest
    and a small pack through claim, training, checkpoints and history, every check holding."""
    out = subprocess.run([sys.executable, "benchmarks/gpu_service.py", "--backends", "numpy", "--quick"],
                         cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout + out.stderr[-2000:]
    assert "b3 = 2.6085" in out.stdout and "pack of 8 W4 jobs" in out.stdout
    assert out.stdout.rstrip().endswith("gpu_service: every check holds")


def test_gpu_service_check_runs_the_device_path_with_a_cupy_standin() -> None:
    """The same check with ``cupy`` imported as the CPU stand-in (tests/engine/standin.py): the
    worker's path with a namespace that is not NumPy (device arrays copied to the host for
    checkpoints) gives the NumPy run's histories."""
    code = ("import sys; from tests.engine.standin import STANDIN; sys.modules['cupy'] = STANDIN; "
            "from benchmarks import gpu_service; sys.exit(gpu_service.main(['--quick']))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout + out.stderr[-2000:]
    assert "[cupy] StatQuest: succeeded after 9 updates, b3 = 2.6085" in out.stdout
    assert "largest relative SSR difference, CuPy against NumPy" in out.stdout


@pytest.mark.slow
def test_service_benchmark_quick_run_ingests_history(pg_url: str) -> None:
    """``pg_url`` only makes this skip where no PostgreSQL answers; the script makes its own DB."""
    rows = {r["name"]: r for r in run_json("service.py", "--skip-stack")}
    assert rows["rows of 100 points"]["value"] > 0
    assert rows["rows of 100 points"]["details"]["points"] > 0
    assert rows["Grafana read-back of one curve"]["passed"] is True


@pytest.mark.slow
def test_sweep_benchmark_quick_run_stores_every_point() -> None:
    """The embedded stack end to end: a sweep and the same jobs POSTed one by one, every
    history point and checkpoint stored (torch may be missing: then no ratios)."""
    rows = {r["name"]: r for r in run_json("sweeps.py", "--stack", "embedded")}
    for name in ("sweep of 20, POST to all stored", "20 POSTs from 8 threads"):
        details = rows[name]["details"]
        assert details["history points"] == details["expected points"] > 20, details
        assert details["final checkpoints"] == details["jobs"] == 20
        assert {"CPU s api", "CPU s worker", "CPU s scheduler"} <= set(details)
    # /proc counts in 10 ms ticks, and 20 tiny jobs may cost a role less than one: the roles
    # must be found and read (non-negative), and the stack as a whole must have used some CPU.
    cpu = [rows[name]["details"][f"CPU s {role}"] for name in ("sweep of 20, POST to all stored",
           "20 POSTs from 8 threads") for role in ("api", "worker", "scheduler")]
    assert min(cpu) >= 0 and sum(cpu) > 0, cpu
    assert rows["200-member sweep accepted"]["value"] > 0


@pytest.mark.slow
def test_metrics_benchmark_quick_run_scrapes_every_sweep(pg_url: str) -> None:
    """Every sweep has its ten series (best, median, progress, diverged, six statuses)."""
    rows = run_json("metrics.py")
    assert [r["database"] for r in rows] == ["sqlite", "postgres"]
    for r in rows:
        assert r["sweep_series"] == 10 * r["sweeps"], r
        assert 0 < r["median_ms"] <= r["worst_ms"] and r["reading_ms"] > 0, r
