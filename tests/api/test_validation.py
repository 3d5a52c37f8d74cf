"""Every bad job spec gets a 422 whose error location names the field at fault.

Locations are paths in the client's own JSON (``body.data.x.3.0``), never the name of an
internal variant; types are strict (a string is never a number, a boolean never a number, a
float never an integer); every size has an upper bound.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from services.examples import statquest_job
from tests.api.conftest import locs

Spec = dict


def _set(path: str, value: object) -> Callable[[Spec], None]:
    """A mutation that sets ``a.b.0.c`` in the spec (list indices as numbers)."""

    def mutate(spec: Spec) -> None:
        *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
        target = spec
        for key in parents:
            target = target[key]
        target[last] = value

    return mutate


BAD_SPECS = {
    "zero learning rate": (_set("learning_rate", 0), "body.learning_rate"),
    "negative learning rate": (_set("learning_rate", -0.1), "body.learning_rate"),
    "unknown activation": (_set("architecture.activation", "swish"), "body.architecture.activation"),
    "one layer": (_set("architecture.layers", [1]), "body.architecture.layers"),
    "zero width": (_set("architecture.layers", [1, 0, 1]), "body.architecture.layers.1"),
    "x wider than layers[0]": (_set("data.x", [[0.0, 1.0]] * 3), "body.data.x"),
    "y wider than layers[-1]": (_set("data.y", [[0.0, 1.0]] * 3), "body.data.y"),
    "x and y row counts": (_set("data.y", [[0.0]] * 2), "body.data.y"),
    "ragged x": (_set("data.x", [[0.0], [0.5, 1.0], [1.0]]), "body.data.x.1"),
    "init weight shape": (_set("init.parameters.layers.0.weight", [[1.0, 2.0]]), "body.init.parameters.layers.0.weight"),
    "init bias length": (_set("init.parameters.layers.1.bias", [0.0, 1.0]), "body.init.parameters.layers.1.bias"),
    "init layer count": (_set("init.parameters.layers", [{"weight": [[1.0]], "bias": [0.0]}]), "body.init.parameters.layers"),
    "unknown trainable": (_set("trainable", ["layers.1.bias", "layers.9.weight"]), "body.trainable.1"),
    "unknown field": (_set("colour", "blue"), "body.colour"),
    "momentum of 1": (_set("momentum", 1.0), "body.momentum"),
    "unknown device": (_set("device", "tpu"), "body.device"),
    "negative max_steps": (_set("stop.max_steps", -1), "body.stop.max_steps"),
    "string learning rate": (_set("learning_rate", "fast"), "body.learning_rate"),
    "checkpoint_every 0": (_set("checkpoint_every", 0), "body.checkpoint_every"),
    # Strict types: what the issue found accepted.
    "learning rate as a string": (_set("learning_rate", "0.1"), "body.learning_rate"),
    "learning rate as a boolean": (_set("learning_rate", True), "body.learning_rate"),
    "x as booleans": (_set("data.x", [[True], [False], [True]]), "body.data.x.0.0"),
    "x as numeric strings": (_set("data.x", [[0.0], [0.5], ["1.0"]]), "body.data.x.2.0"),
    "y as null": (_set("data.y", [[0.0], [None], [0.0]]), "body.data.y.1.0"),
    "bias as a string": (_set("init.parameters.layers.1.bias", ["0"]), "body.init.parameters.layers.1.bias.0"),
    "momentum as a string": (_set("momentum", "0.5"), "body.momentum"),
    "checkpoint_every as a float": (_set("checkpoint_every", 100.0), "body.checkpoint_every"),
    "checkpoint_every as a string": (_set("checkpoint_every", "100"), "body.checkpoint_every"),
    "max_steps as a boolean": (_set("stop.max_steps", True), "body.stop.max_steps"),
    "width as a float": (_set("architecture.layers", [1, 2.0, 1]), "body.architecture.layers.1"),
    "seed as a float": (_set("init", {"seed": 1.5}), "body.init.seed"),
    "seed as a string": (_set("init", {"seed": "1"}), "body.init.seed"),
    "dataset_id as a number": (_set("data", {"dataset_id": 5}), "body.data.dataset_id"),
    "data as a list": (_set("data", [[0.0]]), "body.data"),
    "init as a number": (_set("init", 3), "body.init"),
    "empty row": (_set("data.x", [[0.0], [], [1.0]]), "body.data.x.1"),
    # Upper bounds the schema states.
    "checkpoint_every 1e11": (_set("checkpoint_every", 10**11), "body.checkpoint_every"),
    "max_steps past int32": (_set("stop.max_steps", 2**31), "body.stop.max_steps"),
    "seed past int64": (_set("init", {"seed": 2**63}), "body.init.seed"),
    "width past the ceiling": (_set("architecture.layers", [1, 2**21, 1]), "body.architecture.layers.1"),
    "65 layers": (_set("architecture.layers", [1] * 65), "body.architecture.layers"),
    "long trainable name": (_set("trainable", ["x" * 65]), "body.trainable.0"),
    "batch_size past int64": (_set("batch_size", 2**63), "body.batch_size"),
    # Text the storage cannot hold.
    "name with a lone surrogate": (_set("name", "job\ud800"), "body.name"),
    "name with NUL": (_set("name", "job\x00"), "body.name"),
    "trainable with a lone surrogate": (_set("trainable", ["layers.1.bias\udfff"]), "body.trainable.0"),
}


@pytest.mark.parametrize("case", BAD_SPECS, ids=list(BAD_SPECS))
def test_bad_spec_is_422_naming_the_field(client: TestClient, case: str) -> None:
    mutate, expected = BAD_SPECS[case]
    spec = statquest_job()
    mutate(spec)
    # json.dumps writes a lone surrogate as the escape \ud800, as any JSON encoder may (httpx's json= cannot).
    answer = client.post("/v1/jobs", content=json.dumps(spec), headers={"content-type": "application/json"})
    assert answer.status_code == 422, answer.text
    assert any(loc.startswith(expected) for loc in locs(answer)), (expected, answer.json())


NON_FINITE = {
    "learning rate NaN": ('"learning_rate": 0.1', '"learning_rate": NaN', "body.learning_rate"),
    "x Infinity": ('"x": [[0.0], [0.5]', '"x": [[Infinity], [0.5]', "body.data.x.0.0"),
    "weight -Infinity": ('[[3.34], [-3.53]]', '[[3.34], [-Infinity]]', "body.init.parameters.layers.0.weight.1.0"),
    "y overflow 1e400": ('"y": [[0.0]', '"y": [[1e400]', "body.data.y.0.0"),
}


@pytest.mark.parametrize("case", NON_FINITE, ids=list(NON_FINITE))
def test_non_finite_numbers_are_refused(client: TestClient, case: str) -> None:
    old, new, expected = NON_FINITE[case]
    text = json.dumps(statquest_job())
    assert old in text
    answer = client.post("/v1/jobs", content=text.replace(old, new), headers={"content-type": "application/json"})
    assert answer.status_code == 422, answer.text
    assert expected in locs(answer)


def test_an_error_names_the_path_in_the_clients_json(client: TestClient) -> None:
    """loc is the list of keys and indices; pointer the same path as a JSON Pointer."""
    spec = statquest_job()
    spec["data"]["x"][2] = ["a"]
    answer = client.post("/v1/jobs", json=spec)
    assert answer.status_code == 422 and answer.headers["content-type"] == "application/problem+json"
    problem = answer.json()
    [error] = problem["errors"]
    assert error["loc"] == ["body", "data", "x", 2, 0] and error["pointer"] == "/data/x/2/0"
    assert error["type"] == "float_type" and "number" in error["msg"]
    assert problem["status"] == 422 and problem["instance"] == "/v1/jobs"
    assert problem["detail"].startswith("body.data.x[2][0]: ")
    dataset = client.post("/v1/jobs", json=statquest_job() | {"data": {"dataset_id": "d", "x": [[0.0]]}})
    assert locs(dataset) == ["body.data.x"]  # the object has dataset_id: x is the extra field
    seed = client.post("/v1/jobs", json=statquest_job() | {"init": {"seed": -1}})
    assert locs(seed) == ["body.init.seed"]


def test_many_errors_are_listed_up_to_a_bound(client: TestClient) -> None:
    spec = statquest_job() | {"data": {"x": [["a"]] * 1000, "y": [["b"]] * 1000}}
    answer = client.post("/v1/jobs", json=spec)
    assert answer.status_code == 422
    assert len(answer.json()["errors"]) == 20 and "(and 1997 more)" in answer.json()["detail"]


def test_a_job_past_the_checkpoint_limit_is_422(limited: Callable[..., TestClient]) -> None:
    answer = limited(max_checkpoint_every=50).post("/v1/jobs", json=statquest_job() | {"checkpoint_every": 51})
    assert answer.status_code == 422 and locs(answer) == ["body.checkpoint_every"]


def test_a_batch_larger_than_the_point_limit_is_422_for_a_stored_dataset(limited: Callable[..., TestClient]) -> None:
    client = limited(max_points=3)
    dataset = client.post("/v1/datasets", json={"x": [[0.0], [1.0]], "y": [[0.0], [1.0]]}).json()
    answer = client.post("/v1/jobs", json=statquest_job() | {"data": {"dataset_id": dataset["id"]}, "batch_size": 4})
    assert answer.status_code == 422 and locs(answer) == ["body.batch_size"]


def test_malformed_json_is_422_naming_the_body(client: TestClient) -> None:
    answer = client.post("/v1/jobs", content=b'{"name": "x", ', headers={"content-type": "application/json"})
    assert answer.status_code == 422
    assert answer.json()["errors"][0]["loc"] == ["body"]
    assert answer.json()["errors"][0]["type"] == "json_invalid"


LIMITS = {
    "too many layers": ({"max_layers": 3}, _set("architecture.layers", [1, 2, 2, 1]), "body.architecture.layers"),
    "too wide": ({"max_layer_width": 1}, None, "body.architecture.layers.1"),
    "too many parameters": ({"max_parameters": 5}, None, "body.architecture.layers"),
    "too many steps": ({"max_steps": 10}, None, "body.stop.max_steps"),
    "too many points": ({"max_points": 2}, None, "body.data.x"),
}


@pytest.mark.parametrize("case", LIMITS, ids=list(LIMITS))
def test_sizes_past_the_configured_limits_are_422(limited: Callable[..., TestClient], case: str) -> None:
    limits, mutate, expected = LIMITS[case]
    spec = statquest_job()
    if mutate:
        mutate(spec)
        spec.pop("init")
    answer = limited(**limits).post("/v1/jobs", json=spec)
    assert answer.status_code == 422, answer.text
    assert expected in locs(answer)


BAD_QUERIES = [
    ("/v1/jobs", {"limit": 0}, "query.limit"),
    ("/v1/jobs", {"limit": 501}, "query.limit"),
    ("/v1/jobs", {"limit": "ten"}, "query.limit"),
    ("/v1/jobs", {"status": "sleeping"}, "query.status"),
    ("/v1/jobs", {"cursor": "not-a-cursor"}, "query.cursor"),
    ("/v1/jobs/{id}/history", {"every": 0}, "query.every"),
    ("/v1/jobs/{id}/history", {"max_points": 1}, "query.max_points"),
    ("/v1/jobs/{id}/history", {"every": 2, "max_points": 5}, "query.every"),
    ("/v1/jobs/{id}/parameters", {"step": -1}, "query.step"),
]


@pytest.mark.parametrize(("path", "params", "expected"), BAD_QUERIES)
def test_bad_query_parameters_are_422_naming_them(
    client: TestClient, trained_job: str, path: str, params: dict, expected: str
) -> None:
    answer = client.get(path.format(id=trained_job), params=params)
    assert answer.status_code == 422, answer.text
    assert expected in locs(answer)
