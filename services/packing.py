"""Which queued jobs share an engine pack, and how a group is cut into packs (pure policy).

Jobs can share a pack when everything the engine holds pack-wide agrees: architecture, dataset,
dtype, batching (and the batch order's seed), checkpoint cadence and device. Sweep members and
independent jobs from any client alike: the key says nothing about who submitted them.
A group is cut so that no pack exceeds the cost cap (members x parameters x points) or the
member cap, and so that a large group spreads over every live worker of its queue; free workers
are shared among tenants (``fair_share``).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone


@dataclass(frozen=True)
class QueuedJob:
    id: str
    pack_key: str
    device: str
    cost: float
    tenant: str = "default"
    created_at: datetime | None = None  # submitted (naive UTC on SQLite, as the driver returns it)


def linger(jobs: Sequence[QueuedJob], busy: int, now: datetime, seconds: float, small: float) -> float:
    """Seconds a queue's waiting jobs should still wait for more to join them (0: send now).

    Every pack costs a worker a fixed amount (claim, load, one commit) whatever its size, so a
    stream of tiny jobs sent one pack per free worker would be mostly that cost. They wait only
    while another pack of the queue trains (``busy`` workers), only while their summed cost is
    under ``small``, and at most ``seconds`` after the oldest was submitted. A job submitted to
    an idle queue, a large job and a job whose message was lost (old) all go at once."""
    if busy <= 0 or seconds <= 0 or not jobs or sum(job.cost for job in jobs) >= small:
        return 0.0
    oldest = min((job.created_at for job in jobs if job.created_at is not None), default=None)
    if oldest is None:
        return 0.0
    waited = (_as_utc(now) - _as_utc(oldest)).total_seconds()
    return min(seconds, max(0.0, seconds - waited))  # min: a clock ahead of ours waits no longer


def _as_utc(value: datetime) -> datetime:
    """Aware UTC. SQLite's driver returns naive UTC, psycopg the session's zone: dropping that
    zone instead of converting it made a job submitted east of UTC look submitted in the future."""
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def within_tenant_limit(jobs: Sequence[QueuedJob], in_flight: dict[str, int], limit: int) -> list[QueuedJob]:
    """The jobs (oldest first, as given) that keep each tenant at most ``limit`` jobs running or
    on their way to a worker: one tenant's huge backlog never takes every worker from the rest."""
    room = {tenant: limit - n for tenant, n in in_flight.items()}
    kept = []
    for job in jobs:
        left = room.get(job.tenant, limit)
        if left > 0:
            kept.append(job)
        room[job.tenant] = left - 1
    return kept


def full_tenants(in_flight: dict[str, int], limit: int) -> set[str]:
    """Tenants with no room left under ``limit``: the scheduler leaves their jobs out of its read."""
    return {tenant for tenant, n in in_flight.items() if n >= limit}


def tenants_left_out(jobs: Sequence[QueuedJob], kept: Sequence[QueuedJob]) -> set[str]:
    """Tenants some of whose ``jobs`` ``within_tenant_limit`` dropped: their room ran out."""
    ids = {job.id for job in kept}
    return {job.tenant for job in jobs if job.id not in ids}


def oldest_first(jobs: Sequence[QueuedJob]) -> list[QueuedJob]:
    """In the scheduler's order: submit time, then id."""
    never = datetime.min.replace(tzinfo=timezone.utc)
    return sorted(jobs, key=lambda job: (never if job.created_at is None else _as_utc(job.created_at), job.id))


@dataclass(frozen=True)
class PackPlan:
    device: str
    job_ids: list[str]
    tenant: str = "default"  # whose jobs (a pack never mixes tenants)


def pack_key(document: dict, dataset_id: str) -> str:
    """A short stable digest of the pack-wide settings of a stored job spec document."""
    batch_size = document.get("batch_size")
    init = document.get("init") or {}
    batch_seed = init.get("seed", 0) if batch_size else None
    shared = [dataset_id, document["architecture"], document.get("dtype", "float64"), batch_size,
              batch_seed, document.get("checkpoint_every", 100), document.get("device", "cpu")]
    return hashlib.sha256(json.dumps(shared, sort_keys=True).encode()).hexdigest()[:40]


