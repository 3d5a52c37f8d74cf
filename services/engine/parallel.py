"""The chunks of a model-first pass on all the CPU's cores: one thread per core.

NumPy's matmul and ufuncs and the numba kernels release the GIL, so threads run the chunks
truly in parallel; each thread works in its own buffers (its ``slot``) and BLAS is held to one
thread meanwhile (``chunks.blas_thread_limit``). Which thread runs a chunk changes nothing in
its numbers, and partial sums are added in a fixed order afterwards, so results are the same
bit for bit with any number of threads.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

_pool: tuple[int, ThreadPoolExecutor] | None = None  # (pid that made it, pool): not across fork


def cores() -> int:
    """CPUs this process may run on (its affinity mask where the OS tells, else all)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def executor() -> ThreadPoolExecutor:
    """The process's pool of cores() - 1 helper threads (made anew in a forked child)."""
    global _pool
    if _pool is None or _pool[0] != os.getpid():
        _pool = (os.getpid(), ThreadPoolExecutor(max(1, cores() - 1), thread_name_prefix="descent-chunk"))
    return _pool[1]


def run(tasks: list[Callable[[int], None]], threads: int) -> None:
    """Run every task once on up to ``threads`` threads (this one included). Each thread takes
    the next task left until none is (so a thread the OS holds back does not hold the others
    up) and calls it with its slot: its own buffers. Errors are re-raised."""
    threads = max(1, min(threads, len(tasks)))
    pending = deque(tasks)  # popleft is atomic: each task runs once

    def work(slot: int) -> None:
        while pending:
            try:
                task = pending.popleft()
            except IndexError:
                return
            task(slot)

    futures = [executor().submit(work, slot) for slot in range(1, threads)]
    try:
        work(0)
    finally:  # never leave a helper writing into buffers after we return
        errors = [future.exception() for future in futures]
    for error in errors:
        if error is not None:
            raise error
