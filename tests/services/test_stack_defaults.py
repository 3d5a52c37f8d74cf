"""``descent up``'s own sizing: one API process per two cores, never none."""

from __future__ import annotations

import pytest

from services.stack import default_api_workers


@pytest.mark.parametrize(("cores", "processes"), [(1, 1), (2, 1), (3, 1), (4, 2), (16, 8)])
def test_one_api_process_per_two_cores(cores: int, processes: int) -> None:
    assert default_api_workers(cores) == processes


@pytest.mark.parametrize(("counted", "processes"), [(8, 4), (2, 1), (None, 1)])
def test_the_default_counts_this_machines_cores(monkeypatch: pytest.MonkeyPatch, counted: int | None,
                                                processes: int) -> None:
    """``os.cpu_count()`` may answer None: then one process, as on two cores."""
    monkeypatch.setattr("services.stack.os.cpu_count", lambda: counted)
    assert default_api_workers() == processes
