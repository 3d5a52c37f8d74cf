"""The scheduler's doorbell: a submit rings it so the scheduler acts now instead of at its
next poll. It carries no data (the database says what to do), so a lost ring only costs one
scheduler period, and a burst of rings is drained as one wake-up.

It is a kombu queue on the same broker as the training tasks (a Redis list, or a file in the
embedded broker's folder), so it works wherever the stack does without another server.

A ring says one thing besides "wake up": whether a worker just came free. While every worker is
busy, a pass on a submit's ring can only find no free slot, so the scheduler waits for a freed
worker's ring (or its period) instead; in a burst of submits that is most of its work.
"""

from __future__ import annotations

import logging
import os
import queue as stdlib_queue
import threading
import time
from typing import Any

from kombu import Connection, Queue

from services.broker_fs import broker_url
from services.config import Settings, get_settings

log = logging.getLogger(__name__)
QUEUE = "descent.scheduler.doorbell"
# The anonymous exchange routes by queue name alone: no exchange state to declare (kombu keeps
# declared exchanges per process, which breaks a process that changes brokers, like a test).
_QUEUE = Queue(QUEUE, routing_key=QUEUE, exchange="", no_declare=False)
# The scheduler reads its doorbell more often than workers poll for tasks: it is one process,
# and its wake-up latency is most of the submit -> running latency.
POLL_SECONDS = 0.01
# A process sends at most one ring per this many seconds; rings made meanwhile go out as one.
# The first ring after a quiet spell goes at once, so a lone submit is not delayed; in a burst,
# each submit would otherwise cost a broker message (a third of a POST's CPU on the embedded
# broker) for a scheduler that reads the database once per wake-up anyway.
RING_GAP_SECONDS = 0.01
# After a ring that carried several submits (a burst), the next waits this long. A burst's rings
# find the scheduler holding jobs for a fuller pack or every worker busy (it wakes by itself, or
# on a freed worker's ring), so most of them only cost a broker message each (on Redis a tenth
# of the API's CPU in a burst of 1000 POSTs). A lone submit still rings at once.
BURST_RING_GAP_SECONDS = 0.05

_ringers: dict[int, "_Ringer"] = {}
_creating = threading.Lock()


def _connection(settings: Settings, polling: float | None = None) -> Connection:
    from services.queue import transport_options  # one place knows the broker's folders

    options = transport_options(settings)
    if polling is not None and settings.broker_url.startswith("filesystem"):
        options["polling_interval"] = polling
    if settings.broker_url.startswith("redis"):
        # Fail fast: a submit must not wait for a broker that is down (the poll covers for it).
        options |= {"socket_timeout": 2.0, "socket_connect_timeout": 1.0}
    return Connection(broker_url(settings.broker_url), transport_options=options, connect_timeout=1)


def ring(settings: Settings | None = None, freed: bool = False) -> None:
    """Wake the scheduler; ``freed``: a worker of this process just came free. Never blocks nor
    raises: a per-process thread sends the ring, and rings made while it sends or within
    ``RING_GAP_SECONDS`` of the last (``BURST_RING_GAP_SECONDS`` after a ring that carried
    several) are coalesced into one more (the scheduler reads the database, so one wake-up after
    the last commit is all it needs)."""
    settings = settings or get_settings()
    ringer = _ringers.get(os.getpid())
    if ringer is None or ringer.settings is not settings:
        with _creating:  # request threads may ring at once: one ringer per process
            ringer = _ringers.get(os.getpid())
            if ringer is None or ringer.settings is not settings:
                if ringer is not None:
                    ringer.stop()
                ringer = _ringers[os.getpid()] = _Ringer(settings)
    with ringer.lock:
        ringer.freed = ringer.freed or freed
        ringer.rings += 1
    ringer.pending.set()
    if freed:
        ringer.urgent.set()  # cuts a burst's wait short


