"""``descent demo``: the StatQuest job through a running stack, over HTTP like any client.

It shows the whole path a user's job takes (submit, queue, worker, checkpoints, history,
parameters) and checks the answer the video gives: b3 = 2.61 with w1..w4 untouched.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx

from services.examples import STATQUEST_B3, STATQUEST_WEIGHTS, statquest_job, statquest_named
from services.spec import FINISHED

Echo = Callable[[str], None]


def run_statquest(base_url: str, echo: Echo = print, timeout: float = 120.0) -> bool:
    """Submit, follow and check the StatQuest job; True when it succeeded with b3 = 2.61."""
    with httpx.Client(base_url=base_url, timeout=10.0) as client:
        answer = client.post("/v1/jobs", json=statquest_job())
        answer.raise_for_status()
        job = answer.json()
        echo(f"Submitted job {job['id']} ({job['name']}): {job['status']}")
        job = follow(client, job["id"], echo, timeout)
        if job["status"] not in FINISHED:
            echo(f"Job still {job['status']} after {timeout:.0f} s")
            return False
        history = client.get(f"/v1/jobs/{job['id']}/history").json()
        show_history(history, echo)
        named = statquest_named(client.get(f"/v1/jobs/{job['id']}/parameters").json()["layers"])
    return report(job, named, echo)


def follow(client: httpx.Client, job_id: str, echo: Echo, timeout: float) -> dict:
    """Poll the job, printing a line whenever its status or step changes."""
    deadline, seen = time.monotonic() + timeout, None
    while True:
        job = client.get(f"/v1/jobs/{job_id}").json()
        now = (job["status"], job["step"])
        if now != seen:
            ssr = "" if job["ssr"] is None else f"  SSR {job['ssr']:.4f}"
            echo(f"  {job['status']:<10} step {job['step']:>4}{ssr}")
            seen = now
        if job["status"] in FINISHED or time.monotonic() > deadline:
            return job
        time.sleep(0.1)


def show_history(history: dict, echo: Echo) -> None:
    echo("SSR path (step: SSR):")
    for step, ssr in zip(history["steps"], history["ssr"]):
        echo(f"  {step:>4}: {'NaN' if ssr is None else f'{ssr:.6f}'}")


def report(job: dict, named: dict[str, float], echo: Echo) -> bool:
    """Print the final parameters and say whether they match the video."""
    weights = "  ".join(f"{k} = {named[k]:.2f}" for k in STATQUEST_WEIGHTS)
    echo(f"Finished: {job['status']} after {job['step']} updates (stop: {job['stop_reason']})")
    echo(f"Frozen weights: {weights}")
    echo(f"Final b3 = {named['b3']:.2f} (exact {named['b3']:.6f}; the video says {STATQUEST_B3:.2f})")
    unchanged = all(named[k] == v for k, v in STATQUEST_WEIGHTS.items())
    ok = job["status"] == "succeeded" and round(named["b3"], 2) == STATQUEST_B3 and unchanged
    echo("OK" if ok else "FAILED: the result differs from the video")
    return ok
