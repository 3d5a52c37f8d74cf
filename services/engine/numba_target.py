"""The vector width numba compiles for: 512 bits on CPUs with AVX-512 (optional extra ``fast``).

LLVM tunes most AVX-512 CPUs (Skylake-X to Sapphire Rapids) with "prefer-256-bit": it then
vectorizes loops with 256-bit registers, half of what the CPU has. The activation kernels are
bound by arithmetic throughput, so they gain from 512-bit vectors there (measured in
benchmarks/RESULTS.md, "Fourth session").
The numbers do not change: the kernels give LLVM no freedom to reorder, so a value does not
depend on the vector width (tests/engine/test_numba.py compiles them both ways and compares).
"""

from __future__ import annotations

from llvmlite import binding as llvm
from numba.core import config, registry


def prefer_wide_vectors() -> bool:
    """Let numba's JIT use 512-bit vectors where the host has AVX-512 (a process-wide setting,
    read once when numba first compiles or loads from its cache). Left alone when the user
    chose CPU features (NUMBA_CPU_FEATURES) or numba's target is already set up. True when
    the setting is (now) in effect."""
    if config.CPU_FEATURES is not None:
        return "-prefer-256-bit" in config.CPU_FEATURES
    if "_toplevel_target_context" in vars(registry.cpu_target):  # numba's codegen exists already
        return False
    features = llvm.get_host_cpu_features()
    if not features.get("avx512f"):
        return False
    config.CPU_FEATURES = features.flatten() + ",-prefer-256-bit"
    return True
