#!/usr/bin/env bash
# The engine's GPU check, one script for a lent GPU machine: run from the repository root,
#   bash benchmarks/gpu_check.sh
# It prints the machine (nvidia-smi -L, Python, CuPy), picks a Python, runs the CuPy tests
# (pytest -q -m gpu tests/engine/test_cupy.py, at most 150 s; only those that GPU_CHECK_TESTS
# selects as pytest's -k if set), the engine benchmark on the GPU
# (benchmarks/engine.py --backend cupy --markdown, at most 200 s, the workloads GPU_CHECK_WORKLOADS
# names if set, e.g. W3,W4; W4 also on this host's CPU, for
# the speed-up bar), with GPU_CHECK_CPU=1 the engine benchmark on this host's CPU (two CPUs, at
# most 260 s), the worker's path on the GPU (benchmarks/gpu_service.py, at most 90 s: it
# needs the service's dependencies, which the GPU image lacks: run benchmarks/gpu_wheels.sh first,
# here, and name .whl in the device call's carry), then the probe of where the GPU's time goes
# (benchmarks/gpu_probe.py, at most 100 s), and writes every output under "$OUT" if set, else
# ./gpu-results. One SUMMARY line per step gives its exit code (124: timed out).
# The whole run stays under GPU_CHECK_BUDGET seconds (default 540, inside the device tool's 600 s
# a command); a step gets what is left.
# Python: the project venv .venv if it works there; else, if pip reaches an index, a new .venv-gpu
# (seeing the system's packages, e.g. CuPy and torch) with `pip install -e '.[dev]'`; else the
# system python3 with whatever it has, plus the carried wheels in .whl/ (what is missing is
# reported). Exit status: 0 when the tests passed and the benchmark ran to its table, 3 when no
# usable CuPy/GPU was found, else 1.
set -u

cd "$(dirname "$0")/.." || exit 2
RESULTS="${OUT:-./gpu-results}"
mkdir -p "$RESULTS" || exit 2
SUMMARY="$RESULTS/summary.txt"
: > "$SUMMARY"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
START=$(date +%s)
BUDGET="${GPU_CHECK_BUDGET:-540}"

left() { echo $((BUDGET - ($(date +%s) - START))); }

bounded() {  # bounded SECONDS CMD...: run CMD with a time limit (never beyond the budget)
    local limit=$1 rest
    shift
    rest=$(($(left) - 5))
    [ "$rest" -lt "$limit" ] && limit=$rest
    if [ "$limit" -lt 5 ]; then
        echo "(skipped: the ${BUDGET} s budget is spent)"
        return 124
    fi
    if command -v timeout >/dev/null 2>&1; then
        timeout -k 10 "$limit" "$@"
    else
        "$@"
    fi
}

summary() {  # summary STEP RC NOTE
    local line="SUMMARY $1: rc=$2${3:+ ($3)}"
    echo "$line"
    echo "$line" >> "$SUMMARY"
}

has_module() {  # has_module PYTHON MODULE
    "$1" -c "import $2" >/dev/null 2>&1
}

# ----------------------------------------------------------------------------- 0. the machine
{
    echo "== gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -srm), repo $(pwd)"
    echo "== nvidia-smi -L"
    if command -v nvidia-smi >/dev/null 2>&1; then
        bounded 20 nvidia-smi -L || echo "nvidia-smi -L failed (rc=$?)"
    else
        echo "nvidia-smi: not found (no NVIDIA driver tools on this machine)"
    fi
    echo "== python3"
    command -v python3 && python3 --version
    echo "== python3 -c 'import cupy'"
    bounded 60 python3 -c "import cupy; print('cupy', cupy.__version__, 'from', cupy.__file__)" \
        || echo "python3 cannot import cupy"
} 2>&1 | tee "$RESULTS/env.txt"
summary environment 0 "see env.txt"

# ----------------------------------------------------------------------------- 1. a Python
PY=""
if [ -x .venv/bin/python ] && has_module .venv/bin/python numpy; then
    PY=.venv/bin/python
    echo "python: the project venv .venv"
elif [ -x .venv-gpu/bin/python ] && has_module .venv-gpu/bin/python numpy; then
    PY=.venv-gpu/bin/python
    echo "python: .venv-gpu from an earlier run"
