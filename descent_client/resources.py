"""``Job`` and ``Sweep``: handles on a server resource, holding its latest read (``info``)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Generic, TextIO, TypeVar
from urllib.parse import quote

from descent_client.errors import Conflict, ConnectionFailed, DescentError, Unavailable, WaitTimeout
from descent_client.progress import SWEEP_FINISHED, LineWriter, Rate, job_parts, sweep_fraction, sweep_parts
from services.spec import FINISHED, HistoryRead, JobRead, Matrix, ParametersRead, PredictRead
from services.sweep_spec import LeaderEntry, SweepRead

if TYPE_CHECKING:
    from descent_client.client import Client

R = TypeVar("R", JobRead, SweepRead)
Progress = bool | TextIO


class _Resource(Generic[R]):
    kind = ""
    collection = ""

    def __init__(self, client: Client, info: R) -> None:
        self.client, self.info = client, info

    @property
    def id(self) -> str:
        return self.info.id

    @property
    def status(self) -> str:
        return self.info.status

    @property
    def path(self) -> str:
        return f"/v1/{self.collection}/{quote(self.id, safe='')}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.id!r}, status={self.status!r})"

    def refresh(self) -> R:
        self.info = self.client.get(self.path, type(self.info))
        return self.info

    def cancel(self) -> R:
        """Queued work never starts; running work stops at its next checkpoint. A cancel that
        finds it already cancelled (e.g. our own retried request) returns the state."""
        try:
            self.info = self.client.post(f"{self.path}/cancel", type(self.info))
        except Conflict:
            if self.refresh().status != "cancelled":
                raise
        return self.info

    def plot(self) -> bytes:
        """The server's PNG picture of it (``GET .../plot.png``)."""
        response = self.client.request("GET", f"{self.path}/plot.png")
        kind = response.headers.get("content-type", "")
        if not kind.startswith("image/png"):
            raise DescentError(f"{self.kind} {self.id}: the plot answer is {kind or 'untyped'}, not a PNG")
        return response.content

    def _wait(self, done: Callable[[R], bool], draw: Callable[[LineWriter, R, bool], None], progress: Progress,
              timeout: float | None, max_poll: float, patience: float) -> R:
        """Poll (0.1 s, growing to ``max_poll``) until ``done``; draw a line after each read. An
        API that stops answering (a restart) is waited for up to ``patience`` seconds, but never
        past ``timeout``: a wait that ran out while the API was down used to go on for
        ``patience`` (60 s for ``timeout=2``)."""
        writer = None if progress is False else LineWriter(None if progress is True else progress)
        deadline = None if timeout is None else time.monotonic() + timeout
        pause, ended, answered = 0.1, False, time.monotonic()
        try:
            while True:
                try:
                    info = self.refresh()
                except (ConnectionFailed, Unavailable) as exc:
                    if _past(deadline):
                        raise WaitTimeout(f"{self.kind} {self.id} still {self.status} (its last read) after "
                                          f"{timeout:g} s: {exc}") from exc
                    if time.monotonic() - answered > patience:
                        raise
                    time.sleep(_until(deadline, max_poll))
                    continue
                answered, ended = time.monotonic(), done(info)
                if writer:
                    draw(writer, info, ended)
                if ended:
                    return info
                if _past(deadline):
                    raise WaitTimeout(f"{self.kind} {self.id} still {info.status} after {timeout:g} s")
                time.sleep(_until(deadline, pause))
                pause = min(max_poll, pause * 1.5)
        finally:
            if writer and writer.tty and not ended:
                writer.stream.write("\n")


