"""The sweep schema and its pure expansion: member order, reproducible draws, error locations."""

from __future__ import annotations

import gc
import json
import math
from typing import Any

import pytest
from pydantic import ValidationError

from services.errors import InvalidInput
from services.examples import statquest_job
from services.spec import ExplicitInit, SeedInit
from services.sweep_spec import (
    Member,
    SweepCreate,
    draws,
    expand,
    member_count,
    set_path,
    validate_members,
    varied_paths,
)


def small_job() -> dict[str, Any]:
    """A [1, 2, 1] job with a seed init and three inline points."""
    return {
        "name": "small",
        "architecture": {"layers": [1, 2, 1], "activation": "softplus"},
        "data": {"x": [[0.0], [0.5], [1.0]], "y": [[0.0], [1.0], [0.0]]},
        "learning_rate": 0.1,
        "init": {"seed": 0},
    }


def sweep(**fields: Any) -> SweepCreate:
    return SweepCreate.model_validate({"name": "s", "base": small_job()} | fields)


def members_of(**fields: Any) -> list[Member]:
    return expand(sweep(**fields), 100_000)


def schema_error(**fields: Any) -> tuple[tuple, InvalidInput | None]:
    """The first error's pydantic loc and the InvalidInput a validator raised (if one did)."""
    with pytest.raises(ValidationError) as info:
        sweep(**fields)
    error = info.value.errors()[0]
    return error["loc"], (error.get("ctx") or {}).get("error")


def member_error(max_members: int = 100_000, **fields: Any) -> InvalidInput:
    s = sweep(**fields)
    with pytest.raises(InvalidInput) as info:
        validate_members(s, expand(s, max_members))
    return info.value


def space(n: int, seed: int = 0, **dists: Any) -> dict[str, Any]:
    return {"n": n, "seed": seed, "space": dists}


# --- grid ---------------------------------------------------------------------------------


def test_grid_is_the_cartesian_product_with_the_last_key_fastest() -> None:
    members = members_of(grid={"learning_rate": [0.1, 0.2], "init.seed": [0, 1, 2]})
    assert [m.values for m in members] == [
        {"learning_rate": lr, "init.seed": seed} for lr in (0.1, 0.2) for seed in (0, 1, 2)
    ]
    assert [m.index for m in members] == list(range(6))
    assert [(m.document["learning_rate"], m.document["init"]) for m in members][:2] == [
        (0.1, {"seed": 0}), (0.1, {"seed": 1})
    ]


def test_grid_values_may_be_lists_and_reach_the_specs() -> None:
    s = sweep(grid={"architecture.layers": [[1, 2, 1], [1, 8, 1]]})
    specs = validate_members(s, expand(s, 10))
    assert [spec.architecture.layers for spec in specs] == [[1, 2, 1], [1, 8, 1]]
    assert [spec.architecture.activation for spec in specs] == ["softplus", "softplus"]


def test_neither_grid_nor_random_gives_the_base_as_one_member() -> None:
    (member,) = members_of()
    assert member.values == {}
    assert member.document == small_job() | {"name": "s-0"}


def test_the_base_is_never_modified() -> None:
    base = statquest_job()
    s = SweepCreate.model_validate({"base": base, "grid": {"init.seed": [1], "stop.max_steps": [5]}})
    (member,) = expand(s, 10)
    assert base == statquest_job() and s.base == statquest_job()
    assert member.document["stop"] == {"max_steps": 5, "min_step_size": 0.001}


# --- random ---------------------------------------------------------------------------------

SPACE = {
    "learning_rate": {"log_uniform": [0.001, 1.0]},
    "momentum": {"uniform": [0.0, 0.9]},
    "init.seed": {"randint": [0, 3]},
    "architecture.activation": {"choice": ["relu", "tanh"]},
}


def test_random_draws_are_reproducible_from_the_seed_and_differ_for_another() -> None:
    first = [m.values for m in members_of(random=space(50, 7, **SPACE))]
    again = [m.values for m in members_of(random=space(50, 7, **SPACE))]
    other = [m.values for m in members_of(random=space(50, 8, **SPACE))]
    assert first == again
    assert [v["momentum"] for v in first] != [v["momentum"] for v in other]
    assert len({v["momentum"] for v in first}) == 50


