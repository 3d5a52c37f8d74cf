"""Per-tenant limits checked when work is submitted: how much may wait, and how much one job or
sweep may cost. (How much may run at once is the scheduler's: ``tenant_max_running``.)

The queued count is read in the submit's own transaction once the tenant's other submits in
flight have committed (``repository.lock_submits`` on PostgreSQL; SQLite has one writer), so it
sees them all. A process counts at most once a second while a tenant is far from its limit
(``_FAR``): a COUNT per submit was a sixth of a POST's work in a burst. Within that second
another API process's submits go unseen, so with several API processes a tenant far from its
limit may pass it by up to 90 % of it per other process; near it, every submit counts afresh.
A refusal always comes from a fresh count.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from services.config import Settings, get_settings
from services.db import repository
from services.db.models import Job
from services.errors import InvalidInput, TooMany
from services.packing import member_cost
from services.spec import JobCreate

# When a tenant over its queue limit may try again: about the time a few packs take to finish.
RETRY_AFTER_SECONDS = 30


def training_cost(spec: JobCreate, n_points: int) -> float:
    """Parameters x points x steps: proportional to the multiply-adds of the whole training
    (the scheduler's per-step cost of a member, times its steps)."""
    return member_cost(spec.architecture.layers, n_points) * spec.stop.max_steps


def check_cost(settings: Settings, members: Sequence[tuple[JobCreate, int]],
               loc: tuple[str | int, ...] = ("stop", "max_steps")) -> None:
    """``members``: (spec, number of data points) of a job, or of every member of a sweep."""
    cost = sum(training_cost(spec, points) for spec, points in members)
    if cost > settings.tenant_max_cost:
        whose = f"summed over {len(members)} members" if len(members) > 1 else "of this job"
        raise InvalidInput(loc, f"estimated training cost {cost:.3g} (parameters x points x steps, {whose}) "
                                f"exceeds the limit of {settings.tenant_max_cost:.3g}; "
                                "train fewer steps, points or members, or a smaller network")


# A count this process made is trusted for this long while count + jobs added since + the new
# ones stay under this share of the limit.
_RECOUNT_SECONDS = 1.0
_FAR = 0.9
_counts: dict[tuple[str, str], list[float]] = {}  # (database, tenant): [counted at, count, added since]


def check_queued(session: Session, tenant: str, adding: int, settings: Settings | None = None, *,
                 pending: int = 0) -> None:
    """429 when ``adding`` more jobs would take the tenant's queued jobs past its limit: the
    queue drains, so a retry may succeed. A batch larger than the whole limit never could: that
    is invalid input, which callers locate at their own field first (a sweep: ``check_count``).

    ``pending``: the tenant's jobs this transaction has accepted but not inserted yet (a group
    commit inserts its batch at the end); a fresh count cannot see them, so they are added to it,
    or one batch of any size would pass a limit it overshoots."""
    settings = settings or get_settings()
    limit = settings.tenant_max_queued
    if adding > limit:
        raise InvalidInput((), f"{adding} jobs exceed the limit of {limit} queued jobs per tenant")
    repository.lock_submits(session, [tenant])  # the count below then sees every earlier submit
    key, now = (settings.database_url, tenant), time.monotonic()
    known = _counts.get(key)
    if known is not None and now - known[0] < _RECOUNT_SECONDS and known[1] + known[2] + adding <= _FAR * limit:
        known[2] += adding
        return
    queued = session.scalar(select(func.count()).select_from(Job).where(Job.tenant_id == tenant, Job.status == "queued"))
    queued += pending
    if queued + adding > limit:
        raise TooMany(f"{queued} jobs of this tenant are queued and {adding} more would exceed the limit of "
                      f"{limit}; retry when some have started", RETRY_AFTER_SECONDS)
    _counts[key] = [now, queued - pending, pending + adding]
