"""The scheduler's pure policy: which jobs share a pack, how a group is cut, where the rungs are
and who goes on at a rung. No database, no processes."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from services.examples import statquest_job
from services.halving import Halving, Parked, chunk_length, is_rung, next_rung, survivors
from services import packing
from services.packing import PackPlan, QueuedJob, member_cost, pack_key, plan_packs

DATASET = "ds-statquest"
RULE = Halving(min_steps=100, eta=3)


def stored(**changes: Any) -> dict[str, Any]:
    """A stored StatQuest spec document (data by reference), with top-level fields replaced."""
    document = statquest_job()
    document["data"] = {"dataset_id": DATASET}
    document.update(changes)
    return document


def seeded(seed: int, **changes: Any) -> dict[str, Any]:
    return stored(init={"seed": seed}, **changes)


def key(document: dict[str, Any], dataset_id: str = DATASET) -> str:
    return pack_key(document, dataset_id)


def jobs(prefix: str, n: int, device: str = "cpu", group: str = "k", cost: float = 1.0) -> list[QueuedJob]:
    return [QueuedJob(f"{prefix}{i}", group, device, cost) for i in range(n)]


def sizes(plans: list[PackPlan]) -> list[int]:
    return [len(p.job_ids) for p in plans]


# packing.pack_key ---------------------------------------------------------------------------

@pytest.mark.parametrize("change", [
    {"learning_rate": 0.5},
    {"init": {"seed": 7}},
    {"name": "another"},
    {"momentum": 0.9},
    {"stop": {"max_steps": 5, "min_step_size": 0.0}},
    {"trainable": None},
])
def test_pack_key_ignores_per_member_settings(change: dict[str, Any]) -> None:
    assert key(stored(**change)) == key(stored())


def test_pack_key_is_a_short_stable_digest() -> None:
    first = key(stored())
    assert first == key(stored()) and len(first) == 40
    assert int(first, 16) >= 0  # hex


def test_pack_key_ignores_the_documents_own_data_field() -> None:
    """The dataset id passed in is what counts (the stored document holds the same one)."""
    assert key(stored(data={"dataset_id": "elsewhere"})) == key(stored())


def _architecture(**changes: Any) -> dict[str, Any]:
    return statquest_job()["architecture"] | changes


@pytest.mark.parametrize("change", [
    {"architecture": _architecture(layers=[1, 3, 1])},
    {"architecture": _architecture(activation="relu")},
    {"architecture": _architecture(output_activation="sigmoid")},
    {"dtype": "float32"},
    {"checkpoint_every": 50},
    {"device": "gpu"},
    {"batch_size": 2},
])
def test_pack_key_separates_pack_wide_settings(change: dict[str, Any]) -> None:
    assert key(stored(**change)) != key(stored())


def test_pack_key_separates_datasets() -> None:
    assert key(stored(), "ds-other") != key(stored(), DATASET)


def test_pack_key_separates_batch_sizes() -> None:
    assert key(stored(batch_size=1)) != key(stored(batch_size=2))


def test_pack_key_defaults_match_the_spec_defaults() -> None:
    """A document without dtype/checkpoint_every/device keys packs with the explicit defaults."""
    bare = stored()
    for name in ("dtype", "checkpoint_every", "device"):
        bare.pop(name, None)
    assert key(bare) == key(stored(dtype="float64", checkpoint_every=100, device="cpu"))


def test_pack_key_with_batches_separates_init_seeds() -> None:
    """The mini-batch order is a function of the seed: different seeds cannot share a pack."""
    assert key(seeded(1, batch_size=2)) != key(seeded(2, batch_size=2))
    assert key(seeded(1, batch_size=2)) == key(seeded(1, batch_size=2, learning_rate=0.3))


def test_pack_key_without_batches_ignores_init_seeds() -> None:
    assert key(seeded(1)) == key(seeded(2)) == key(stored())


def test_pack_key_explicit_parameters_batch_with_seed_zero() -> None:
    """Explicit-parameter members order their batches with seed 0 (training._batch_seed)."""
    explicit = stored(batch_size=2)
    assert "parameters" in explicit["init"]
    assert key(explicit) == key(seeded(0, batch_size=2))
    assert key(explicit) != key(seeded(1, batch_size=2))


# packing.member_cost -------------------------------------------------------------------------

def test_member_cost_is_parameters_times_points() -> None:
    assert member_cost([1, 2, 1], 3) == 7 * 3 == 21
    assert member_cost([2, 3, 1], 10) == ((2 * 3 + 3) + (3 * 1 + 1)) * 10
    assert isinstance(member_cost([1, 1], 1), float)


# packing.plan_packs --------------------------------------------------------------------------

def test_plan_packs_groups_by_key_in_first_appearance_order() -> None:
    a, b, c = (QueuedJob(f"{g}{i}", g, "cpu", 1.0) for g, i in (("b", 0), ("a", 0), ("b", 1)))
    plans = plan_packs([a, b, c], {}, max_cost=100, max_members=100)
    assert plans == [PackPlan("cpu", ["b0", "b1"]), PackPlan("cpu", ["a0"])]


def test_plan_packs_never_mixes_devices() -> None:
    mixed = [QueuedJob("c0", "k", "cpu", 1.0), QueuedJob("g0", "k", "gpu", 1.0),
             QueuedJob("c1", "k", "cpu", 1.0), QueuedJob("g1", "k", "gpu", 1.0)]
    plans = plan_packs(mixed, {}, max_cost=100, max_members=100)
    assert plans == [PackPlan("cpu", ["c0", "c1"]), PackPlan("gpu", ["g0", "g1"])]


def test_plan_packs_without_slots_makes_one_pack_under_the_caps() -> None:
    plans = plan_packs(jobs("j", 5), {}, max_cost=5, max_members=5)
    assert plans == [PackPlan("cpu", [f"j{i}" for i in range(5)])]
    assert plan_packs(jobs("j", 5), {"cpu": 0}, max_cost=5, max_members=5) == plans


def test_plan_packs_spreads_over_live_slots() -> None:
    plans = plan_packs(jobs("j", 7), {"cpu": 3}, max_cost=100, max_members=100)
    assert sizes(plans) == [3, 2, 2]
    assert [j for p in plans for j in p.job_ids] == [f"j{i}" for i in range(7)]


def test_plan_packs_slots_of_another_device_do_not_count() -> None:
    plans = plan_packs(jobs("j", 4), {"gpu": 4}, max_cost=100, max_members=100)
    assert sizes(plans) == [4]


def test_plan_packs_never_more_packs_than_members() -> None:
    plans = plan_packs(jobs("j", 2), {"cpu": 8}, max_cost=100, max_members=100)
    assert sizes(plans) == [1, 1]


def test_plan_packs_cuts_by_total_cost() -> None:
    plans = plan_packs(jobs("j", 5), {"cpu": 1}, max_cost=2, max_members=100)
    assert sizes(plans) == [2, 2, 1]  # ceil(5 / 2) packs
    assert sizes(plan_packs(jobs("j", 4), {}, max_cost=2, max_members=100)) == [2, 2]


def test_plan_packs_cuts_by_member_cap() -> None:
    plans = plan_packs(jobs("j", 10), {"cpu": 1}, max_cost=1e9, max_members=4)
    assert sizes(plans) == [4, 3, 3]  # ceil(10 / 4) packs


def test_plan_packs_one_member_over_the_cost_cap_still_gets_a_pack() -> None:
    plans = plan_packs(jobs("j", 1, cost=50.0), {}, max_cost=10, max_members=4)
    assert plans == [PackPlan("cpu", ["j0"])]


def test_a_stream_of_tiny_submits_goes_as_one_pack_and_batches_submitted_together_spread() -> None:
    """Jobs each submitted alone (distinct submit times) are a stream: one pack, leaving the
    other free slots for what arrives next; jobs submitted together (a sweep's members share one
    submit time), even two such batches, spread over the slots; heavy jobs always spread."""
    from datetime import datetime, timedelta, timezone

    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    stream = packing.Stream(small=100.0)

    def at(prefix: str, offsets_ms: list[int], cost: float = 1.0) -> list[QueuedJob]:
        return [QueuedJob(f"{prefix}{i}", "k", "cpu", cost, created_at=t0 + timedelta(milliseconds=ms))
                for i, ms in enumerate(offsets_ms)]

    apart, together, two_sweeps = at("s", [0, 1, 2, 3, 4, 5]), at("t", [0] * 6), at("w", [0, 0, 0, 7, 7, 7])
    assert sizes(plan_packs(apart, {"cpu": 2}, max_cost=100, max_members=100, stream=stream)) == [6]
    assert sizes(plan_packs(together, {"cpu": 2}, max_cost=100, max_members=100, stream=stream)) == [3, 3]
    assert sizes(plan_packs(two_sweeps, {"cpu": 4}, max_cost=100, max_members=100, stream=stream)) == [2, 2, 1, 1]
    heavy = at("h", [0, 1, 2, 3, 4, 5], cost=40.0)
    assert sizes(plan_packs(heavy, {"cpu": 2}, max_cost=1000, max_members=100, stream=stream)) == [3, 3]
    assert sizes(plan_packs(apart, {"cpu": 2}, max_cost=100, max_members=4, stream=stream)) == [3, 3]  # caps still cut
    assert sizes(plan_packs(apart, {"cpu": 2}, max_cost=100, max_members=100)) == [3, 3]  # no rule: spread
    naive = [QueuedJob(f"n{i}", "k", "cpu", 1.0, created_at=t0.replace(tzinfo=None) + timedelta(seconds=i)) for i in range(2)]
    assert stream.holds(naive) is True  # SQLite's naive UTC times
    assert stream.holds([QueuedJob("x", "k", "cpu", 1.0), *naive]) is False  # a time unknown: not known to be a stream


def test_plan_packs_empty() -> None:
    assert plan_packs([], {"cpu": 2}, max_cost=10, max_members=4) == []


def test_plan_packs_no_pack_exceeds_the_cost_cap() -> None:
    plans = plan_packs(jobs("j", 3, cost=6.0), {}, max_cost=10, max_members=100)
    assert all(6.0 * len(p.job_ids) <= 10 for p in plans), sizes(plans)


def test_plan_packs_invariants_on_random_queues() -> None:
    rng = np.random.default_rng(20240611)
    for _ in range(200):
        queue = [QueuedJob(f"j{i}", f"k{rng.integers(3)}", str(rng.choice(["cpu", "gpu"])), 1.0)
                 for i in range(int(rng.integers(0, 40)))]
        slots = {"cpu": int(rng.integers(0, 5)), "gpu": int(rng.integers(0, 3))}
        max_cost, max_members = float(rng.integers(1, 20)), int(rng.integers(1, 10))
        plans = plan_packs(queue, slots, max_cost, max_members)
        by_id = {j.id: j for j in queue}
        placed = [j for p in plans for j in p.job_ids]
        assert sorted(placed) == sorted(by_id)  # every job exactly once
        groups: dict[tuple[str, str], list[PackPlan]] = {}
        for plan in plans:
            members = [by_id[j] for j in plan.job_ids]
            assert plan.job_ids and {(m.device, m.pack_key) for m in members} == {
                (plan.device, members[0].pack_key)}
            groups.setdefault((plan.device, members[0].pack_key), []).append(plan)
        for (device, group), cut in groups.items():
            expected = [j.id for j in queue if (j.device, j.pack_key) == (device, group)]
            assert [j for p in cut for j in p.job_ids] == expected  # contiguous, in order
            n, parts = len(expected), len(cut)
            assert max(sizes(cut)) - min(sizes(cut)) <= 1
            assert parts <= n
            assert parts >= min(n, max(slots[device], math.ceil(n / max_members),
                                       math.ceil(n / max_cost)))
            assert max(sizes(cut)) <= min(max_members, max_cost)  # unit costs: caps hold


# halving -------------------------------------------------------------------------------------

@pytest.mark.parametrize("step", [100, 300, 900, 2700, 8100])
def test_is_rung_at_min_steps_times_powers_of_eta(step: int) -> None:
    assert is_rung(step, RULE)


@pytest.mark.parametrize("step", [0, 50, 99, 101, 200, 400, 600, 1800, 2600])
def test_is_rung_elsewhere_false(step: int) -> None:
    assert not is_rung(step, RULE)


@pytest.mark.parametrize(("step", "rung"), [(0, 100), (99, 100), (100, 300), (299, 300),
                                            (300, 900), (2700, 8100)])
def test_next_rung_is_strictly_after(step: int, rung: int) -> None:
    assert next_rung(step, RULE) == rung
    assert is_rung(rung, RULE)


def test_next_rung_agrees_with_is_rung() -> None:
    for step in range(0, 3000):
        rung = next_rung(step, RULE)
        assert rung > step and is_rung(rung, RULE)
        assert not any(is_rung(s, RULE) for s in range(step + 1, rung))


def test_chunk_length_stops_at_the_next_rung() -> None:
    assert chunk_length([0, 250], every=250, rules=[RULE, None]) == 100
    assert chunk_length([0, 250], every=50, rules=[RULE, None]) == 50


def test_chunk_length_without_rules_is_the_cadence() -> None:
    assert chunk_length([0, 17, 300], every=250, rules=[None, None, None]) == 250


def test_chunk_length_from_a_rung_runs_to_the_next() -> None:
    assert chunk_length([100], every=250, rules=[RULE]) == 200
    assert chunk_length([100], every=150, rules=[RULE]) == 150
    assert chunk_length([250], every=250, rules=[RULE]) == 50


def test_chunk_length_takes_the_nearest_rung_of_all_members() -> None:
    other = Halving(min_steps=2, eta=2)
    assert chunk_length([250, 5], every=250, rules=[RULE, other]) == 3
    assert chunk_length([250, 8], every=250, rules=[RULE, other]) == 8


def test_chunk_length_never_jumps_over_a_rung() -> None:
    rng = np.random.default_rng(7)
    rules = [RULE, Halving(1, 2), Halving(5, 3), Halving(2, 4), Halving(64, 2), None]
    for _ in range(500):
        n = int(rng.integers(1, 8))
        steps = [int(s) for s in rng.integers(0, 5000, size=n)]
        chosen = [rules[i] for i in rng.integers(0, len(rules), size=n)]
        every = int(rng.integers(1, 400))
        length = chunk_length(steps, every, chosen)
        assert 1 <= length <= every
        for step, rule in zip(steps, chosen):
            if rule is not None:
                assert step + length <= next_rung(step, rule)
        if all(r is None for r in chosen):
            assert length == every


# halving.survivors ---------------------------------------------------------------------------

def parked(*pairs: tuple[str, float | None]) -> list[Parked]:
    return [Parked(job_id, ssr) for job_id, ssr in pairs]


def test_survivors_keeps_the_best_third() -> None:
    keep, stop = survivors(parked(("a", 3.0), ("b", 1.0), ("c", 2.0), ("d", 0.5), ("e", 9.0),
                                  ("f", 4.0)), eta=3)
    assert keep == ["d", "b"]
    assert stop == ["c", "a", "f", "e"]


@pytest.mark.parametrize(("n", "eta", "kept"), [(1, 3, 1), (2, 3, 1), (3, 3, 1), (4, 3, 2),
                                                (9, 3, 3), (10, 3, 4), (5, 2, 3)])
def test_survivors_keep_ceil_n_over_eta(n: int, eta: int, kept: int) -> None:
    keep, stop = survivors(parked(*((f"j{i}", float(i)) for i in range(n))), eta)
    assert keep == [f"j{i}" for i in range(kept)]
    assert len(stop) == n - kept


def test_survivors_break_ties_by_id() -> None:
    keep, stop = survivors(parked(("c", 1.0), ("a", 1.0), ("b", 1.0), ("d", 1.0)), eta=3)
    assert (keep, stop) == (["a", "b"], ["c", "d"])


@pytest.mark.parametrize("bad", [None, math.nan, math.inf, -math.inf])
def test_survivors_rank_missing_and_non_finite_last(bad: float | None) -> None:
    keep, stop = survivors(parked(("a", bad), ("b", 50.0), ("c", 1e6), ("d", bad)), eta=2)
    assert keep == ["b", "c"]
    assert sorted(stop) == ["a", "d"]


def test_survivors_of_nothing() -> None:
    assert survivors([], eta=3) == ([], [])


@pytest.mark.parametrize("make", [lambda i: float("nan"), lambda i: [None, float("nan")][i % 2]],
                         ids=["distinct-nans", "none-and-nan"])
def test_survivors_order_among_non_finite_is_by_id(make: Callable[[int], float | None]) -> None:
    members = [Parked("c", 1.0)] + [Parked(job_id, make(i)) for i, job_id in enumerate("ba")]
    results = {tuple(map(tuple, survivors(order, eta=2))) for order in (members, members[::-1])}
    assert results == {(("c", "a"), ("b",))}


def test_each_tenant_keeps_at_most_its_running_limit_oldest_first() -> None:
    from services.packing import within_tenant_limit

    queue = [QueuedJob(f"{t}{i}", "k", "cpu", 1.0, tenant=t) for i in range(5) for t in ("a", "b", "c")]
    kept = within_tenant_limit(queue, {"a": 3, "b": 0, "c": 9}, limit=4)
    assert [j.id for j in kept if j.tenant == "a"] == ["a0"]  # 3 in flight: room for one
    assert [j.id for j in kept if j.tenant == "b"] == ["b0", "b1", "b2", "b3"]
    assert not [j for j in kept if j.tenant == "c"]  # over its limit already: waits
    assert [j.id for j in within_tenant_limit(queue, {}, limit=100)] == [j.id for j in queue]


def test_free_slots_go_to_the_tenant_with_the_fewest_packs_at_work() -> None:
    """Taken in plain order, a tenant's backlog of more packs than workers held every slot."""
    plans = [PackPlan("cpu", [f"a{i}"], "a") for i in range(3)] + [PackPlan("cpu", ["b0"], "b"),
                                                                    PackPlan("cpu", ["c0"], "c")]
    ids = lambda chosen: [p.job_ids[0] for p in chosen]  # noqa: E731
    assert ids(packing.fair_share(plans, {"a": 1}, slots=1)) == ["b0"]  # a trains already
    assert ids(packing.fair_share(plans, {}, slots=1)) == ["a0"]  # equals: the oldest pack first
    assert ids(packing.fair_share(plans, {}, slots=4)) == ["a0", "b0", "c0", "a1"]  # in turns
    assert ids(packing.fair_share(plans, {"b": 2, "c": 1}, slots=3)) == ["a0", "a1", "c0"]
    assert ids(packing.fair_share(plans, {"a": 5}, slots=9)) == ["b0", "c0", "a0", "a1", "a2"]  # all, once each
    assert packing.fair_share([], {"a": 1}, slots=2) == []


