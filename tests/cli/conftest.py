"""One real embedded stack per test module (``descent up`` on a free port, its home in a tmp
folder), the fixtures of ``tests/e2e`` reused; nothing of ours is mocked."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.conftest import Running, descent_up


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """``descent up --workers 1 --api-workers 1``, with the module's ``STACK_ENV`` (e.g. keys);
    stopped like Ctrl-C, leftovers killed."""
    with descent_up(tmp_path_factory.mktemp("cli-stack"), "--api-workers", "1",
                    **getattr(request.module, "STACK_ENV", {})) as running:
        yield running
