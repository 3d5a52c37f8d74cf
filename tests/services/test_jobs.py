"""Job use cases: submit, read, list with a keyset cursor, cancel."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from services import datasets, jobs
from services.db.models import Dataset, Job
from services.db.session import session_scope
from services.errors import Conflict, InvalidInput, NotFound
from services.spec import JobCreate

from .conftest import STATQUEST_X, STATQUEST_Y, make_spec, set_job


def stored_row(job_id: str) -> Job:
    with session_scope() as session:
        return session.get(Job, job_id)


def test_submit_stores_and_rings_but_publishes_no_task(configured, spec: JobCreate) -> None:
    """The API only writes rows: the scheduler is the one publisher of training tasks."""
    from services import doorbell

    job = jobs.submit_job(spec)
    assert (job.status, job.step, job.name, job.device, job.sweep_id, job.attempts) == \
        ("queued", 0, "statquest", "cpu", None, 0)
    assert job.queue_workers is None  # a read counts the live workers of its queue: none here
    assert jobs.get_job(job.id) == job.model_copy(update={"queue_workers": 0})
    row = stored_row(job.id)
    assert row.dispatched_at is None and row.cost == 7 * 3 and len(row.pack_key) == 40
    assert row.spec["data"] == {"dataset_id": row.dataset_id}
    assert JobCreate.model_validate(row.spec).model_dump(exclude={"data"}) == spec.model_dump(exclude={"data"})
    assert not list((configured.broker_folder / "queue").glob("*.cpu.msg"))
    bell = doorbell.Doorbell(configured)
    try:
        assert bell.wait(1.0) is True
        assert bell.wait(0.05) is False  # one wake-up drained
    finally:
        bell.close()
        doorbell.forget()


def test_inline_data_becomes_one_content_hashed_dataset(configured, spec: JobCreate) -> None:
    first, second = jobs.submit_job(spec), jobs.submit_job(spec)
    uploaded = datasets.create_dataset(STATQUEST_X, STATQUEST_Y)
    assert stored_row(first.id).dataset_id == stored_row(second.id).dataset_id == uploaded.id
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Dataset)) == 1


def test_submit_by_dataset_id(configured) -> None:
    dataset = datasets.create_dataset(STATQUEST_X, STATQUEST_Y)
    job = jobs.submit_job(make_spec(data={"dataset_id": dataset.id}))
    assert stored_row(job.id).dataset_id == dataset.id


@pytest.mark.parametrize(("overrides", "loc"), [
    ({"data": {"dataset_id": "missing"}}, ("data", "dataset_id")),
    # The spec has no data.x or data.y: a stored dataset's shape is a fault of its dataset_id.
    ({"architecture": {"layers": [2, 1]}}, ("data", "dataset_id")),
    ({"architecture": {"layers": [1, 2]}}, ("data", "dataset_id")),
    ({"batch_size": 4}, ("batch_size",)),
])
def test_submit_checks_against_the_stored_dataset(configured, overrides: dict, loc: tuple) -> None:
    dataset = datasets.create_dataset(STATQUEST_X, STATQUEST_Y)
    document = {"data": {"dataset_id": dataset.id}, **overrides}
    with pytest.raises(InvalidInput) as error:
        jobs.submit_job(make_spec(**document))
    assert error.value.loc == loc


def test_submit_checks_limits(configured, spec: JobCreate) -> None:
    configured.max_steps = 10
    with pytest.raises(InvalidInput) as error:
        jobs.submit_job(spec)
    assert error.value.loc == ("stop", "max_steps")


def test_a_broker_that_is_down_does_not_fail_the_submit(configured, spec: JobCreate, monkeypatch) -> None:
    """A real broker that does not answer (nothing listens on port 1): the doorbell fails,
    the job is stored anyway and the scheduler's poll finds it."""
    from services import doorbell

    monkeypatch.setattr(configured, "broker_url", "redis://127.0.0.1:1/0")
    doorbell.forget()
    try:
        job = jobs.submit_job(spec)
    finally:
        doorbell.forget()
    assert jobs.get_job(job.id).status == "queued"
    assert stored_row(job.id).dispatched_at is None


