"""Schemathesis, as a new user would run it, finds nothing.

A real stack (``descent up``: API, scheduler, one worker) on PostgreSQL, with API keys on, is
tested through its own ``/openapi.json`` with every check (``--checks all``: no 5xx, every
status and header documented, every body inside its schema, schema-valid input accepted and
invalid input refused, created resources reachable, auth enforced...) in every phase: the
documented examples (so jobs, sweeps and datasets are really created and trained), coverage,
fuzzing and stateful sequences that follow the create operations' links. Settings are
``tests/api/schemathesis.toml``. Small limits keep the generated trainings short; they are in
the schema (``maximum``/``maxItems``), so schema-valid data respects them. About a minute.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import empty_tables
from tests.e2e.conftest import Running, descent_up, stack_env

pytestmark = pytest.mark.slow

KEY = "schemathesis-key-0123456789"
CONFIG = Path(__file__).with_name("schemathesis.toml")
# Small enough for short trainings, large enough for the documented examples (the StatQuest job:
# 1000 steps, checkpoints every 100; its sweep: 6 members).
LIMITS = {
    "DESCENT_MAX_STEPS": "1000", "DESCENT_MAX_CHECKPOINT_EVERY": "100", "DESCENT_MAX_POINTS": "50",
    "DESCENT_MAX_LAYERS": "4", "DESCENT_MAX_LAYER_WIDTH": "8", "DESCENT_MAX_SWEEP_MEMBERS": "8",
}
EXAMPLES_PER_OPERATION = 25
RUN_TIMEOUT_S = 300


@pytest.fixture
def stack(pg_url: str, tmp_path: Path) -> Iterator[Running]:
    empty_tables(pg_url)
    with descent_up(tmp_path, "--api-workers", "1", DESCENT_DATABASE_URL=pg_url,
                    DESCENT_API_KEYS=f"schemathesis:{KEY}", **LIMITS) as running:
        yield running


def test_schemathesis_finds_nothing(stack: Running, tmp_path: Path) -> None:
    command = [
        str(Path(sys.executable).with_name("schemathesis")), "--config-file", str(CONFIG), "--no-color",
        "run", f"{stack.url}/openapi.json", "--checks", "all", "--phases", "examples,coverage,fuzzing,stateful",
        "--max-examples", str(EXAMPLES_PER_OPERATION), "--seed", "20261129", "--workers", "1", "--no-shrink",
    ]
    done = subprocess.run(command, cwd=tmp_path, env=stack_env(stack.home, DESCENT_TEST_KEY=KEY),
                          capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    report = done.stdout + done.stderr
    assert done.returncode == 0, report[-12_000:]
    selected = re.search(r"Selected: (\d+)/(\d+)", report)
    tested = re.search(r"Tested: (\d+)", report)
    assert selected and tested, report[-3000:]
    assert selected.group(1) == selected.group(2) == tested.group(1), "every operation is tested"
    # The examples made real resources (the issue: no job was ever accepted in 16,666 tries).
    auth = {"Authorization": f"Bearer {KEY}"}
    for listing in ("/v1/jobs", "/v1/sweeps"):
        assert httpx.get(stack.url + listing, headers=auth).json()["items"], listing