def test_raising_n_only_appends_draws() -> None:
    short = sweep(random=space(5, 3, **SPACE)).random
    long = sweep(random=space(40, 3, **SPACE)).random
    assert short is not None and long is not None
    assert draws(long)[:5] == draws(short)


def test_draws_stay_within_their_bounds() -> None:
    values = [m.values for m in members_of(random=space(400, 1, **SPACE))]
    rates = [v["learning_rate"] for v in values]
    assert all(0.001 <= r <= 1.0 for r in rates)
    assert min(rates) < 0.01 and max(rates) > 0.1  # log-uniform: every decade is drawn
    assert all(0.0 <= v["momentum"] <= 0.9 for v in values)
    assert {v["init.seed"] for v in values} == {0, 1, 2, 3}  # randint includes high
    assert {v["architecture.activation"] for v in values} == {"relu", "tanh"}


def test_degenerate_ranges_give_their_single_value() -> None:
    values = [m.values for m in members_of(random=space(5, 0, **{
        "init.seed": {"randint": [4, 4]}, "momentum": {"uniform": [0.5, 0.5]},
        "architecture.activation": {"choice": ["tanh"]}}))]
    assert values == [{"init.seed": 4, "momentum": 0.5, "architecture.activation": "tanh"}] * 5


def test_values_are_plain_json_types() -> None:
    members = members_of(grid={"learning_rate": [0.1, 1]}, random=space(3, 0, **{
        k: v for k, v in SPACE.items() if k != "learning_rate"}))
    for member in members:
        assert {type(v) for v in member.values.values()} <= {float, int, str}
        json.dumps(member.values, allow_nan=False)
        json.dumps(member.document, allow_nan=False)


# --- grid x random ----------------------------------------------------------------------------


def test_grid_and_random_combine_every_point_with_every_draw() -> None:
    s = sweep(grid={"learning_rate": [0.1, 0.2, 0.3]}, random=space(4, 0, momentum={"uniform": [0.0, 0.9]}))
    members = expand(s, 12)
    assert len(members) == member_count(s) == 12
    momenta = [m.values["momentum"] for m in members[:4]]
    for point, lr in enumerate((0.1, 0.2, 0.3)):
        chunk = members[4 * point: 4 * point + 4]
        assert [m.values["learning_rate"] for m in chunk] == [lr] * 4  # grid point outer
        assert [m.values["momentum"] for m in chunk] == momenta  # the same draws inner
    assert len(validate_members(s, members)) == 12


def test_varied_paths_are_grid_keys_then_random_keys() -> None:
    s = sweep(grid={"learning_rate": [0.1], "init.seed": [1]}, random=space(1, 0, **{"momentum": {"uniform": [0, 1]},
                                                                              "name": {"choice": ["a"]}}))
    assert varied_paths(s) == ["learning_rate", "init.seed", "momentum", "name"]


# --- documents: unions, names, set_path ----------------------------------------------------


def test_setting_init_seed_replaces_explicit_parameters() -> None:
    s = SweepCreate.model_validate({"base": statquest_job(), "grid": {"init.seed": [5, 6]}})
    members = expand(s, 10)
    assert [m.document["init"] for m in members] == [{"seed": 5}, {"seed": 6}]
    assert all(isinstance(spec.init, SeedInit) for spec in validate_members(s, members))


def test_setting_init_parameters_replaces_a_seed() -> None:
    layers = statquest_job()["init"]["parameters"]["layers"]
    s = sweep(grid={"init.parameters.layers": [layers]})
    (spec,) = validate_members(s, expand(s, 10))
    assert isinstance(spec.init, ExplicitInit)


def test_setting_one_side_of_the_data_union_drops_the_other() -> None:
    doc = {"data": {"x": [[1.0]], "y": [[2.0]]}}
    set_path(doc, "data.dataset_id", "abc")
    assert doc == {"data": {"dataset_id": "abc"}}
    set_path(doc, "data.x", [[3.0]])
    assert doc == {"data": {"x": [[3.0]]}}


