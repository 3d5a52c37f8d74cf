"""The Python client against a real embedded stack: the StatQuest job, a sweep, retries that
create nothing twice (faults injected at the network: answers dropped, a 503), cancels."""

from __future__ import annotations

import io
import time
import math

import httpx
import pytest

from descent_client import Client, InvalidRequest, Job, NotFound, Sweep, Unavailable, statquest_job
from services.examples import STATQUEST_B3, STATQUEST_SSR0, STATQUEST_UPDATES
from services.spec import JobCreate
from tests.e2e.conftest import Running

pytestmark = pytest.mark.slow


class Faulty(httpx.HTTPTransport):
    """Forwards every request to the server; drops the answer to the first ``drop`` POSTs (the
    server acted, the client never hears: a connection cut) and answers the first ``unavailable``
    GETs with a 503 without forwarding them. Records each request's method, path and key."""

    def __init__(self, drop: int = 0, unavailable: int = 0) -> None:
        super().__init__()
        self.drop, self.unavailable = drop, unavailable
        self.seen: list[tuple[str, str, str | None]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.seen.append((request.method, request.url.path, request.headers.get("idempotency-key")))
        if request.method == "GET" and self.unavailable:
            self.unavailable -= 1
            return httpx.Response(503, json={"detail": "storage unavailable, retry later"})
        response = super().handle_request(request)
        if request.method == "POST" and self.drop:
            self.drop -= 1
            response.read()
            response.close()
            raise httpx.ReadError("connection reset by peer", request=request)
        return response


def test_the_statquest_job_in_five_lines(stack: Running) -> None:
    client = Client(stack.url)
    job = client.submit(statquest_job())
    final = job.wait(progress=(line := io.StringIO()), timeout=60)
    assert (final.status, final.stop_reason, final.step) == ("succeeded", "min_step_size", STATQUEST_UPDATES)
    assert round(job.parameters().layers[1].bias[0], 2) == STATQUEST_B3
    history = job.history()
    assert history.steps == list(range(STATQUEST_UPDATES + 1)) and round(history.ssr[0], 2) == STATQUEST_SSR0
    assert job.parameters(step=0).layers[1].bias == [0.0]
    y = job.predict([0.0, 0.5, 1.0])
    assert len(y) == 3 and all(math.isfinite(v[0]) for v in y) and y == job.predict([[0.0], [0.5], [1.0]])
    last = line.getvalue().splitlines()[-1]
    assert "statquest-b3" in last and "step 9/1000" in last and last.endswith("succeeded (min_step_size)")


def test_a_typed_spec_and_lookups_by_id(stack: Running) -> None:
    client = Client(stack.url)
    job = client.submit(JobCreate.model_validate(statquest_job() | {"name": "typed"}))
    assert job.max_steps == 1000 and job.wait(timeout=60).status == "succeeded"
    found = client.find(job.id)
    assert isinstance(found, Job) and found.info.name == "typed"
    assert job.id in [j.id for j in client.jobs(status="succeeded", limit=50)]
    with pytest.raises(NotFound, match="no job or sweep with id 0000"):
        client.find("0000")


def test_a_refused_spec_names_the_field(stack: Running) -> None:
    with pytest.raises(InvalidRequest) as caught:
        Client(stack.url).submit(statquest_job() | {"learning_rate": 0})
    assert str(caught.value).startswith("invalid input: learning_rate: ")
    assert [e.field for e in caught.value.errors] == ["learning_rate"]


def test_a_submit_whose_answer_is_lost_is_retried_with_its_key_and_makes_one_job(stack: Running) -> None:
    before = {j.id for j in Client(stack.url).jobs()}
    transport = Faulty(drop=2)
    job = Client(stack.url, transport=transport, max_backoff=0.05).submit(statquest_job() | {"name": "retried"})
    posts = [seen for seen in transport.seen if seen[0] == "POST"]
    assert len(posts) == 3 and posts[0][2] is not None and len({key for *_, key in posts}) == 1
    made = [j for j in Client(stack.url).jobs() if j.id not in before]
    assert [j.id for j in made] == [job.id]
    second = Client(stack.url, transport=Faulty()).submit(statquest_job() | {"name": "retried"})
    assert second.id != job.id  # a new logical submit gets a new key


def test_reads_are_retried_on_503_and_4xx_never(stack: Running) -> None:
    job_id = Client(stack.url).submit(statquest_job()).id
    transport = Faulty(unavailable=2)
    client = Client(stack.url, transport=transport, max_backoff=0.05)
    assert client.job(job_id).id == job_id
    assert [path for _, path, _ in transport.seen] == [f"/v1/jobs/{job_id}"] * 3
    transport.seen.clear()
    with pytest.raises(NotFound):
        client.job("nothing-here")
    assert len(transport.seen) == 1


def test_a_wait_rides_out_an_api_that_stops_answering_for_a_while(stack: Running) -> None:
    job = Client(stack.url).submit(statquest_job())
    transport = Faulty(unavailable=3)
    flaky = Client(stack.url, retries=0, transport=transport)  # every 503 reaches the wait
    assert Job(flaky, job.info).wait(timeout=60, max_poll=0.05).status == "succeeded"
    assert len(transport.seen) >= 4
    transport.unavailable = 10**6
    with pytest.raises(Unavailable):
        Job(flaky, job.info).wait(patience=0.3, max_poll=0.05)


def test_a_sweep_waits_to_the_end_and_ranks_its_members(stack: Running) -> None:
    client = Client(stack.url)
    sweep = client.sweep({"name": "lr", "base": statquest_job(), "grid": {"learning_rate": [0.05, 0.1, 0.2]}})
    final = sweep.wait(progress=(line := io.StringIO()), timeout=90)
    assert final.status == "finished" and final.counts.get("succeeded") == 3
    board = sweep.leaderboard()
    assert len(board) == 3 and [e.ssr for e in board] == sorted(e.ssr for e in board)
    assert {e.values["learning_rate"] for e in board} == {0.05, 0.1, 0.2}
    assert sorted(j.id for j in sweep.members()) == sorted(e.job_id for e in board)
    assert isinstance(client.find(sweep.id), Sweep)
    assert line.getvalue().splitlines()[-1].endswith("finished") and "3 succeeded" in line.getvalue()


def test_a_cancel_is_idempotent(stack: Running) -> None:
    client = Client(stack.url)
    spec = statquest_job() | {"name": "long", "stop": {"max_steps": 10**6}, "checkpoint_every": 1000}
    job = client.submit(spec)
    job.cancel()
    assert job.cancel().status in ("queued", "running", "cancelled")  # a second cancel is no error
    assert job.wait(timeout=60).status == "cancelled"
    assert job.cancel().status == "cancelled"


def test_a_cancelled_sweeps_wait_ends_when_its_running_members_have_stopped(stack: Running) -> None:
    """The sweep reads ``cancelled`` at once; its running members stop at their next checkpoint."""
    client = Client(stack.url)
    long = statquest_job() | {"stop": {"max_steps": 10**6}, "checkpoint_every": 2000}
    sweep = client.sweep({"name": "long", "base": long, "grid": {"learning_rate": [0.01, 0.02]}})
    deadline = time.monotonic() + 60
    while not sweep.refresh().counts.get("running"):
        assert time.monotonic() < deadline, "no member started"
        time.sleep(0.05)
    sweep.cancel()
    final = sweep.wait(timeout=60, max_poll=0.05)
    assert final.status == "cancelled" and final.counts == {"cancelled": 2}, final
    assert final.finished_at is not None


def test_plots_are_pngs(stack: Running) -> None:
    client = Client(stack.url)
    job = client.submit(statquest_job())
    job.wait(timeout=60)
    assert job.plot().startswith(b"\x89PNG\r\n\x1a\n")
