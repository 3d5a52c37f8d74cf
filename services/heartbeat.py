"""A worker process's heartbeat: a daemon thread that renews the lease of every job the process
holds and its own row in ``workers``, every ``heartbeat_seconds``, whatever the training chunk
length. Training never holds a transaction open across a chunk, so the renewal never waits on
one of ours; it is fenced like every other write (a job taken over is not renewed).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from sqlalchemy.orm import Session

from services.config import get_settings
from services.db import checkpoints as ckpt
from services.db import scheduling
from services.db.session import session_scope
from services.errors import DomainError

log = logging.getLogger(__name__)


class Heartbeat:
    def __init__(self, name: str | None, queues: str) -> None:
        self.name, self.queues = name, queues
        self._claims: dict[str, ckpt.Claim] = {}
        self._lock = threading.Lock()
        self._writing = threading.Lock()  # held by a renewal, or by training's own checkpoint write
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="descent-heartbeat", daemon=True)

    def start(self) -> "Heartbeat":
        self.beat()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def hold(self, claims: Iterable[ckpt.Claim]) -> None:
        with self._lock:
            self._claims.update({c.job_id: c for c in claims})

    def drop(self, claims: Iterable[ckpt.Claim]) -> None:
        with self._lock:
            for c in claims:
                self._claims.pop(c.job_id, None)

    @contextmanager
    def paused(self) -> Iterator[None]:
        """No renewal while the caller writes the same job rows (its write renews them anyway):
        two transactions of one process locking one set of rows could deadlock each other."""
        with self._writing:
            yield

    def beat(self) -> None:
        """One renewal; a storage error is logged and retried at the next beat."""
        with self._lock:
            claims = list(self._claims.values())
        try:
            with self._writing, session_scope() as session:
                if self.name:
                    scheduling.register_worker(session, self.name, self.queues, socket.gethostname(), os.getpid())
                    forget_dead_neighbours(session)
                if claims:
                    ckpt.hold_fences(session, claims, scheduling.db_now(session))
        except DomainError as exc:
            log.warning("heartbeat failed (%s); retrying in %.1f s", exc, get_settings().heartbeat_seconds)

    def _run(self) -> None:
        while not self._stop.wait(get_settings().heartbeat_seconds):
            self.beat()


def forget_dead_neighbours(session: Session) -> None:
    """A worker killed outright (a crash, kill -9) leaves its row, counted live for up to a
    lease beside its replacement: in the workers gauge and in the scheduler's free slots. A row
    of this host whose process is gone and that missed two beats is dead for sure (two beats: a
    process of another PID namespace under the same host name still beats, and is kept)."""
    quiet = 2 * get_settings().heartbeat_seconds
    for name, pid in scheduling.quiet_workers_on(session, socket.gethostname(), quiet):
        if pid != os.getpid() and not _alive(pid):
            scheduling.forget_worker(session, name)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


_current: dict[int, Heartbeat] = {}


def start(name: str, queues: str) -> Heartbeat:
    """Start this process's heartbeat (a worker child calls it once after fork)."""
    beat = _current[os.getpid()] = Heartbeat(name, queues).start()
    return beat


def leave() -> None:
    """A process that exits cleanly removes its worker row at once (a killed one ages out)."""
    beat = _current.pop(os.getpid(), None)
    if beat is None or not beat.name:
        return
    beat.stop()
    try:
        with session_scope() as session:
            scheduling.forget_worker(session, beat.name)
    except DomainError:
        log.warning("could not remove worker row %s; it ages out", beat.name)


def current() -> Heartbeat:
    """This process's heartbeat; one that renews leases only if no worker started one."""
    beat = _current.get(os.getpid())
    if beat is None:
        beat = _current[os.getpid()] = Heartbeat(None, "").start()
    return beat


@contextmanager
def holding(claims: list[ckpt.Claim]) -> Iterator[None]:
    beat = current()
    beat.hold(claims)
    try:
        yield
    finally:
        beat.drop(claims)
