"""Sweep use cases: submit (expand, validate every member, store all or nothing), read with
counts and a leaderboard, list, cancel. Members are ordinary jobs with a ``sweep_id``; the
scheduler packs them like any other jobs, and cuts their successive-halving rungs."""

from __future__ import annotations

from sqlalchemy.orm import Session

from services import doorbell, heap, idempotency, metrics, quotas, sweep_spec
from services.config import Settings, get_settings
from services.datasets import content_hash, to_arrays
from services.db import repository
from services.db.repository import as_utc
from services.db import sweeps as store
from services.db.models import DEFAULT_TENANT, Sweep
from services.db.session import session_scope
from services.errors import Conflict, InvalidInput
from services.idempotency import Claim, Created
from services.jobs import (
    DEFAULT_LIST_LIMIT, check_against_dataset, decode_cursor, encode_cursor, job_row, referenced_dataset,
)
from services.spec import DatasetRead, InlineData, JobCreate, check_limits
from services.sweep_spec import Member, SweepCreate, SweepPage, SweepRead


def submit_sweep(body: SweepCreate, *, tenant: str = DEFAULT_TENANT) -> SweepRead:
    """Nothing is stored unless every member is a valid job within the limits; then the sweep
    and all its members are one transaction, and the scheduler's doorbell rings once."""
    return submit_sweep_once(body, None, tenant=tenant).value


def submit_sweep_once(body: SweepCreate, idempotency_key: str | None, *,
                      tenant: str = DEFAULT_TENANT) -> Created[SweepRead]:
    """``submit_sweep``, once per idempotency key: a retry with the key and an equal body gets
    the sweep as it is now (see ``services.idempotency``)."""
    settings = get_settings()
    with heap.collection_paused():  # up to max_sweep_members members' objects, none of them garbage
        members, specs = _validated(body, settings)
    claim = None if idempotency_key is None else Claim.of(tenant, idempotency_key, "sweep", body.model_dump(mode="json"))
    return idempotency.once(claim, lambda: _store(body, members, specs, claim, tenant),
                            lambda session, sweep_id: _read(session, sweep_id, tenant))


def _validated(body: SweepCreate, settings: Settings) -> tuple[list[Member], list[JobCreate]]:
    members = sweep_spec.expand(body, settings.max_sweep_members)
    # A sweep larger than the whole queue could never be accepted: a 422 at its size, not a 429.
    sweep_spec.check_count(body, settings.tenant_max_queued, " queued jobs per tenant")
    specs = sweep_spec.validate_members(body, members)
    for member, spec in zip(members, specs):
        try:
            check_limits(spec, settings)
        except InvalidInput as exc:
            raise sweep_spec.member_error(body, member, exc) from None
    sweep_spec.check_early_stopping(body, specs, settings.max_steps)
    return members, specs


def _store(body: SweepCreate, members: list[Member], specs: list[JobCreate], claim: Claim | None,
           tenant: str) -> SweepRead:
    with session_scope(write=True) as session:
        quotas.check_queued(session, tenant, len(members))
        sweep = store.insert_sweep(
            session, tenant=tenant, name=body.name, spec=body.model_dump(mode="json", exclude={"base"}) | {"base": body.base},
            paths=sweep_spec.varied_paths(body), members=len(members),
            planned_steps=sum(spec.stop.max_steps for spec in specs))
        with heap.collection_paused():  # once the write lock is ours: a pause never spans the wait for it
            rows = _member_rows(session, body, members, specs, sweep, tenant)
            _check_cost(body, members, rows_cost(specs, rows))
            store.insert_members(session, [row for row, _ in rows])
        if claim is not None:
            claim.store(session, sweep.id)
        read = _read(session, sweep.id, tenant)
    metrics.JOBS_SUBMITTED.inc(len(members))
    doorbell.ring(get_settings())
    return read


def _check_cost(body: SweepCreate, members: list[Member], priced: list[tuple[JobCreate, int]]) -> None:
    """The tenant's cost limit over all members, located at the sweep field that drives it."""
    settings = get_settings()
    try:
        quotas.check_cost(settings, priced)
    except InvalidInput as exc:
        costs = [quotas.training_cost(spec, points) for spec, points in priced]
        raise sweep_spec.cost_error(body, members, costs, settings.tenant_max_cost, exc) from None


def rows_cost(specs: list[JobCreate], rows: list[tuple[dict, int]]) -> list[tuple[JobCreate, int]]:
    return [(spec, points) for spec, (_, points) in zip(specs, rows)]