def test_list_pages_newest_first_with_filters(configured, spec: JobCreate) -> None:
    submitted = [jobs.submit_job(spec) for i in range(5)]
    for job in submitted[1::2]:
        set_job(job.id, sweep_id="a")
    set_job(submitted[0].id, status="succeeded")
    pages, cursor = [], None
    while True:
        page = jobs.list_jobs(limit=2, cursor=cursor)
        pages.append([job.id for job in page.items])
        cursor = page.next_cursor
        if cursor is None:
            break
    assert pages == [[j.id for j in submitted[::-1][i:i + 2]] for i in (0, 2, 4)]
    assert [j.id for j in jobs.list_jobs(sweep_id="a").items] == [submitted[3].id, submitted[1].id]
    assert [j.id for j in jobs.list_jobs(status="succeeded").items] == [submitted[0].id]
    assert jobs.list_jobs(status="queued", limit=4).next_cursor is None
    assert jobs.list_jobs(status="failed") .items == []


def test_list_pages_jobs_created_in_the_same_instant(configured, spec: JobCreate) -> None:
    """Ties on created_at are broken by id, so no job is skipped or repeated."""
    submitted = [jobs.submit_job(spec) for _ in range(4)]
    same = submitted[0].created_at
    for job in submitted:
        set_job(job.id, created_at=same)
    first = jobs.list_jobs(limit=3)
    second = jobs.list_jobs(limit=3, cursor=first.next_cursor)
    ids = [j.id for j in first.items + second.items]
    assert sorted(ids) == sorted(j.id for j in submitted) and second.next_cursor is None


@pytest.mark.parametrize(("arguments", "loc"), [
    ({"limit": 0}, ("limit",)),
    ({"limit": 501}, ("limit",)),
    ({"status": "sleeping"}, ("status",)),
    ({"cursor": "%%%"}, ("cursor",)),
    ({"cursor": "bm90IGEgY3Vyc29y"}, ("cursor",)),
    ({"cursor": "MjAyNC0wMS0wMVQwMDowMDowMHw"}, ("cursor",)),
])
def test_list_rejects_bad_arguments(configured, arguments: dict, loc: tuple) -> None:
    with pytest.raises(InvalidInput) as error:
        jobs.list_jobs(**arguments)
    assert error.value.loc == loc


def test_cancel_by_state(configured, spec: JobCreate) -> None:
    queued, running, finished = (jobs.submit_job(spec) for _ in range(3))
    cancelled = jobs.cancel_job(queued.id)
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None
    with pytest.raises(Conflict):
        jobs.cancel_job(queued.id)

    set_job(running.id, status="running", attempts=1)
    assert jobs.cancel_job(running.id).status == "running"
    assert stored_row(running.id).cancel_requested is True

    set_job(finished.id, status="succeeded")
    with pytest.raises(Conflict):
        jobs.cancel_job(finished.id)


@pytest.mark.parametrize("use_case", [
    jobs.get_job, jobs.cancel_job, jobs.get_history, jobs.get_parameters,
    lambda job_id: jobs.predict(job_id, [[0.0]]),
])
def test_unknown_job_is_not_found(configured, use_case) -> None:
    with pytest.raises(NotFound):
        use_case("no-such-job")


# --- the API's submit path: a group commit ------------------------------------------------------


def submit_together(specs: list[JobCreate]) -> list:
    """``submit_job_async`` for every spec at once on one event loop, as concurrent POSTs are;
    each request's answer or exception, in order."""
    import asyncio

    async def all_at_once() -> list:
        return await asyncio.gather(*(jobs.submit_job_async(s, None) for s in specs), return_exceptions=True)

    return asyncio.run(all_at_once())


