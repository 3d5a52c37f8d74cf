"""``descent demo``: the StatQuest job through a running stack, with the client library like any
user (``descent_client``: submit, wait with a live progress line, history, parameters).

It shows the whole path a user's job takes (submit, queue, worker, checkpoints, history,
parameters) and checks the answer the video gives: b3 = 2.61 with w1..w4 untouched.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from descent_client import Client, HistoryRead, JobRead, WaitTimeout
from services.examples import STATQUEST_B3, STATQUEST_WEIGHTS, statquest_job, statquest_named

Echo = Callable[[str], None]


def run_statquest(base_url: str, echo: Echo = print, timeout: float = 120.0) -> bool:
    """Submit, follow and check the StatQuest job; True when it succeeded with b3 = 2.61.
    Raises ``descent_client.DescentError`` when the API cannot be used."""
    with Client(base_url, demo_key()) as client:
        job = client.submit(statquest_job())
        echo(f"Submitted job {job.id} ({job.info.name}): {job.status}")
        try:
            final = job.wait(progress=True, timeout=timeout)
        except WaitTimeout:
            echo(f"Job still {job.status} after {timeout:.0f} s")
            return False
        if final.status != "succeeded":
            echo(f"Finished: {final.status} after {final.step} updates: {final.error or final.stop_reason}")
            echo("FAILED: the job did not succeed")
            return False
        show_history(job.history(), echo)
        named = statquest_named([layer.model_dump() for layer in job.parameters().layers])
    return report(final, named, echo)


def demo_key() -> str | None:
    """DESCENT_API_KEY, else the first of the stack's DESCENT_API_KEYS (``tenant:key`` or
    ``key``) when the demo's own stack runs with auth on."""
    if key := os.environ.get("DESCENT_API_KEY"):
        return key
    entries = os.environ.get("DESCENT_API_KEYS", "").replace(",", " ").split()
    if not entries:
        return None
    tenant, colon, key = entries[0].partition(":")
    return key if colon else tenant


def show_history(history: HistoryRead, echo: Echo) -> None:
    echo("SSR path (step: SSR):")
    for step, ssr in zip(history.steps, history.ssr):
        echo(f"  {step:>4}: {'NaN' if ssr is None else f'{ssr:.6f}'}")


def report(job: JobRead, named: dict[str, float], echo: Echo) -> bool:
    """Print the final parameters and say whether they match the video."""
    weights = "  ".join(f"{k} = {named[k]:.2f}" for k in STATQUEST_WEIGHTS)
    echo(f"Finished: {job.status} after {job.step} updates (stop: {job.stop_reason})")
    echo(f"Frozen weights: {weights}")
    echo(f"Final b3 = {named['b3']:.2f} (exact {named['b3']:.6f}; the video says {STATQUEST_B3:.2f})")
    unchanged = all(named[k] == v for k, v in STATQUEST_WEIGHTS.items())
    ok = job.status == "succeeded" and round(named["b3"], 2) == STATQUEST_B3 and unchanged
    echo("OK" if ok else "FAILED: the result differs from the video")
    return ok