elif PROBE_DIR=$(mktemp -d) && bounded 30 python3 -m pip download -q --no-deps --no-cache-dir --retries 0 \
        --timeout 5 -d "$PROBE_DIR" "fakeredis>=2.23,<3" >/dev/null 2>&1; then  # a dev-only requirement
    echo "python: pip reaches an index; creating .venv-gpu (with system site-packages) and installing .[dev]"
    if python3 -m venv --system-site-packages .venv-gpu \
        && bounded 150 .venv-gpu/bin/python -m pip install -q --retries 1 --timeout 10 -e '.[dev]' \
            > "$RESULTS/pip.txt" 2>&1 \
        && has_module .venv-gpu/bin/python numpy; then
        PY=.venv-gpu/bin/python
    else
        tail -n 20 "$RESULTS/pip.txt" 2>/dev/null
        rm -rf .venv-gpu
        echo "python: creating .venv-gpu failed (pip.txt); using the system python3"
    fi
else
    echo "python: no project venv and pip reaches no index (offline): using the system python3"
fi
[ -n "${PROBE_DIR:-}" ] && rm -rf "$PROBE_DIR"
if [ -z "$PY" ]; then
    PY=$(command -v python3 || true)
fi
if [ -z "$PY" ]; then
    summary python 127 "no python3 found"
    exit 1
fi
if ! has_module "$PY" cupy && [ "$PY" != "$(command -v python3)" ] && has_module python3 cupy; then
    echo "python: $PY has no cupy but the system python3 has: using python3"
    PY=$(command -v python3)