def _member_rows(session: Session, body: SweepCreate, members: list[Member], specs: list[JobCreate],
                 sweep: Sweep, tenant: str) -> list[tuple[dict, int]]:
    """(job row, data points) of each member. Members share the base's data object unless they
    vary it: each distinct one is hashed and stored (or looked up) once. They share the sweep's
    submit time too: the scheduler spreads jobs submitted together over every free worker
    (``packing.Stream``)."""
    datasets: dict[int, DatasetRead] = {}
    rows = []
    for member, spec in zip(members, specs):
        key = id(member.document.get("data"))
        try:
            if key not in datasets:
                datasets[key] = _dataset(session, spec, tenant)
            elif not isinstance(spec.data, InlineData):
                check_against_dataset(spec, datasets[key])  # each member, against the shared data
        except InvalidInput as exc:
            raise sweep_spec.member_error(body, member, exc) from None
        dataset = datasets[key]
        rows.append((repository.new_job_values(**job_row(spec, dataset, tenant, sweep.id, member.values),
                                               created_at=sweep.created_at), dataset.n_points))
    return rows


def _dataset(session: Session, spec: JobCreate, tenant: str) -> DatasetRead:
    if isinstance(spec.data, InlineData):
        x, y = to_arrays(spec.data.x, spec.data.y, ("data",))
        return repository.store_dataset(session, content_hash(x, y), x, y, tenant=tenant)
    return referenced_dataset(session, spec, tenant)


def get_sweep(sweep_id: str, *, tenant: str = DEFAULT_TENANT) -> SweepRead:
    with session_scope() as session:
        return _read(session, sweep_id, tenant)


def _read(session: Session, sweep_id: str, tenant: str, board: bool = True) -> SweepRead:
    row = store.get_sweep_row(session, sweep_id, tenant=tenant)
    counts, reasons, steps = store.member_counts(session, sweep_id)
    leaders = store.leaderboard(session, sweep_id, 10 if board else 1)
    early = row.spec.get("early_stopping")
    finished_at = as_utc(row.finished_at)
    best = leaders[0] if leaders and leaders[0].status != "diverged" else None  # diverged rank last
    if finished_at is None and not counts.get("queued", 0) + counts.get("running", 0):
        finished_at = store.last_finished_at(session, sweep_id)  # until the scheduler stamps the same
    return SweepRead(
        id=row.id, name=row.name, status=sweep_status(row.cancelled, counts, steps), created_at=store.created_at(row),
        finished_at=finished_at,
        members=row.members, paths=row.paths, early_stopping=early, counts=counts, stop_reasons=reasons,
        steps_done=steps, steps_planned=row.planned_steps, best=best,
        leaderboard=leaders if board else [],
    )


def sweep_status(cancelled: bool, counts: dict[str, int], steps_done: int) -> str:
    """Derived from the members, so it is never stale: finished when none is left to run."""
    if cancelled:
        return "cancelled"
    unfinished = counts.get("queued", 0) + counts.get("running", 0)
    if unfinished == 0:
        return "finished"
    started = counts.get("running", 0) or steps_done or unfinished < sum(counts.values())
    return "running" if started else "queued"


def list_sweeps(limit: int | None = None, cursor: str | None = None, *, tenant: str = DEFAULT_TENANT) -> SweepPage:
    """Newest first, paged like jobs; items carry counts and the best member, no leaderboard."""
    limit = DEFAULT_LIST_LIMIT if limit is None else limit
    maximum = get_settings().max_list_limit
    if not 1 <= limit <= maximum:
        raise InvalidInput(("limit",), f"must be between 1 and {maximum}")
    after = decode_cursor(cursor) if cursor else None
    with session_scope() as session:
        rows = store.list_sweep_rows(session, limit + 1, after, tenant=tenant)
        items = [_read(session, row.id, tenant, board=False) for row in rows[:limit]]
    more = len(rows) > limit
    return SweepPage(items=items, next_cursor=encode_cursor(items[-1]) if more else None)


def cancel_sweep(sweep_id: str, *, tenant: str = DEFAULT_TENANT) -> SweepRead:
    """Every unfinished member is cancelled (running ones at their next checkpoint). A finished
    or already cancelled sweep is a Conflict, as a job's second cancel is."""
    with session_scope(write=True) as session:
        current = _read(session, sweep_id, tenant, board=False)
        if current.status in ("finished", "cancelled"):
            raise Conflict(f"sweep {sweep_id} is already {current.status}")
        ended = store.cancel_members(session, sweep_id)
        if ended is None:  # a concurrent cancel won after our read
            raise Conflict(f"sweep {sweep_id} is already cancelled")
        after = _read(session, sweep_id, tenant)
    metrics.count_finished({"cancelled": ended})
    return after
