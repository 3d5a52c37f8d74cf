"""Group commit: the writes that concurrent requests of one process make go to one thread, which
writes all that have arrived in one transaction.

Why: each job submit is a tiny write, and its own transaction costs more than the write (on
SQLite the one write lock, waited for in SQLite's busy handler, plus BEGIN and COMMIT; on
PostgreSQL a round trip and a WAL flush per commit). A request thread blocked on that also
costs an event-loop-to-thread hop per request. Here the request awaits a future on its event
loop, and a request is answered only once its own row is committed: nothing is acknowledged
that could be lost. While one transaction runs, the next requests queue up and go together.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")


class GroupCommit(Generic[Item, Result]):
    """``write_many(items)`` returns one result or exception per item, in order; it runs on this
    object's thread (one per process, started on first use), ``max_batch`` items at most."""

    def __init__(self, write_many: Callable[[Sequence[Item]], list[Result | BaseException]],
                 max_batch: int = 256, name: str = "descent-group-commit") -> None:
        self._write_many, self._max_batch, self._name = write_many, max_batch, name
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._pid: int | None = None
        self._starting = threading.Lock()

    async def submit(self, item: Item) -> Result:
        """The item's result once its transaction committed; its exception if it failed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        self._ensure_thread()
        self._queue.put((item, future, loop))
        return await future

    def _ensure_thread(self) -> None:
        if self._pid == os.getpid():
            return
        with self._starting:  # a forked child has no thread: start its own
            if self._pid != os.getpid():
                self._queue = queue.SimpleQueue()
                threading.Thread(target=self._run, name=self._name, daemon=True).start()
                self._pid = os.getpid()

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < self._max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                results = self._write_many([item for item, _, _ in batch])
            except BaseException as exc:  # noqa: BLE001 (every waiter must hear of it)
                log.exception("group commit of %d item(s) failed", len(batch))
                results = [exc] * len(batch)
            by_loop: dict[asyncio.AbstractEventLoop, list] = {}
            for (_, future, loop), result in zip(batch, results):
                by_loop.setdefault(loop, []).append((future, result))
            for loop, settled in by_loop.items():  # one wake-up of each event loop per batch
                try:
                    loop.call_soon_threadsafe(_settle_all, settled)
                except RuntimeError:
                    pass  # that event loop has closed: nobody waits for these answers


def _settle_all(settled: list[tuple[asyncio.Future, object]]) -> None:
    for future, result in settled:
        _settle(future, result)


def _settle(future: asyncio.Future, result: object) -> None:
    if future.done():  # the request was cancelled (client gone); its row is committed anyway
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)