def member_cost(layers: Sequence[int], n_points: int) -> float:
    """Work of one network per step, up to a constant: parameters x data points."""
    parameters = sum(a * b + b for a, b in zip(layers, layers[1:]))
    return float(parameters * n_points)


def plan_packs(jobs: Sequence[QueuedJob], slots: dict[str, int], max_cost: float,
               max_members: int, stream: Stream | None = None) -> list[PackPlan]:
    """Groups in order of first appearance, each cut into equal contiguous packs; a group that
    is a ``stream`` is not spread over the slots. The pack key names a tenant's own dataset, so
    a group is one tenant's; the tenant is in the group's key all the same, as a plan names it."""
    groups: dict[tuple[str, str, str], list[QueuedJob]] = {}
    for job in jobs:
        groups.setdefault((job.device, job.tenant, job.pack_key), []).append(job)
    plans = []
    for (device, tenant, _), members in groups.items():
        parts = pack_count(members, slots.get(device, 0), max_cost, max_members, stream)
        for chunk in split_evenly(members, parts):
            plans.append(PackPlan(device, [job.id for job in chunk], tenant))
    return plans


def fair_share(plans: Sequence[PackPlan], busy: dict[str, int], slots: int) -> list[PackPlan]:
    """The ``slots`` packs to send now, from one queue's ``plans`` (oldest first): each free
    worker goes to the tenant with the fewest packs training or on their way (``busy``, plus
    those chosen here), among equals the one whose next pack comes first; a tenant's own packs
    keep their order. Taken in plain order, the slots went to the oldest packs, so a worker that
    came free went back to the tenant with the oldest backlog: one tenant's sweep of more packs
    than workers held every worker until it drained, whatever the other tenants waited with."""
    queues: dict[str, list[tuple[int, PackPlan]]] = {}
    for position, plan in enumerate(plans):
        queues.setdefault(plan.tenant, []).append((position, plan))
    taken = {tenant: busy.get(tenant, 0) for tenant in queues}
    chosen: list[PackPlan] = []
    while len(chosen) < slots and queues:
        tenant = min(queues, key=lambda t: (taken[t], queues[t][0][0]))
        chosen.append(queues[tenant].pop(0)[1])
        taken[tenant] += 1
        if not queues[tenant]:
            del queues[tenant]
    return chosen


def pack_count(members: Sequence[QueuedJob], slots: int, max_cost: float, max_members: int,
               stream: Stream | None = None) -> int:
    """Enough packs for the caps, and at least one per live worker slot while members last,
    unless the members are a ``stream`` (see ``Stream``): then one pack, within the caps."""
    per_pack = max(1, math.floor(max_cost / max(job.cost for job in members)))
    by_cost = math.ceil(len(members) / per_pack)
    by_members = math.ceil(len(members) / max_members)
    spread = 1 if stream is not None and stream.holds(members) else slots
    return max(1, min(len(members), max(by_cost, by_members, spread)))


@dataclass(frozen=True)
class Stream:
    """Tiny jobs each submitted alone (no two share a submit time): a backlog that built up
    while the workers were busy. Jobs submitted together (a sweep's members share the sweep's
    submit time) are a batch, and a group with any batch in it is no stream. A stream goes out
    as one pack and leaves the other free workers to what arrives next: split over two workers
    that came free together, its halves finished together again, and a burst of 1000 single
    submits went out as ever smaller pairs of packs (benchmarks/RESULTS.md, eleventh session).
    Jobs of summed cost ``small`` or more are never a stream: their training, not a pack's fixed
    cost, dominates."""

    small: float

    def holds(self, jobs: Sequence[QueuedJob]) -> bool:
        times = [_as_utc(job.created_at) for job in jobs if job.created_at is not None]
        if len(times) < 2 or len(times) < len(jobs) or sum(job.cost for job in jobs) >= self.small:
            return False
        return len(set(times)) == len(times)


def split_evenly(items: Sequence[QueuedJob], parts: int) -> list[list[QueuedJob]]:
    """``parts`` contiguous slices whose lengths differ by at most one."""
    size, extra = divmod(len(items), parts)
    out, start = [], 0
    for i in range(parts):
        end = start + size + (i < extra)
        out.append(list(items[start:end]))
        start = end
    return out
