"""Progress lines for a job or a sweep while it trains: pure formatting plus one line writer.

A job's line: name, id prefix, a bar, step of max_steps, SSR, steps/s, ETA and status. A sweep's:
name, id prefix, a bar for the whole sweep, members by status, the best SSR, steps/s and ETA.
On a terminal the line is redrawn in place; elsewhere (a log, a pipe) a line is written when
the status changes, at most every ``interval`` seconds otherwise, and once at the end.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections import deque
from typing import TextIO

from services.spec import FINISHED, JobRead
from services.sweep_spec import SweepRead

SWEEP_FINISHED = ("finished", "cancelled")
_STATUS_ORDER = ("queued", "running", "succeeded", "diverged", "failed", "cancelled")


class Rate:
    """Units per second over the last ``window`` seconds of samples (steps, or steps of a sweep)."""

    def __init__(self, window: float = 10.0) -> None:
        self.window = window
        self.samples: deque[tuple[float, float]] = deque()

    def add(self, value: float, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self.samples.append((now, value))
        while len(self.samples) > 2 and now - self.samples[1][0] >= self.window:
            self.samples.popleft()

    def per_second(self) -> float | None:
        if len(self.samples) < 2:
            return None
        (t0, v0), (t1, v1) = self.samples[0], self.samples[-1]
        return (v1 - v0) / (t1 - t0) if t1 > t0 and v1 > v0 else None


def bar(fraction: float | None, width: int, ascii_only: bool = False) -> str:
    """``[█████░░░░░]``; an unknown fraction draws an empty bar."""
    full, empty = ("#", ".") if ascii_only else ("█", "░")
    filled = round(max(0.0, min(1.0, fraction or 0.0)) * width)
    return "[" + full * filled + empty * (width - filled) + "]"


def duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "?"
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    return f"{minutes}m{seconds:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


def ssr_text(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"


def job_parts(job: JobRead, max_steps: int | None, rate: float | None) -> tuple[float | None, str, str]:
    """``(bar fraction, text before the bar, text after it)`` of a job's line."""
    done = job.status in FINISHED
    fraction = 1.0 if done and job.status == "succeeded" else job.step / max_steps if max_steps else None
    steps = f"step {job.step}/{max_steps}" if max_steps else f"step {job.step}"
    after = [steps, f"SSR {ssr_text(job.ssr)}"]
    if rate:
        after.append(f"{rate:.0f} steps/s")
    if done:
        reason = job.stop_reason if job.stop_reason not in (None, job.status) else None
        after.append(job.status + (f" ({reason})" if reason else ""))
    else:
        if rate and max_steps:
            after.append(f"ETA {duration((max_steps - job.step) / rate)}")
        waiting = f" at rung {job.rung}" if job.rung is not None else ""
        if job.queue_workers == 0:
            waiting = f" (no {job.device} worker running)"
        after.append(job.status + (" (cancel requested)" if job.cancel_requested else waiting))
    return fraction, f"{job.name} {job.id[:8]}", "  ".join(after)


def sweep_fraction(sweep: SweepRead) -> float:
    """Planned steps are an upper bound (stop rules, halving); finished members count whole."""
    finished = sum(sweep.counts.get(s, 0) for s in FINISHED)
    by_steps = sweep.steps_done / sweep.steps_planned if sweep.steps_planned else 0.0
    return 1.0 if sweep.status in SWEEP_FINISHED else max(by_steps, finished / max(sweep.members, 1))


def sweep_parts(sweep: SweepRead, rate: float | None, eta: float | None) -> tuple[float, str, str]:
    counts = " ".join(f"{sweep.counts[s]} {s}" for s in _STATUS_ORDER if sweep.counts.get(s))
    best = ssr_text(sweep.best.ssr if sweep.best else None)
    after = [f"{sweep.members} members: {counts or 'none'}", f"best SSR {best}"]
    if rate:
        after.append(f"{rate:.0f} steps/s")
    after.append(sweep.status if sweep.status in SWEEP_FINISHED else f"ETA {duration(eta)}")
    fraction = sweep_fraction(sweep)
    return fraction, f"sweep {sweep.name} {sweep.id[:8]}", f"{fraction:4.0%}  " + "  ".join(after)


class LineWriter:
    """Draws one progress line on ``stream``: in place on a terminal, as log lines elsewhere."""

    def __init__(self, stream: TextIO | None = None, interval: float = 5.0) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.interval = interval
        self.ascii_only = not _can_encode(self.stream, "█░")
        self.last_key: str | None = None
        self.last_time = 0.0
        self.last_line = ""

    def draw(self, fraction: float | None, before: str, after: str, key: str, final: bool = False) -> None:
        """``key`` (e.g. the status) changing forces a line in log mode; ``final`` ends the line."""
        width = shutil.get_terminal_size((100, 24)).columns
        bar_width = max(10, min(40, width - len(before) - len(after) - 4)) if self.tty else 20
        line = f"{before} {bar(fraction, bar_width, self.ascii_only)} {after}"
        self.last_line = line
        if self.tty:
            self.stream.write("\r" + line[: width - 1] + "\x1b[K" + ("\n" if final else ""))
        else:
            now = time.monotonic()
            if final or key != self.last_key or now - self.last_time >= self.interval:
                self.stream.write(line + "\n")
                self.last_key, self.last_time = key, now
        self.stream.flush()


def _can_encode(stream: TextIO, text: str) -> bool:
    try:
        text.encode(getattr(stream, "encoding", None) or "ascii")
    except (UnicodeEncodeError, LookupError):
        return False
    return True
