"""Row ids are time-ordered UUIDs: rows made together sit together in every index keyed by id."""

from __future__ import annotations

import uuid

from services.db.repository import new_id


def test_ids_are_uuid7_and_sort_in_the_order_they_were_made() -> None:
    ids = [new_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    assert {uuid.UUID(i).version for i in ids} == {7}
    assert all(len(i) == 36 for i in ids)  # the columns are VARCHAR(36)