def test_set_path_creates_objects_and_copies_those_it_changes() -> None:
    shared = {"a": {"b": {"c": 1}, "keep": [1]}}
    doc = dict(shared)
    set_path(doc, "a.b.d", 2)
    set_path(doc, "x.y", 3)
    assert doc == {"a": {"b": {"c": 1, "d": 2}, "keep": [1]}, "x": {"y": 3}}
    assert shared == {"a": {"b": {"c": 1}, "keep": [1]}}


def test_set_path_through_a_non_object_names_the_path() -> None:
    with pytest.raises(InvalidInput) as info:
        set_path({"stop": 5}, "stop.max_steps", 1)
    assert info.value.loc == ("stop",) and "'stop.max_steps'" in info.value.message
    with pytest.raises(InvalidInput) as info:
        members_of(base=small_job() | {"stop": 5}, grid={"stop.max_steps": [1]})
    assert info.value.loc == ("base", "stop")


def test_member_names_are_sweep_name_and_index() -> None:
    assert [m.document["name"] for m in members_of(grid={"learning_rate": [0.1, 0.2]})] == ["s-0", "s-1"]
    long = sweep(name="n" * 200, grid={"learning_rate": [0.1] * 11})
    names = [m.document["name"] for m in expand(long, 20)]
    assert all(len(name) <= 200 for name in names) and names[10].endswith("n-10")
    assert len(set(names)) == 11


def test_a_varied_name_is_kept() -> None:
    assert [m.document["name"] for m in members_of(grid={"name": ["a", "b"]})] == ["a", "b"]


# --- schema errors --------------------------------------------------------------------------


def test_a_path_in_grid_and_random_is_refused_at_the_random_one() -> None:
    loc, cause = schema_error(grid={"momentum": [0.1]}, random=space(1, 0, momentum={"uniform": [0, 1]}))
    assert loc == () and isinstance(cause, InvalidInput)
    assert cause.loc == ("random", "space", "momentum") and "also in grid" in cause.message


@pytest.mark.parametrize("path", ["", "a..b", "a.", "a-b", "a b"])
def test_paths_must_be_dotted_names(path: str) -> None:
    _, cause = schema_error(grid={path: [1]})
    assert cause is not None and cause.loc == ("grid", path)


def test_one_varied_path_may_not_lie_inside_another() -> None:
    _, cause = schema_error(grid={"init": [{"seed": 1}]}, random=space(1, 0, **{"init.seed": {"randint": [0, 1]}}))
    assert cause is not None and cause.loc == ("random", "space", "init.seed") and "overlaps" in cause.message


@pytest.mark.parametrize(("dist", "field"), [
    ({"log_uniform": [0.0, 1.0]}, "log_uniform"),
    ({"log_uniform": [1.0, 1.0]}, "log_uniform"),
    ({"uniform": [2.0, 1.0]}, "uniform"),
    ({"uniform": [-1e308, 1e308]}, "uniform"),
    ({"randint": [3, 2]}, "randint"),
])
def test_bad_distribution_bounds_name_the_distribution(dist: dict, field: str) -> None:
    loc, cause = schema_error(random=space(1, 0, momentum=dist))
    assert loc == ("random", "space", "momentum")
    assert cause is not None and cause.loc == (field,)


@pytest.mark.parametrize("dist", [{}, {"uniform": [0, 1], "choice": [1]}, {"normal": [0, 1]}, {"choice": []},
                                  {"uniform": [0, 1, 2]}])
def test_a_distribution_is_exactly_one_known_kind(dist: dict) -> None:
    loc, _ = schema_error(random=space(1, 0, momentum=dist))
    assert loc[:3] == ("random", "space", "momentum")