def count_commits() -> list[int]:
    """Commits on this process's engine from now on (``len`` of the returned list)."""
    from sqlalchemy import event

    from services.db.session import get_engine

    commits: list[int] = []
    event.listen(get_engine(), "commit", lambda _conn: commits.append(1))
    return commits


def test_concurrent_submits_share_transactions_and_each_gets_its_own_job(configured) -> None:
    specs = [make_spec(name=f"job-{i}", learning_rate=0.01 * (i + 1)) for i in range(40)]
    jobs.submit_job(specs[0])  # the dataset is stored and remembered: the rest insert jobs only
    commits = count_commits()
    answers = submit_together(specs)
    assert len(commits) < 40, f"{len(commits)} commits for 40 submits: no group commit"
    assert [a.value.name for a in answers] == [s.name for s in specs]
    assert len({a.value.id for a in answers}) == 40 and not any(a.replayed for a in answers)
    for answer, spec in zip(answers, specs):
        row = stored_row(answer.value.id)
        assert (row.status, row.name, row.spec["learning_rate"]) == ("queued", spec.name, spec.learning_rate)


def test_one_refused_submit_does_not_fail_the_others_in_its_transaction(configured) -> None:
    good = [make_spec(name=f"good-{i}") for i in range(6)]
    unknown = make_spec(name="unknown", data={"dataset_id": "0" * 32})
    over = make_spec(name="too-wide", architecture={"layers": [1, 5000, 1]})
    answers = submit_together([*good[:3], unknown, over, *good[3:]])
    assert isinstance(answers[3], InvalidInput) and answers[3].loc == ("data", "dataset_id")
    assert isinstance(answers[4], InvalidInput) and "layers" in answers[4].loc
    stored = [a.value for a in answers if not isinstance(a, Exception)]
    assert [j.name for j in stored] == [g.name for g in good]
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 6


def test_a_failed_shared_transaction_writes_each_submit_alone(configured) -> None:
    """A remembered dataset that is gone (database emptied) fails the shared insert; every
    submit is then written alone, storing the dataset again, and none is lost."""
    jobs.submit_job(make_spec(name="first"))  # remembers the dataset
    with session_scope() as session:
        session.execute(Job.__table__.delete())
        session.execute(Dataset.__table__.delete())
    answers = submit_together([make_spec(name=f"again-{i}") for i in range(5)])
    assert all(not isinstance(a, Exception) for a in answers), answers
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 5
        assert session.scalar(select(func.count()).select_from(Dataset)) == 1


def test_an_error_of_the_writer_reaches_every_waiting_request() -> None:
    import asyncio

    from services.group_commit import GroupCommit

    def broken(items: list[int]) -> list[int]:
        raise RuntimeError(f"disk on fire ({len(items)} items)")

    group: GroupCommit[int, int] = GroupCommit(broken)

    async def three() -> list:
        return await asyncio.gather(*(group.submit(i) for i in range(3)), return_exceptions=True)

    answers = asyncio.run(three())
    assert [type(a) for a in answers] == [RuntimeError] * 3 and "disk on fire" in str(answers[0])


def test_a_remembered_dataset_in_use_is_the_last_forgotten(configured, monkeypatch) -> None:
    """The group commit builds a remembered dataset's job rows outside its transaction: each use
    still counts as the dataset's latest, so the one in constant use is never the one evicted."""
    monkeypatch.setattr(jobs, "_KNOWN_MAX", 2)
    a, b, c = (make_spec(name=n, data={"x": STATQUEST_X, "y": [[0.0], [peak], [0.0]]})
               for n, peak in (("a", 1.0), ("b", 2.0), ("c", 3.0)))
    for spec in (a, b, a, c):  # a used again after b: b is the least recently used when c comes
        assert not isinstance(jobs._write_submits([(spec, "default")])[0], Exception)
    remembered = {key[2] for key in jobs._known}
    assert remembered == {jobs._prepare(a)[0], jobs._prepare(c)[0]}


