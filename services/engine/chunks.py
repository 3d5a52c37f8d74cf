"""How a model-first pass is split so that each piece works in cache, not main memory.

Activations of a chunk of members (or, for one member bigger than a chunk, of a range of its
points) take about ``CHUNK_BYTES``; where the matrix products of a pass would leave BLAS's small-
matrix path, the points are cut into ranges as well (``SMALL_PRODUCT_MACS``). The forward and
backward pass then run chunk by chunk, with the gradients of point chunks summed. The plan
depends on the architecture, P, the dtype and the BLAS, never on M, so a pack rounds exactly
like its members trained alone.
"""

from __future__ import annotations

import numpy as np

from services.engine.architecture import Architecture
from services.engine.backend import blas_has_small_products, is_numpy
from services.engine.layouts import Layout
from services.engine.parallel import cores

# A chunk's activations stay in L2/L3 (chosen by measurement: benchmarks/RESULTS.md, "Engine").
CHUNK_BYTES = 2 << 20


def even(count: int) -> int:
    """``count`` rounded up to an even number of point chunks: on two cores (or four) an odd
    count leaves one core idle while the other runs the last chunk (W3 had five; see
    benchmarks/RESULTS.md, "Fourth session"). A fixed rule, not the core count, so the plan
    and the numbers stay the same on any number of threads."""
    return count + count % 2


# OpenBLAS multiplies small matrices (M N K up to 100^3 multiply-adds) without first packing
# them, with kernels of their own on AVX-512 CPUs (its SkylakeX kernels, which Sapphire Rapids and
# Zen 4 run too), and those ran W4's products clearly faster than the packed path. So points are
# chunked to keep products that small where the BLAS has that path (``SMALL_PRODUCTS`` None: ask
# it); with AVX2 kernels there is no such path and smaller chunks only cost their extra calls...
SMALL_PRODUCT_MACS = 100**3
SMALL_PRODUCTS: bool | None = None
# ...and only where that leaves at least this many points a chunk: W3's 64 x 65 products would
# need chunks of 240 points, where its weight gradient ran slower than in big chunks.
# (Measurements: benchmarks/RESULTS.md, "Tenth session".)
MIN_SMALL_POINTS = 512


def small_product_points(arch: Architecture) -> int | None:
    """The most points a chunk may have for every product of a pass to stay small, or None when
    the BLAS has no small-matrix path or that would be fewer than MIN_SMALL_POINTS."""
    if not (blas_has_small_products() if SMALL_PRODUCTS is None else SMALL_PRODUCTS):
        return None
    widest = max(o * (i + 1) for i, o in zip(arch.layers, arch.layers[1:]))
    points = SMALL_PRODUCT_MACS // widest
    return points if points >= MIN_SMALL_POINTS else None


def plan_chunks(arch: Architecture, layout: Layout, points: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Member ranges and point ranges [start, stop) of a model-first pack's chunked passes."""
    members = layout.members
    if not is_numpy(layout.xp):  # CPU caches only; a GPU wants big kernels
        return [(0, members)], [(0, points)]
    per_point = sum(arch.layers[1:]) * np.dtype(layout.dtype).itemsize
    count = even(-(-points * per_point // CHUNK_BYTES)) if points * per_point > CHUNK_BYTES else 1
    small = small_product_points(arch)
    if small is not None and points > small:
        count = max(count, even(-(-points // small)))
    size = -(-points // count)
    group = max(1, CHUNK_BYTES // (size * per_point))  # members a chunk takes
    return ([(m, min(m + group, members)) for m in range(0, members, group)],
            [(p, min(p + size, points)) for p in range(0, points, size)])


# Below this many FLOPs per matrix product, one BLAS thread beats two: waking the second thread
# costs more than it brings (measured on W4: benchmarks/RESULTS.md, "Engine").
SMALL_GEMM_FLOPS = 8e6


def blas_thread_limit(arch: Architecture, layout: Layout, points: int) -> int | None:
    """For a model-first pack: 1 when the chunks of a pass run on parallel threads
    (``parallel``: each product then has one core) or every matrix product is small; else None
    (leave BLAS alone). Depends only on the architecture, P and the dtype, like the chunk plan."""
    member_ranges, point_ranges = plan_chunks(arch, layout, points)
    if len(member_ranges) * len(point_ranges) > 1 and cores() > 1:
        return 1
    widest = max(a * (b + 1) for a, b in zip(arch.layers[1:], arch.layers))
    chunk_points = max(stop - start for start, stop in point_ranges)
    return 1 if 2 * chunk_points * widest < SMALL_GEMM_FLOPS else None