@pytest.mark.parametrize(("fields", "where"), [
    ({"grid": {"learning_rate": []}}, ("grid", "learning_rate")),
    ({"random": space(0, 0, momentum={"uniform": [0, 1]})}, ("random", "n")),
    ({"random": space(1, -1, momentum={"uniform": [0, 1]})}, ("random", "seed")),
    ({"random": space(1, 0)}, ("random", "space")),
    ({"early_stopping": {"type": "successive_halving", "min_steps": 10, "reduction_factor": 1}},
     ("early_stopping", "reduction_factor")),
    ({"early_stopping": {"type": "hyperband", "min_steps": 10}}, ("early_stopping", "type")),
    ({"early_stopping": {"min_steps": 10}}, ("early_stopping", "type")),
    ({"name": ""}, ("name",)),
    ({"extra": 1}, ("extra",)),
])
def test_schema_errors_name_their_field(fields: dict, where: tuple) -> None:
    loc, _ = schema_error(**fields)
    assert loc == where


def test_the_schema_example_is_a_valid_small_sweep() -> None:
    example = SweepCreate.model_json_schema()["examples"][0]
    s = SweepCreate.model_validate(example)
    assert s.early_stopping is not None and s.early_stopping.reduction_factor == 3
    assert len(validate_members(s, expand(s, 10))) == member_count(s) == 6


# --- member count -----------------------------------------------------------------------------


def test_too_many_grid_members_are_refused_at_the_grid() -> None:
    with pytest.raises(InvalidInput) as info:
        expand(sweep(grid={"learning_rate": [0.1, 0.2, 0.3], "init.seed": [0, 1]}), 5)
    assert info.value.loc == ("grid",) and "6 members exceed the limit of 5" in info.value.message


def test_too_many_draws_are_refused_at_n_before_anything_is_drawn() -> None:
    huge = sweep(grid={"learning_rate": [0.1, 0.2]}, random=space(10**9, 0, momentum={"uniform": [0, 1]}))
    with pytest.raises(InvalidInput) as info:
        expand(huge, 1000)  # drawing 10**9 values first would take minutes and gigabytes
    assert info.value.loc == ("random", "n") and f"{2 * 10**9} members exceed the limit of 1000" in info.value.message


def test_sizes_past_the_schema_bounds_are_refused_at_the_field() -> None:
    for fields, loc in [
        ({"random": space(2**31 + 1, 0, momentum={"uniform": [0, 1]})}, ("random", "n")),
        ({"random": space(1, 2**63, momentum={"uniform": [0, 1]})}, ("random", "seed")),
        ({"early_stopping": {"type": "successive_halving", "min_steps": 2**31}}, ("early_stopping", "min_steps")),
        ({"early_stopping": {"type": "successive_halving", "min_steps": 2, "reduction_factor": 10**6}},
         ("early_stopping", "reduction_factor")),
    ]:
        with pytest.raises(ValidationError) as info:
            sweep(**fields)
        assert info.value.errors()[0]["loc"] == loc, fields


def test_strings_and_booleans_are_not_numbers_in_a_sweep() -> None:
    for fields, loc in [
        ({"random": space("3", 0, momentum={"uniform": [0, 1]})}, ("random", "n")),
        ({"random": space(3, True, momentum={"uniform": [0, 1]})}, ("random", "seed")),
        ({"random": space(3, 0, momentum={"uniform": ["0", 1]})}, ("random", "space", "momentum", "uniform", 0)),
        ({"random": space(3, 0, **{"init.seed": {"randint": [0, 2.5]}})},
         ("random", "space", "init.seed", "randint", 1)),
    ]:
        with pytest.raises(ValidationError) as info:
            sweep(**fields)
        assert info.value.errors()[0]["loc"] == loc, fields


@pytest.mark.parametrize(("fields", "loc"), [
    ({"base": small_job() | {"name": "\ud800"}}, ("base", "name")),
    ({"base": small_job() | {"\udc00": 1}}, ("base", "\udc00")),
    ({"base": small_job() | {"note": "a\x00b"}}, ("base", "note")),
    ({"base": small_job() | {"learning_rate": float("nan")}}, ("base", "learning_rate")),
    ({"grid": {"name": ["ok", "\ud800"]}}, ("grid", "name", 1)),
    ({"base": small_job() | {"deep": json.loads("[" * 40 + "]" * 40)}}, ("base", "deep")),
])
def test_base_and_grid_hold_only_what_storage_takes(fields: dict, loc: tuple) -> None:
    """The base and grid values are stored as sent: valid text, finite numbers, bounded depth."""
    with pytest.raises(ValidationError) as info:
        sweep(**fields)
    cause = info.value.errors()[0]["ctx"]["error"]
    assert isinstance(cause, InvalidInput) and cause.loc[:len(loc)] == loc


