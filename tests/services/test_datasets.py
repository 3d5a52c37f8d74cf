"""Datasets: stored once per content, read back exactly, CSV parsed with located errors."""

from __future__ import annotations

import numpy as np
import pytest

from services import csv_data, datasets
from services.db import repository
from services.db.session import session_scope
from services.errors import InvalidInput, NotFound


def test_same_content_is_stored_once(configured) -> None:
    first = datasets.create_dataset([[0.0], [1.0]], [[1.0], [2.0]])
    again = datasets.create_dataset([[0.0], [1.0]], [[1.0], [2.0]])
    other = datasets.create_dataset([[0.0], [1.0]], [[1.0], [2.5]])
    assert again == first
    assert other.id != first.id and other.content_hash != first.content_hash
    assert (first.n_points, first.n_in, first.n_out) == (2, 1, 1)
    assert datasets.get_dataset(first.id) == first
    with session_scope() as session:
        x, y = repository.load_dataset_arrays(session, first.id)
    np.testing.assert_array_equal(x, [[0.0], [1.0]])
    np.testing.assert_array_equal(y, [[1.0], [2.0]])


def test_unknown_dataset_is_not_found(configured) -> None:
    with pytest.raises(NotFound):
        datasets.get_dataset("no-such-id")


@pytest.mark.parametrize(("x", "y", "loc"), [
    ([[0.0], [1.0, 2.0]], [[0.0], [1.0]], ("x", 1)),
    ([[0.0], [1.0]], [[0.0]], ("y",)),
    ([[float("nan")]], [[0.0]], ("x", 0)),
    ([[0.0]], [[float("inf")]], ("y", 0)),
    ([], [], ("x",)),
    ([[]], [[1.0]], ("x",)),
])
def test_bad_data_names_the_field(x, y, loc) -> None:
    with pytest.raises(InvalidInput) as error:
        datasets.to_arrays(x, y)
    assert error.value.loc == loc


def test_point_limit(configured) -> None:
    configured.max_points = 2
    with pytest.raises(InvalidInput) as error:
        datasets.create_dataset([[0.0]] * 3, [[0.0]] * 3)
    assert error.value.loc == ("x",)


def test_parse_csv_orders_columns_by_number() -> None:
    text = "\ufeffy, x2 ,X1\n\n1,2,3\n4,5,6\n\n"
    assert csv_data.parse_csv(text) == ([[3.0, 2.0], [6.0, 5.0]], [[1.0], [4.0]])
    assert csv_data.parse_csv("x,y\n0,0\n0.5,1e0\n") == ([[0.0], [0.5]], [[0.0], [1.0]])


@pytest.mark.parametrize(("text", "loc"), [
    ("", ("csv",)),
    ("x,y\n", ("csv",)),
    ("x,z\n1,2\n", ("csv", 1, "z")),
    ("x1,x01,y\n1,2,3\n", ("csv", 1, "x01")),
    ("x1,x2\n1,2\n", ("csv", 1)),
    ("x,y\n1,2\n3\n", ("csv", 3)),
    ("x,y\n1,2\n3,abc\n", ("csv", 3, "y")),
    ("x,y\ninf,2\n", ("csv", 2, "x")),
    ("x,y\nnan,2\n", ("csv", 2, "x")),
    ('x,y\n0,0\n"1\n",oops\n', ("csv", 3, "y")),  # a record with a quoted line break: its first line
    ('x,y\n\n\n"1\n\n",oops\n', ("csv", 4, "y")),
])
def test_parse_csv_names_the_bad_place(text: str, loc: tuple) -> None:
    with pytest.raises(InvalidInput) as error:
        csv_data.parse_csv(text)
    assert error.value.loc == loc
