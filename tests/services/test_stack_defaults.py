"""``descent up``'s own sizing: one API process per two cores, never none."""

from __future__ import annotations

import pytest

from services.stack import default_api_workers


@pytest.mark.parametrize(("cores", "processes"), [(1, 1), (2, 1), (3, 1), (4, 2), (16, 8)])
def test_one_api_process_per_two_cores(cores: int, processes: int) -> None:
    assert default_api_workers(cores) == processes


def test_the_default_reads_this_machine() -> None:
    import os

    assert default_api_workers() == max(1, (os.cpu_count() or 2) // 2)