def test_a_grid_over_the_limit_alone_is_blamed_even_with_random() -> None:
    with pytest.raises(InvalidInput) as info:
        expand(sweep(grid={"learning_rate": [0.1, 0.2, 0.3]}, random=space(1, 0, momentum={"uniform": [0, 1]})), 2)
    assert info.value.loc == ("grid",)


def test_exactly_the_limit_is_allowed() -> None:
    assert len(expand(sweep(grid={"learning_rate": [0.1, 0.2, 0.3]}), 3)) == 3


# --- member validation errors ------------------------------------------------------------------


def test_a_bad_grid_value_is_located_at_its_position() -> None:
    error = member_error(grid={"learning_rate": [0.1, 0.2, 0.3, -1.0]})
    assert error.loc == ("grid", "learning_rate", 3)
    assert error.message == "member 3: Input should be greater than 0"


def test_the_grid_position_is_recovered_from_the_member_index() -> None:
    error = member_error(grid={"learning_rate": [0.1, 0.2], "init.seed": [0, -1, 2]},
                         random=space(2, 0, momentum={"uniform": [0, 0.5]}))
    # member (lr 0.1, seed -1, draw 0) is index 0*6 + 1*2 + 0 = 2; the discriminator tag is stripped
    assert error.loc == ("grid", "init.seed", 1)
    assert error.message.startswith("member 2: ")


def test_an_error_inside_a_grid_value_points_into_it() -> None:
    error = member_error(grid={"architecture.layers": [[1, 2, 1], [1, 0, 1]]})
    assert error.loc == ("grid", "architecture.layers", 1, 1)


def test_a_bad_random_space_is_located_at_the_distribution() -> None:
    error = member_error(grid={"momentum": [0.1, 0.2]}, random=space(3, 0, learning_rate={"uniform": [-1.0, -0.5]}))
    assert error.loc == ("random", "space", "learning_rate")
    assert error.message == "member 0 (draw 0): Input should be greater than 0"


def test_a_random_choice_is_blamed_at_the_first_bad_draw() -> None:
    s = sweep(random=space(30, 0, **{"architecture.activation": {"choice": ["relu", "swish"]}}))
    members = expand(s, 100)
    first_bad = next(m.index for m in members if m.values["architecture.activation"] == "swish")
    with pytest.raises(InvalidInput) as info:
        validate_members(s, members)
    assert info.value.loc == ("random", "space", "architecture.activation")
    assert info.value.message.startswith(f"member {first_bad} (draw {first_bad}): ")


@pytest.mark.parametrize(("change", "loc"), [
    ({"stop": {"max_steps": -1}}, ("base", "stop", "max_steps")),
    ({"trainable": ["nope"]}, ("base", "trainable", 0)),  # raised by a model validator
    ({"data": {"x": [[0.0], [1.0, 2.0]], "y": [[0.0], [1.0]]}}, ("base", "data", "x", 1)),
    ({"init": {"seed": 0, "extra": 1}}, ("base", "init", "extra")),
    ({"learning_rate": None}, ("base", "learning_rate")),
])
def test_a_base_error_is_located_in_the_base(change: dict, loc: tuple) -> None:
    error = member_error(base=small_job() | change, grid={"momentum": [0.1, 0.2]})
    assert error.loc == loc
    assert not error.message.startswith("member")


def test_validation_leaves_the_garbage_collector_as_it_was() -> None:
    assert gc.isenabled()
    member_error(grid={"learning_rate": [-1.0]})
    assert gc.isenabled()
    validate_members(sweep(), members_of())
    assert gc.isenabled()


def test_member_values_survive_validation_unchanged() -> None:
    s = sweep(random=space(20, 2, learning_rate={"log_uniform": [0.01, 0.5]}))
    members = expand(s, 100)
    specs = validate_members(s, members)
    assert [spec.learning_rate for spec in specs] == [m.values["learning_rate"] for m in members]
    assert all(math.isfinite(spec.learning_rate) for spec in specs)