class Job(_Resource[JobRead]):
    """A submitted job. ``max_steps`` is known when this client submitted it."""

    kind, collection = "job", "jobs"

    def __init__(self, client: Client, info: JobRead, max_steps: int | None = None) -> None:
        super().__init__(client, info)
        self.max_steps = max_steps or getattr(info, "max_steps", None)  # a server that reports it

    def wait(self, progress: Progress = False, *, timeout: float | None = None, max_poll: float = 1.0,
             patience: float = 60.0) -> JobRead:
        """Until it finishes (succeeded, diverged, failed, cancelled); ``progress``: draw a live
        line on stderr (or on the given stream). Returns the final read; ``WaitTimeout`` after
        ``timeout`` seconds, also while the API is down (which is otherwise waited out for
        ``patience`` seconds, then raised)."""
        rate = Rate()

        def draw(writer: LineWriter, info: JobRead, ended: bool) -> None:
            rate.add(info.step)
            per_second = _overall_rate(info) if ended else rate.per_second()
            writer.draw(*job_parts(info, self.max_steps, per_second), key=info.status, final=ended)

        return self._wait(lambda info: info.status in FINISHED, draw, progress, timeout, max_poll, patience)

    def history(self, *, every: int | None = None, max_points: int | None = None) -> HistoryRead:
        """SSR at every step from 0 (``None`` where it was not finite), optionally thinned."""
        return self.client.get(f"{self.path}/history", HistoryRead, every=every, max_points=max_points)

    def history_lines(self, format: str = "csv", *, every: int | None = None,  # noqa: A002 (the API's name)
                      max_points: int | None = None) -> Iterator[str]:
        """The history streamed as lines, any length: ``csv`` (``step,ssr`` after a header;
        ``nan`` where not finite) or ``ndjson`` (``{"step", "ssr"}`` per line)."""
        return self.client.lines(f"{self.path}/history", format=format, every=every, max_points=max_points)

    def parameters(self, step: int | None = None) -> ParametersRead:
        """The latest checkpoint's parameters, or those of the checkpoint at ``step``."""
        return self.client.get(f"{self.path}/parameters", ParametersRead, step=step)

    def predict(self, x: Sequence[Any] | Any) -> Matrix:
        """``y`` for each point of ``x``: rows of inputs, or plain numbers for a one-input net."""
        return self.client.post(f"{self.path}/predict", PredictRead, {"x": as_rows(x)}).y


class Sweep(_Resource[SweepRead]):
    kind, collection = "sweep", "sweeps"

    def wait(self, progress: Progress = False, *, timeout: float | None = None, max_poll: float = 1.0,
             patience: float = 60.0) -> SweepRead:
        """Until every member has ended (a cancelled sweep's running members stop at their next
        checkpoint, after the sweep reads ``cancelled``); ``progress`` as for jobs."""
        steps, share = Rate(), Rate()

        def draw(writer: LineWriter, info: SweepRead, ended: bool) -> None:
            steps.add(info.steps_done)
            share.add(sweep_fraction(info))
            per_share = share.per_second()
            eta = (1 - sweep_fraction(info)) / per_share if per_share else None
            key = f"{info.status} {sorted(info.counts.items())}"
            writer.draw(*sweep_parts(info, steps.per_second(), eta), key=key, final=ended)

        def ended(info: SweepRead) -> bool:
            return info.status in SWEEP_FINISHED and not info.counts.get("queued", 0) + info.counts.get("running", 0)

        return self._wait(ended, draw, progress, timeout, max_poll, patience)

    def leaderboard(self) -> list[LeaderEntry]:
        """The best members (at most 10) by SSR, as of now."""
        return self.refresh().leaderboard

    def members(self, status: str | None = None, limit: int | None = None) -> Iterator[JobRead]:
        return self.client.jobs(sweep_id=self.id, status=status, limit=limit)


def _past(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline


def _until(deadline: float | None, pause: float) -> float:
    """``pause``, shortened so that a wait's last read is made at its deadline, not after it."""
    return pause if deadline is None else max(0.0, min(pause, deadline - time.monotonic()))


def _overall_rate(info: JobRead) -> float | None:
    """Steps per second over the whole run (the server's timestamps), for a finished job."""
    if info.started_at is None or info.finished_at is None:
        return None
    seconds = (info.finished_at - info.started_at).total_seconds()
    return info.step / seconds if seconds > 0 and info.step else None


def as_rows(x: Any) -> Matrix:
    """A matrix as lists of floats; a flat sequence of numbers is one point per value. Rows may
    be NumPy arrays (``list(X)``, ``[X[0], X[1]]``): each is read as a list, as a whole array is."""
    rows = _plain(x) if hasattr(x, "tolist") else list(x)
    return [[float(v) for v in row] if isinstance(row, Sequence) else [float(row)] for row in map(_plain, rows)]


def _plain(value: Any) -> Any:
    """A NumPy array or scalar as Python lists and floats; anything else as it is."""
    return value.tolist() if hasattr(value, "tolist") else value