def test_plan_packs_names_the_tenant_and_never_mixes_tenants() -> None:
    queue = [QueuedJob("a0", "k", "cpu", 1.0, tenant="a"), QueuedJob("b0", "k", "cpu", 1.0, tenant="b"),
             QueuedJob("a1", "k", "cpu", 1.0, tenant="a")]
    assert plan_packs(queue, {}, max_cost=100, max_members=100) == [
        PackPlan("cpu", ["a0", "a1"], "a"), PackPlan("cpu", ["b0"], "b")]


def test_linger_holds_tiny_fresh_jobs_only_while_another_pack_trains() -> None:
    from datetime import datetime, timedelta

    now = datetime(2026, 1, 1, 12, 0, 0)
    fresh = [QueuedJob(f"j{i}", "k", "cpu", 21.0, created_at=now - timedelta(seconds=0.01 * i)) for i in range(3)]
    assert packing.linger(fresh, busy=1, now=now, seconds=0.05, small=1e6) == pytest.approx(0.03)
    assert packing.linger(fresh, busy=0, now=now, seconds=0.05, small=1e6) == 0  # idle queue: at once
    assert packing.linger(fresh, busy=1, now=now, seconds=0.05, small=63) == 0  # 3 x 21: not tiny any more
    assert packing.linger(fresh, busy=1, now=now, seconds=0, small=1e6) == 0  # switched off
    old = [QueuedJob("lost", "k", "cpu", 21.0, created_at=now - timedelta(seconds=40))]
    assert packing.linger(old + fresh, busy=2, now=now, seconds=0.05, small=1e6) == 0  # waited enough
    ahead = [QueuedJob("skew", "k", "cpu", 21.0, created_at=now + timedelta(seconds=5))]
    assert packing.linger(ahead, busy=1, now=now, seconds=0.05, small=1e6) == 0.05  # never longer
    assert packing.linger([QueuedJob("x", "k", "cpu", 21.0)], busy=1, now=now, seconds=0.05, small=1e6) == 0
