"""Reading results: history thinning, checkpointed parameters, predictions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from services import jobs
from services.errors import Conflict, InvalidInput, NotFound
from services.spec import JobCreate

from .conftest import STATQUEST, STATQUEST_X, STATQUEST_Y, make_spec, write_checkpoint


@pytest.fixture
def trained(configured, spec: JobCreate) -> str:
    """A job with checkpoints at steps 0 and 10 and SSR history for steps 0..10."""
    job = jobs.submit_job(spec)
    write_checkpoint(job.id, 0, STATQUEST, history=[20.0], first_step=0)
    later = {**STATQUEST, "layers.1.bias": np.array([2.61])}
    write_checkpoint(job.id, 10, later, history=[float(20 - s) for s in range(1, 11)])
    return job.id


def test_full_history(trained: str) -> None:
    history = jobs.get_history(trained)
    assert history.steps == list(range(11))
    assert history.ssr == [float(20 - s) for s in range(11)]


@pytest.mark.parametrize(("arguments", "steps"), [
    ({"every": 3}, [0, 3, 6, 9, 10]),
    ({"every": 5}, [0, 5, 10]),
    ({"every": 100}, [0, 10]),
    ({"max_points": 11}, list(range(11))),
    ({"max_points": 6}, [0, 2, 4, 6, 8, 10]),
    ({"max_points": 4}, [0, 4, 8, 10]),
    ({"max_points": 1}, [10]),
])
def test_history_thinning(trained: str, arguments: dict, steps: list[int]) -> None:
    history = jobs.get_history(trained, **arguments)
    assert history.steps == steps
    assert history.ssr == [float(20 - s) for s in steps]


@pytest.mark.parametrize("n", range(1, 40))
def test_max_points_is_a_maximum_and_keeps_the_last_step(n: int) -> None:
    steps = np.arange(n)
    for max_points in range(1, 45):
        kept = steps[jobs.thin_to(steps, max_points)]
        assert len(kept) <= max_points and kept[-1] == n - 1
        if n <= max_points:
            assert len(kept) == n


def test_history_of_a_queued_job_is_empty(configured, spec: JobCreate) -> None:
    job = jobs.submit_job(spec)
    assert jobs.get_history(job.id).model_dump() == {"steps": [], "ssr": []}


def test_non_finite_history_reads_as_none_and_stops_at_the_job_step(configured, spec: JobCreate) -> None:
    job = jobs.submit_job(spec)
    write_checkpoint(job.id, 3, STATQUEST, history=[1.0, math.inf, math.nan, 2.0, 9.0], first_step=0)
    history = jobs.get_history(job.id)
    assert (history.steps, history.ssr) == ([0, 1, 2, 3], [1.0, None, None, 2.0])


@pytest.mark.parametrize(("arguments", "loc"), [
    ({"every": 0}, ("every",)),
    ({"max_points": 0}, ("max_points",)),
    ({"every": 2, "max_points": 3}, ("every",)),
])
def test_history_arguments_are_checked(trained: str, arguments: dict, loc: tuple) -> None:
    with pytest.raises(InvalidInput) as error:
        jobs.get_history(trained, **arguments)
    assert error.value.loc == loc


def test_parameters_latest_and_at_a_step(trained: str) -> None:
    latest = jobs.get_parameters(trained)
    assert latest.step == 10 and latest.layers[1].bias == [2.61]
    first = jobs.get_parameters(trained, step=0)
    assert first.step == 0
    assert [layer.model_dump() for layer in first.layers] == [
        {"weight": [[3.34], [-3.53]], "bias": [-1.43, 0.57]},
        {"weight": [[-1.22, -2.30]], "bias": [0.0]},
    ]
    with pytest.raises(NotFound):
        jobs.get_parameters(trained, step=5)


def test_no_checkpoint_yet_is_a_conflict_and_an_unknown_step_not_found(configured, spec: JobCreate) -> None:
    job = jobs.submit_job(spec)
    with pytest.raises(Conflict, match="no checkpoint yet"):
        jobs.get_parameters(job.id)
    with pytest.raises(Conflict, match="no checkpoint yet"):
        jobs.predict(job.id, [[0.0]])
    with pytest.raises(NotFound):
        jobs.get_parameters(job.id, step=5)


def reference_forward(parameters: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    hidden = np.logaddexp(0.0, x @ parameters["layers.0.weight"].T + parameters["layers.0.bias"])
    return hidden @ parameters["layers.1.weight"].T + parameters["layers.1.bias"]


def test_predict_uses_the_latest_checkpoint(trained: str) -> None:
    y = np.array(jobs.predict(trained, STATQUEST_X).y)
    expected = reference_forward({**STATQUEST, "layers.1.bias": np.array([2.61])}, np.array(STATQUEST_X))
    np.testing.assert_allclose(y, expected, rtol=1e-12)


def test_predict_reproduces_the_statquest_ssr(configured) -> None:
    job = jobs.submit_job(make_spec())
    write_checkpoint(job.id, 0, STATQUEST, history=[20.4], first_step=0)
    y = np.array(jobs.predict(job.id, STATQUEST_X).y)
    assert float(((np.array(STATQUEST_Y) - y) ** 2).sum()) == pytest.approx(20.4, abs=0.05)


@pytest.mark.parametrize(("x", "loc"), [
    ([], ("x",)),
    ([[0.0, 1.0]], ("x",)),
    ([[0.0], [1.0, 2.0]], ("x", 1)),
    ([[math.nan]], ("x",)),
])
def test_predict_checks_x(trained: str, x: list, loc: tuple) -> None:
    with pytest.raises(InvalidInput) as error:
        jobs.predict(trained, x)
    assert error.value.loc == loc
