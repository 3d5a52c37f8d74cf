"""Successive halving (pure policy): where the rungs are and who goes on at a rung.

Rungs sit at ``min_steps * eta**k``. A member that reaches a rung still training parks there;
once no member of its sweep can still arrive (every unfinished member is parked at that rung),
the best ``ceil(n / eta)`` of the ``n`` parked by SSR at that step go on and the others stop.
Members of different packs thus meet at exactly the same step: the cut is exact for the sweep.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Halving:
    min_steps: int
    eta: int


@dataclass(frozen=True)
class Parked:
    job_id: str
    ssr: float | None


def is_rung(step: int, rule: Halving) -> bool:
    if step < rule.min_steps or step % rule.min_steps:
        return False
    ratio = step // rule.min_steps
    while ratio % rule.eta == 0:
        ratio //= rule.eta
    return ratio == 1


def next_rung(step: int, rule: Halving) -> int:
    """The first rung strictly after ``step``."""
    rung = rule.min_steps
    while rung <= step:
        rung *= rule.eta
    return rung


def chunk_length(steps: Sequence[int], every: int, rules: Sequence[Halving | None]) -> int:
    """Updates in the next chunk: the checkpoint cadence, shortened so no member runs past its
    next rung (members stop exactly there and are checkpointed)."""
    length = every
    for step, rule in zip(steps, rules):
        if rule is not None:
            length = min(length, next_rung(step, rule) - step)
    return max(1, length)


def survivors(parked: Sequence[Parked], eta: int) -> tuple[list[str], list[str]]:
    """(go on, stop): the best ceil(n/eta) by SSR (ties by id, non-finite last) go on."""
    def rank(p: Parked) -> tuple[bool, float, str]:
        finite = p.ssr is not None and math.isfinite(p.ssr)
        return (not finite, p.ssr if finite else 0.0, p.job_id)

    ranked = sorted(parked, key=rank)
    keep = math.ceil(len(ranked) / eta)
    return [p.job_id for p in ranked[:keep]], [p.job_id for p in ranked[keep:]]