fi
if ! has_module "$PY" sqlalchemy && ls .whl/*.whl >/dev/null 2>&1; then  # see benchmarks/gpu_wheels.sh
    if bounded 90 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/descent-site .whl/*.whl > /tmp/descent-wheels.txt 2>&1; then
        export PYTHONPATH="/tmp/descent-site${PYTHONPATH:+:$PYTHONPATH}"
        echo "python: the carried wheels (.whl) are installed in /tmp/descent-site, on PYTHONPATH"
    else
        tail -n 5 /tmp/descent-wheels.txt
        echo "python: installing the carried wheels failed (above)"
    fi
fi
MISSING=""
for module in numpy cupy torch pytest pytest_timeout sqlalchemy; do
    has_module "$PY" "$module" || MISSING="$MISSING $module"
done
echo "python: $PY ($("$PY" --version 2>&1)); missing:${MISSING:- nothing}" | tee -a "$RESULTS/env.txt"
case "$MISSING" in *torch*) echo "  torch missing: the benchmark runs without its torch columns" ;; esac
case "$MISSING" in *pytest_timeout*) echo "  pytest_timeout missing: pytest only warns about the timeout setting" ;; esac

# A small kernel proves more than an import: driver, device, NVRTC compilation, a reduction.
GPU_OK=0
PROBE='import cupy; n = cupy.cuda.runtime.getDeviceCount(); assert n > 0, "no CUDA device"
x = cupy.arange(5, dtype=cupy.float64); s = float((x * x).sum()); cupy.cuda.Device().synchronize()
assert s == 30.0, s; print("cupy", cupy.__version__, "sees", n, "device(s); a kernel ran")'
PROBE_OUT=$(bounded 120 "$PY" -c "$PROBE" 2>&1)
PROBE_RC=$?
echo "$PROBE_OUT" | tail -n 5 | tee -a "$RESULTS/env.txt"
[ "$PROBE_RC" = 0 ] && GPU_OK=1
if [ "$GPU_OK" = 1 ]; then
    summary cupy 0 "CuPy runs kernels on the GPU"
else
    summary cupy 1 "NO usable CuPy/GPU: the CuPy tests will skip and the benchmark is not run"
fi

# ----------------------------------------------------------------------------- 2. the CuPy tests
# --noconftest: tests/conftest.py needs the service stack (SQLAlchemy, Alembic...), which a bare
# GPU image may lack; the CuPy tests use none of its fixtures.
echo "== pytest -q -m gpu tests/engine/test_cupy.py"
if has_module "$PY" pytest; then
    T0=$(date +%s)
    bounded 150 "$PY" -m pytest -q -m gpu -rs -p no:cacheprovider --noconftest ${GPU_CHECK_TESTS:+-k "$GPU_CHECK_TESTS"} tests/engine/test_cupy.py \
        > "$RESULTS/pytest.txt" 2>&1
    RC=$?
    tail -n 60 "$RESULTS/pytest.txt"
    summary tests "$RC" "$(($(date +%s) - T0)) s, limit 150 s or what the budget left; pytest.txt"
    TESTS_RC=$RC
else
    summary tests 127 "pytest is not installed for $PY"
    TESTS_RC=127
fi

# ----------------------------------------------------------------------------- 3. the benchmark
echo "== python benchmarks/engine.py --backend cupy --markdown"
if [ "$GPU_OK" = 1 ]; then
    T0=$(date +%s)
    bounded 200 "$PY" benchmarks/engine.py --backend cupy --markdown ${GPU_CHECK_WORKLOADS:+--workloads "$GPU_CHECK_WORKLOADS"} \
        > "$RESULTS/engine-cupy.md" 2> "$RESULTS/engine-cupy.err"
    RC=$?
    cat "$RESULTS/engine-cupy.md"
    tail -n 30 "$RESULTS/engine-cupy.err"
    note="$(($(date +%s) - T0)) s, limit 200 s or what the budget left; engine-cupy.md"
    [ "$RC" = 1 ] && note="$note; rc 1 = finished, a CPU-era bar was missed"
    summary bench "$RC" "$note"
    BENCH_RC=$RC
else
    summary bench 3 "not run: no usable CuPy/GPU"
    BENCH_RC=3
fi

# ----------------------------------------------------------------------------- 3b. the host's CPU
# With GPU_CHECK_CPU=1: the engine benchmark on this host's CPU (make bench-engine's table), held
# to two CPUs of different cores (lscpu's CORE column), the size of make bench's machines; by
# default W3 and W4 (the bars that depend on the CPU's kernels), best of 2: the whole table took
# longer than 190 s on the H200's host. GPU_CHECK_CPU_ARGS replaces those arguments ("" for all).
if [ "${GPU_CHECK_CPU:-0}" = 1 ]; then
    PAIR=$(lscpu -p=CPU,CORE 2>/dev/null | grep -v '^#' | awk -F, '!seen[$2]++ {print $1}' | head -n 2 | paste -sd, -)
    case "$PAIR" in *,*) ;; *) PAIR=0,1 ;; esac
    echo "== taskset -c $PAIR python benchmarks/engine.py --markdown (the host's CPU)"
    T0=$(date +%s)
    bounded 260 taskset -c "$PAIR" "$PY" benchmarks/engine.py --markdown ${GPU_CHECK_CPU_ARGS---workloads W3,W4 --repeat 2} \
        > "$RESULTS/engine-cpu.md" 2> "$RESULTS/engine-cpu.err"
    RC=$?
    cat "$RESULTS/engine-cpu.md"
    tail -n 20 "$RESULTS/engine-cpu.err"
    summary cpu-bench "$RC" "$(($(date +%s) - T0)) s on CPUs $PAIR, limit 260 s or what the budget left; engine-cpu.md"
fi

# ----------------------------------------------------------------------------- 4. the service
# The worker's path with CuPy (claim, train, checkpoints and history in SQLite) against NumPy.
echo "== python benchmarks/gpu_service.py"
if [ "$GPU_OK" = 1 ] && has_module "$PY" sqlalchemy; then
    T0=$(date +%s)
    bounded 90 "$PY" benchmarks/gpu_service.py > "$RESULTS/service.txt" 2>&1
    RC=$?
    tail -n 40 "$RESULTS/service.txt"
    summary service "$RC" "$(($(date +%s) - T0)) s, limit 90 s or what the budget left; service.txt"
elif [ "$GPU_OK" = 1 ]; then
    summary service 127 "not run: the service's dependencies are missing (benchmarks/gpu_wheels.sh, carry .whl)"
else
    summary service 3 "not run: no usable CuPy/GPU"
fi

# ----------------------------------------------------------------------------- 5. the probe
# Where W4's time goes on the GPU (per-step cost, host synchronisation, CUDA graphs): what the
# next change to the CuPy path needs to know (benchmarks/gpu_probe.py).
echo "== python benchmarks/gpu_probe.py"
if [ "$GPU_OK" = 1 ]; then
    T0=$(date +%s)
    bounded 100 "$PY" benchmarks/gpu_probe.py > "$RESULTS/probe.txt" 2>&1
    RC=$?
    cat "$RESULTS/probe.txt"
    summary probe "$RC" "$(($(date +%s) - T0)) s, limit 100 s or what the budget left; probe.txt"
else
    summary probe 3 "not run: no usable CuPy/GPU"
fi

echo "== done in $(($(date +%s) - START)) s; results in $RESULTS"
cat "$SUMMARY"
if [ "$GPU_OK" != 1 ]; then
    exit 3
fi
# bench rc 1 means it ran to the end and printed its table (a bar set for the CPU was missed)
[ "$TESTS_RC" = 0 ] && { [ "$BENCH_RC" = 0 ] || [ "$BENCH_RC" = 1 ]; } && exit 0
exit 1
