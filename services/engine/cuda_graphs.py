"""A block of updates on CuPy, replayed as one CUDA graph instead of ~300 kernel launches.

Why: a small pack's update on a GPU is bound by launching kernels (each ~20 us of CuPy's Python
on the host), not by the GPU. A block (``blocks``) makes no host decision between its updates,
so its kernels can be recorded once by a stream capture and then replayed by one launch. On the
H200 (benchmarks/RESULTS.md, "Seventeenth session") W4's update went from 291 to 258 us (float64)
and from 288 to 244 us (float32): with its kernels fused, W4 is bound by the GPU's memory
traffic now; packs of fewer points gain more.

What a replay needs to be right: a graph keeps the device pointers it was captured with. A
block's kernels touch the trainer's buffers (parameters, spare, gradient, velocities), the stop
masks (lr, mu, still), the data (x, y), the network's workspace, and here a staging buffer for
the block's rows of the history and its flags (copied out after each replay). So graphs are kept
on the network (which owns the workspace and outlives a ``train`` call), keyed by the pointers
of all the rest; a block is captured the second time its key comes (``GraphCache``). A block of
an even number of updates leaves the parameters and the spare in the roles it began with (they
swap after each update), as its replay must. A capture refuses every memory allocation (a block
allocated during the capture could be freed and reused while the graph still writes to it). Any
failure to capture switches graphs off for the network (the reason is kept in
``GraphCache.off``), and blocks run kernel by kernel: the same kernels in the same order, so the
same bits either way
(tests/engine/test_cupy.py::test_blocks_as_cuda_graphs_give_the_bits_of_blocks_kernel_by_kernel).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from services.engine import cuda_gemm
from services.engine.backend import is_cupy

if TYPE_CHECKING:
    from services.engine.loop import Trainer

ENABLED = True  # False: every block eagerly (benchmarks/gpu_probe.py times both)
MAX_GRAPHS = 8  # per network; the oldest goes first
MAX_SEEN = 64  # keys of blocks run once, per network


class Captured(NamedTuple):
    """A block's graph and the buffers it writes besides the trainer's."""

    graph: Any
    rows: Any  # (count, M): the SSR after each update, as the history records it
    flags: Any  # (count,) bool: the per-update stop-test flags (``Trainer._flagged_update``)


@dataclass
class GraphCache:
    """A network's graphs (``Network.graphs``): captured blocks by the pointers they use, most
    recently used last; ``seen``: the keys of blocks that ran kernel by kernel once (a block is
    captured the second time its key comes: a capture costs the host's launches and then the
    GPU's work, one after the other, where running kernel by kernel overlaps the two, so a key
    that never comes back would lose time: on the H200 the worker's path, whose ``train`` calls
    each bring new buffers, took 0.331 s instead of 0.245 s when every first block was
    captured); ``warm``: the kinds of update (``variant``) of which a block has run kernel by
    kernel (every kernel of such a block compiled and loaded: none is compiled during a
    capture); ``off``: why graphs are off."""

    captured: dict[tuple, Captured] = field(default_factory=dict)
    seen: dict[tuple, None] = field(default_factory=dict)
    warm: set[tuple[bool, bool]] = field(default_factory=set)
    off: str | None = None


def variant(trainer: Trainer) -> tuple[bool, bool]:
    """Which update kernel a block uses: with momentum or not, with still entries or not."""
    return trainer.stops.mu is not None, trainer.stops.still is not None


def usable(trainer: Trainer, start: int, count: int, max_updates: int) -> bool:
    """Whether updates [start, start + count) of a block can run as a graph: CuPy, an even
    count, the full data (a mini-batch is other data each update), no min_step_size test (its
    kernels allocate), and each update followed by a gradient (not the call's last update)."""
    graphs = trainer.net.graphs
    return (ENABLED and is_cupy(trainer.xp) and variant(trainer) in graphs.warm and graphs.off is None and count > 0
            and count % 2 == 0 and trainer.batches is None and not trainer.stops.check_min
            and start + count < max_updates)


def replay(trainer: Trainer, count: int) -> Captured | None:
    """Run ``count`` updates of a block by replaying their graph (captured now if its key was
    seen before); the graph's rows and flags, or None when the block is to run kernel by kernel
    (nothing has run then)."""
    cache = trainer.net.graphs
    graphs, key = cache.captured, _key(trainer, count)
    captured = graphs.pop(key, None)
    if captured is None and key not in cache.seen:
        cache.seen[key] = None
        while len(cache.seen) > MAX_SEEN:
            cache.seen.pop(next(iter(cache.seen)))
        return None
    captured = captured or _capture(trainer, count)
    if captured is None:
        return None
    graphs[key] = captured  # most recently used last
    while len(graphs) > MAX_GRAPHS:
        graphs.pop(next(iter(graphs)))
    captured.graph.launch()
    return captured


def _key(t: Trainer, count: int) -> tuple:
    """The device pointers a block's kernels read or write, beyond the network's own buffers."""
    arrays = (t.params, t.spare, t.grad, t.velocity, t.spare_velocity, t.stops.lr, t.stops.mu, t.stops.still,
              t.x, t.y)
    return (count, t.x.shape, *(0 if a is None else a.data.ptr for a in arrays))


def _capture(t: Trainer, count: int) -> Captured | None:
    """Record the block's updates on a stream of their own (nothing runs); None on failure,
    which switches graphs off for this network."""
    xp = t.xp
    rows = xp.empty((count, t.layout.members), dtype=t.layout.dtype)
    flags = xp.zeros(count, dtype=bool)
    roles = t.roles()
    stream = xp.cuda.Stream(non_blocking=True)
    try:
        with stream, cuda_gemm.bound_handle(xp), xp.cuda.using_allocator(_refuse):
            stream.begin_capture(mode=getattr(xp.cuda.runtime, "streamCaptureModeRelaxed", None))
            try:
                flags.fill(False)
                for j in range(count):  # as Blocks._run, into rows; j + 1 < count + 1: a gradient each
                    t._flagged_update(j, count + 1, rows, flags[j:j + 1])
            finally:
                graph = stream.end_capture()
    except Exception as exc:  # noqa: BLE001 (any failure: run eagerly from now on)
        t.set_roles(roles)  # the capture ran nothing on the device, but the Python roles swapped
        cache = t.net.graphs
        cache.captured.clear()
        cache.off = f"{type(exc).__name__}: {exc}"
        return None
    return Captured(graph, rows, flags)


def _refuse(size: int) -> Any:
    """The allocator during a capture: none may happen there (see the module's docstring)."""
    raise MemoryError(f"an allocation of {size} bytes during a CUDA graph capture")