class _Ringer:
    """The thread that sends this process's rings, with its own broker connection."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.pending = threading.Event()
        self.urgent = threading.Event()  # a freed ring is waiting: no burst gap for it
        self.freed = False  # set before ``pending``, taken after clearing it (under ``lock``)
        self.rings = 0  # ``ring`` calls since the last send (under ``lock``)
        self.lock = threading.Lock()
        self.stopped = False
        threading.Thread(target=self._run, name="descent-doorbell", daemon=True).start()

    def _run(self) -> None:
        connection = simple = None
        sent, gap = -float("inf"), RING_GAP_SECONDS
        while True:
            self.pending.wait()
            self._hold(sent, gap)
            self.pending.clear()
            self.urgent.clear()
            with self.lock:
                freed, self.freed = self.freed, False
                gap = BURST_RING_GAP_SECONDS if self.rings > 1 else RING_GAP_SECONDS
                self.rings = 0
            if self.stopped:
                break
            try:
                if simple is None:
                    connection = _connection(self.settings)
                    simple = connection.SimpleQueue(_QUEUE, serializer="json")
                simple.put({"at": time.time(), "freed": freed}, exchange="", routing_key=QUEUE, retry=False)
                sent = time.monotonic()
            except Exception:  # noqa: BLE001 (any broker failure; the scheduler's poll covers for it)
                log.warning("could not ring the scheduler's doorbell; it acts at its next poll", exc_info=True)
                _release(connection)
                connection = simple = None
        _release(connection)

    def _hold(self, sent: float, gap: float) -> None:
        """Until ``gap`` after the last send, or ``RING_GAP_SECONDS`` once a freed worker's ring
        is waiting (a freed worker is news the scheduler waits for)."""
        while True:
            with self.lock:
                urgent = self.freed
            wait = sent + (RING_GAP_SECONDS if urgent else gap) - time.monotonic()
            if wait <= 0 or self.stopped:
                return
            if urgent:
                time.sleep(wait)
            else:
                self.urgent.wait(wait)

    def stop(self) -> None:
        self.stopped = True
        self.pending.set()
        self.urgent.set()


def _release(connection: Connection | None) -> None:
    if connection is not None:
        try:
            connection.release()
        except Exception:  # noqa: BLE001
            pass


def forget() -> None:
    """Stop this process's ringing thread (tests that change the settings call this)."""
    ringer = _ringers.pop(os.getpid(), None)
    if ringer is not None:
        ringer.stop()


class Doorbell:
    """The scheduler's side: ``wait(timeout)`` returns early when someone rang."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        self._connection: Connection | None = None
        self._queue = None
        self.freed = False  # whether a ring drained by the last ``wait`` said a worker came free

    def wait(self, timeout: float) -> bool:
        """True if rung (all pending rings are drained), False after ``timeout``."""
        self.freed = False
        try:
            simple = self._open()
            self._note(simple.get(timeout=timeout))
        except stdlib_queue.Empty:
            return False
        except Exception:  # noqa: BLE001 (broker down: fall back to the poll)
            log.warning("doorbell unavailable; polling", exc_info=True)
            self.close()
            time.sleep(timeout)
            return False
        self._drain()
        return True

    def _drain(self) -> None:
        try:
            while True:
                self._note(self._queue.get_nowait())
        except stdlib_queue.Empty:
            pass
        except Exception:  # noqa: BLE001 (a broker error while draining: the next wait reconnects)
            log.warning("doorbell drain failed", exc_info=True)
            self.close()

    def _note(self, message: Any) -> None:
        """Ack a ring and remember whether it announced a free worker (a ring from an older
        version, without the field, is taken as one: waking for nothing costs only a pass)."""
        body = message.payload if isinstance(message.payload, dict) else {}
        self.freed = self.freed or bool(body.get("freed", True))
        message.ack()

    def _open(self):  # noqa: ANN202 (kombu SimpleQueue)
        if self._queue is None:
            self._connection = _connection(self.settings, polling=POLL_SECONDS)
            self._queue = self._connection.SimpleQueue(_QUEUE, serializer="json")
        return self._queue

    def close(self) -> None:
        _release(self._connection)
        self._connection = self._queue = None
