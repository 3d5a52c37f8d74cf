"""The client without a server (httpx's MockTransport, a fake clock): Retry-After honoured within
a budget and exposed on the errors; ids checked and escaped before they reach a URL path; a
spec that is not a JSON object, or a body with NaN, refused before any request."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

from descent_client import (
    Client, DescentError, InvalidId, InvalidRequest, Job, TooManyRequests, Unavailable, WaitTimeout,
)
from descent_client.errors import retry_after
from descent_client.resources import as_rows
from services.cli import app
from services.spec import JobRead, WorkerInfo

UNAVAILABLE = {"title": "Service Unavailable", "status": 503, "detail": "storage unavailable"}


class Clock:
    """``time`` for the client module: sleeps advance it at once and are recorded."""

    def __init__(self) -> None:
        self.now, self.slept = 1000.0, []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr("descent_client.client.time", SimpleNamespace(monotonic=fake.monotonic, sleep=fake.sleep))
    return fake


def job_read(job_id: str = "0c0c8f34-5a18-4f42-a0a8-f2c461bdd671") -> dict:
    now = datetime.now(UTC)
    return JobRead.model_validate(dict(
        id=job_id, name="x", status="queued", step=0, ssr=None, stop_reason=None, created_at=now, started_at=None,
        finished_at=None, attempts=0, worker=WorkerInfo(), device="cpu")).model_dump(mode="json")


def client(handler, **options: object) -> tuple[Client, list[httpx.Request]]:  # noqa: ANN001
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)

    return Client("http://descent.test", transport=httpx.MockTransport(record), **options), seen


def test_a_503_is_retried_after_its_retry_after(clock: Clock) -> None:
    """The API says Retry-After: 5 while its database restarts (~4 s here): the client used to
    give up after ~3 s of its own backoff."""
    down_until = clock.now + 4.0

    def handler(request: httpx.Request) -> httpx.Response:
        if clock.now < down_until:
            return httpx.Response(503, headers={"Retry-After": "5"}, json=UNAVAILABLE)
        return httpx.Response(200, json=job_read())

    api, seen = client(handler)
    assert api.job(job_read()["id"]).status == "queued"
    assert clock.slept == [5.0] and len(seen) == 2


def test_retry_after_is_capped_and_the_retries_stay_within_the_budget(clock: Clock) -> None:
    api, seen = client(lambda _: httpx.Response(503, headers={"Retry-After": "3600"}, json=UNAVAILABLE),
                       max_retry_after=30.0, retry_budget=60.0)
    with pytest.raises(Unavailable) as caught:
        api.job("abc")
    assert clock.slept == [30.0, 30.0] and len(seen) == 3  # a third wait would end past 60 s
    assert caught.value.retry_after == 3600.0
    assert str(caught.value) == "storage unavailable (HTTP 503); retry after 3600 s"


def test_without_retry_after_the_backoff_doubles_and_the_retries_run_out(clock: Clock) -> None:
    api, seen = client(lambda _: httpx.Response(503, json=UNAVAILABLE))
    with pytest.raises(Unavailable) as caught:
        api.job("abc")
    assert clock.slept == pytest.approx([0.2, 0.4, 0.8, 1.6, 3.0, 3.0]) and len(seen) == 7  # 9 s in all
    assert caught.value.retry_after is None


def test_a_429_is_never_retried_and_says_when_to_try_again(clock: Clock) -> None:
    api, seen = client(lambda _: httpx.Response(429, headers={"Retry-After": "7"},
                                                json={"detail": "tenant t has 10 queued jobs"}))
    with pytest.raises(TooManyRequests) as caught:
        api.submit({"name": "x"})
    assert caught.value.retry_after == 7.0 and len(seen) == 1 and clock.slept == []
    assert str(caught.value) == "tenant t has 10 queued jobs (HTTP 429); retry after 7 s"


def test_retry_after_reads_seconds_and_http_dates() -> None:
    def answer(value: str) -> httpx.Response:
        return httpx.Response(503, headers={"Retry-After": value})

    now = datetime(2030, 1, 1, tzinfo=UTC)
    assert retry_after(answer("12")) == 12.0
    assert retry_after(answer(format_datetime(now + timedelta(seconds=9), usegmt=True)), now.timestamp()) == 9.0
    assert retry_after(answer(format_datetime(now - timedelta(seconds=9), usegmt=True)), now.timestamp()) == 0.0
    assert retry_after(answer("soon")) is None and retry_after(answer("nan")) is None
    assert retry_after(httpx.Response(503)) is None


@pytest.mark.parametrize("bad", ["../sweeps", "..", ".", "a/b", "x?y=1", "", "a" * 65, "id#frag"])
def test_an_id_that_the_api_cannot_have_is_refused_before_any_request(bad: str) -> None:
    """``descent show ../sweeps`` used to read /v1/sweeps."""
    api, seen = client(lambda _: httpx.Response(200, json=job_read()))
    for call in (api.job, api.get_sweep, api.find):
        with pytest.raises(InvalidId, match="id: "):
            call(bad)
    assert seen == []
    assert isinstance(InvalidId(422, "x"), InvalidRequest)


def test_ids_are_escaped_into_one_path_segment() -> None:
    api, _ = client(lambda _: httpx.Response(200))
    assert Job(api, JobRead.model_validate(job_read() | {"id": "a b/../c"})).path == "/v1/jobs/a%20b%2F..%2Fc"


def test_the_cli_refuses_a_bad_id_in_one_line() -> None:
    result = CliRunner().invoke(app, ["show", "../sweeps"], env={"DESCENT_URL": "http://127.0.0.1:1"})
    assert result.exit_code == 1
    assert result.stderr == ("error: not a job or sweep id: '../sweeps' (an id is 1 to 64 letters, digits, '-' "
                             "or '_')\n")


@pytest.mark.parametrize("spec", [[["name", "x"], ["learning_rate", 0.1]], "x", 3])
def test_a_spec_that_is_not_an_object_is_refused(spec: object) -> None:
    """A list of pairs used to become an object silently; a string raised a ValueError."""
    api, seen = client(lambda _: httpx.Response(201, json=job_read()))
    with pytest.raises(TypeError, match="a spec is a JSON object"):
        api.submit(spec)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="a spec is a JSON object"):
        api.sweep(spec)  # type: ignore[arg-type]
    assert seen == []


def test_a_body_that_is_not_json_is_one_error_before_any_request() -> None:
    api, seen = client(lambda _: httpx.Response(200, json={"y": [[0.0]]}))
    job = Job(api, JobRead.model_validate(job_read()))
    with pytest.raises(DescentError, match="is not valid JSON"):
        job.predict([math.nan])
    assert seen == []


def test_a_wait_ends_at_its_timeout_while_the_api_is_down(clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    """``wait(timeout=2)`` on an API that refuses connections used to run for ``patience``
    (60 s) and end in ConnectionFailed; it is a WaitTimeout at 2 s, naming the cause."""
    monkeypatch.setattr("descent_client.resources.time", SimpleNamespace(monotonic=clock.monotonic,
                                                                         sleep=clock.sleep))

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    api, seen = client(refuse, max_backoff=0.05)
    started = clock.now
    with pytest.raises(WaitTimeout, match=r"still queued \(its last read\) after 2 s: cannot reach Descent"):
        Job(api, JobRead.model_validate(job_read())).wait(timeout=2, patience=60)
    assert 2 <= clock.now - started < 3 and seen


def test_rows_may_be_numpy_arrays() -> None:
    """``job.predict(list(X))`` of a 2-D array used to fail with NumPy's TypeError."""
    sent: list[bytes] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request.content)
        return httpx.Response(200, json={"y": [[0.0], [0.0]]})

    api, _ = client(answer)
    job = Job(api, JobRead.model_validate(job_read()))
    x = np.array([[0.25, 0.5], [0.75, 1.0]])
    for given in (x, list(x), [x[0], x[1]], [list(x[0]), tuple(x[1])]):
        job.predict(given)
    assert {json.loads(body)["x"] == [[0.25, 0.5], [0.75, 1.0]] for body in sent} == {True}
    assert as_rows(np.array([0.5, 1.0])) == as_rows([np.float32(0.5), np.float64(1.0)]) == [[0.5], [1.0]]


def test_a_closed_client_says_so_as_a_descent_error() -> None:
    """httpx raised its own RuntimeError, which ``except DescentError`` does not catch."""
    api, seen = client(lambda _: httpx.Response(200, json=job_read()))
    with api:
        api.job("abc")
    with pytest.raises(DescentError, match="is closed"):
        api.job("abc")
    assert len(seen) == 1
