"""The API killed during a burst of submits with idempotency keys (fault matrix 8)."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable

import httpx
import pytest

from services.examples import statquest_job

from .harness import ChaosStack, eventually, jobs_named

pytestmark = [pytest.mark.chaos, pytest.mark.slow]
CLIENTS, PER_CLIENT = 8, 6


def test_the_api_killed_during_a_burst_of_idempotent_submits(kind: str, make_stack: Callable[..., ChaosStack],
                                                             recovery: Callable[..., None]) -> None:
    """8. Clients submit with an ``Idempotency-Key`` each, and retry with the same key and body
    whatever fails (connection refused or cut, 5xx); the API is SIGKILLed mid-burst and started
    again on the same port. Every submit is exactly one job, the one its client was answered,
    and a replay answers 200 with that job."""
    stack = make_stack(kind, workers=0, schedulers=0)  # the API only writes rows
    api, url = stack.add_api()
    bodies = {f"chaos-{i:03d}": statquest_job() | {"name": f"burst-{i:03d}"} for i in range(CLIENTS * PER_CLIENT)}
    answered: dict[str, str] = {}
    retried: set[str] = set()
    errors: list[str] = []

    def client(keys: list[str]) -> None:
        with httpx.Client(base_url=url, timeout=10) as http:
            for key in keys:
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    try:
                        answer = http.post("/v1/jobs", json=bodies[key], headers={"Idempotency-Key": key})
                        if answer.status_code in (200, 201):
                            answered[key] = answer.json()["id"]
                            break
                        if answer.status_code < 500:
                            errors.append(f"{key}: {answer.status_code} {answer.text}")
                            break
                    except httpx.TransportError:
                        pass
                    retried.add(key)
                    time.sleep(0.05)
                else:
                    errors.append(f"{key}: no answer within 60 s")

    keys = list(bodies)
    threads = [threading.Thread(target=client, args=(keys[i::CLIENTS],)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    try:
        eventually(lambda: len(answered) >= len(keys) // 4, 30, "a quarter of the burst answered", stack)
        stack.signal_group(api, signal.SIGKILL)
        killed = time.monotonic()
        api.wait(timeout=10)
        stack.add_api(port=int(url.rsplit(":", 1)[1]))
        recovery(time.monotonic() - killed, f"API restarted; {len(retried)} of {len(keys)} submits retried")
    finally:
        for thread in threads:
            thread.join(timeout=90)
    assert not errors, errors
    assert len(answered) == len(keys)
    counts = jobs_named("burst-")
    assert {name: n for name, n in counts.items() if n != 1} == {}, "a retried submit made a second job"
    assert len(counts) == len(keys), "a submit made no job"
    with httpx.Client(base_url=url, timeout=10) as http:
        for key, body in bodies.items():
            replay = http.post("/v1/jobs", json=body, headers={"Idempotency-Key": key})
            assert replay.status_code == 200 and replay.json()["id"] == answered[key], (key, replay.text)
            assert replay.headers.get("Idempotent-Replayed") == "true"