def test_one_shared_transaction_never_queues_past_a_tenants_limit(configured, monkeypatch) -> None:
    """A group commit inserts its batch at the end, so a fresh count inside it cannot see the
    batch's own jobs: they are counted in, or a burst of one transaction passes any limit."""
    from services import quotas
    from services.config import get_settings
    from services.errors import TooMany

    monkeypatch.setenv("DESCENT_TENANT_MAX_QUEUED", "5")
    get_settings.cache_clear()
    monkeypatch.setattr(quotas, "_counts", {})  # nothing counted before this test's database
    spec = make_spec()
    answers = jobs._write_submits([(spec, tenant) for _ in range(12) for tenant in ("alice", "bob")])
    for tenant in ("alice", "bob"):
        mine = answers[("alice", "bob").index(tenant)::2]
        assert [isinstance(a, TooMany) for a in mine] == [False] * 5 + [True] * 7, mine
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Job).where(Job.status == "queued")) == 10


def test_a_submit_refused_after_a_racing_one_stored_its_key_is_that_ones_replay(configured, monkeypatch) -> None:
    """Two submits with one key when the tenant has room for one: the second looks the key up
    before the first commits, then finds the queue full. It answers as the first one's retry
    (200, the job), not 429 for a job that exists."""
    from services import idempotency, quotas
    from services.config import get_settings
    from services.db import repository
    from services.idempotency import Claim

    monkeypatch.setenv("DESCENT_TENANT_MAX_QUEUED", "1")
    get_settings.cache_clear()
    monkeypatch.setattr(quotas, "_counts", {})
    spec = make_spec()
    inline = jobs._prepare(spec)
    claim = Claim.of("default", "retry-1", "job", jobs._request(spec, inline))
    racer: list = []

    def create_after_the_racer_committed():
        racer.append(jobs.submit_job_once(spec, "retry-1").value)  # between this one's lookup and insert
        return jobs._submit(spec, inline, claim, "default")  # the queue is full now

    answer = idempotency.once(claim, create_after_the_racer_committed,
                              lambda session, job_id: repository.get_job(session, job_id, tenant="default"))
    assert answer.replayed and answer.value.id == racer[0].id
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 1


def test_a_submit_counts_the_queue_after_the_tenants_submit_in_flight_commits(configured, monkeypatch) -> None:
    """PostgreSQL's count cannot see a concurrent transaction's jobs: without waiting for it, a
    burst of submits each found room (20 sweeps at once queued 30 jobs against a limit of 5)."""
    import threading

    from services import quotas
    from services.config import get_settings
    from services.db import repository
    from services.errors import TooMany

    monkeypatch.setenv("DESCENT_TENANT_MAX_QUEUED", "2")
    get_settings.cache_clear()
    monkeypatch.setattr(quotas, "_counts", {})
    spec = make_spec()
    second: list = []
    racer = threading.Thread(target=lambda: second.append(_answer_of(jobs.submit_job, spec)))
    with session_scope(write=True) as first:  # a sweep of two, in flight
        quotas.check_queued(first, "default", 2)
        dataset = jobs._dataset(first, spec, jobs._prepare(spec), "default", {})
        repository.insert_jobs(first, [repository.new_job_values(**jobs.job_row(spec, dataset, "default"))
                                       for _ in range(2)])
        racer.start()
        racer.join(timeout=1.0)
        assert racer.is_alive(), f"the second submit did not wait for the first: {second}"
    racer.join(timeout=30)
    assert isinstance(second[0], TooMany), second
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 2


def _answer_of(use_case, *args):  # noqa: ANN001, ANN202
    try:
        return use_case(*args)
    except Exception as exc:  # noqa: BLE001 (the test looks at it)
        return exc
