"""The job spec: one schema shared by API validation and workers, plus the read models.

Validation that needs only the spec lives in validators here; checks against configured limits
live in ``check_limits`` (it needs the settings) and checks against a stored dataset happen when
the dataset is loaded (``check_data_shape``). All raise errors whose location names the field.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

from services.config import Settings
from services.engine import Architecture
from services.errors import InvalidInput

Activation = Literal["identity", "relu", "softplus", "sigmoid", "tanh"]
JobStatus = Literal["queued", "running", "succeeded", "diverged", "failed", "cancelled"]
FINISHED = ("succeeded", "diverged", "failed", "cancelled")
Matrix = list[list[float]]


class Strict(BaseModel):
    """Unknown fields and NaN/Infinity are input errors, never silently accepted."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ArchitectureSpec(Strict):
    layers: list[Annotated[int, Field(ge=1)]] = Field(min_length=2)
    activation: Activation = "relu"
    output_activation: Activation = "identity"

    def to_engine(self) -> Architecture:
        return Architecture(tuple(self.layers), self.activation, self.output_activation)

    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        return self.to_engine().parameter_shapes()


class InlineData(Strict):
    x: Matrix = Field(min_length=1)
    y: Matrix = Field(min_length=1)

    @model_validator(mode="after")
    def _rectangular(self) -> "InlineData":
        check_pairs(self.x, self.y)
        return self


class DatasetRef(Strict):
    dataset_id: str = Field(min_length=1, max_length=64)


class LayerParameters(Strict):
    weight: Matrix
    bias: list[float]


class ParameterValues(Strict):
    layers: list[LayerParameters] = Field(min_length=1)


class ExplicitInit(Strict):
    parameters: ParameterValues


class SeedInit(Strict):
    seed: int = Field(ge=0, le=2**63 - 1)


class StopSpec(Strict):
    max_steps: int = Field(default=1000, ge=0)
    min_step_size: float = Field(default=0.0, ge=0)
    target_ssr: float | None = Field(default=None, ge=0)


def _data_kind(value: object) -> str:
    has_id = isinstance(value, dict) and "dataset_id" in value or isinstance(value, DatasetRef)
    return "dataset" if has_id else "inline"


def _init_kind(value: object) -> str:
    has_seed = isinstance(value, dict) and "seed" in value or isinstance(value, SeedInit)
    return "seed" if has_seed else "parameters"


DataSpec = Annotated[
    Annotated[InlineData, Tag("inline")] | Annotated[DatasetRef, Tag("dataset")],
    Discriminator(_data_kind),
]
InitSpec = Annotated[
    Annotated[SeedInit, Tag("seed")] | Annotated[ExplicitInit, Tag("parameters")],
    Discriminator(_init_kind),
]


class JobCreate(Strict):
    name: str = Field(default="job", min_length=1, max_length=200)
    architecture: ArchitectureSpec
    data: DataSpec
    learning_rate: float = Field(gt=0)
    init: InitSpec = SeedInit(seed=0)
    trainable: list[str] | None = None
    stop: StopSpec = StopSpec()
    checkpoint_every: int = Field(default=100, ge=1)
    device: Literal["cpu", "gpu"] = "cpu"
    batch_size: int | None = Field(default=None, ge=1)
    momentum: float = Field(default=0.0, ge=0, lt=1)
    dtype: Literal["float64", "float32"] = "float64"

    @model_validator(mode="after")
    def _consistent(self) -> "JobCreate":
        shapes = self.architecture.parameter_shapes()
        if isinstance(self.init, ExplicitInit):
            check_parameters(self.init.parameters, shapes, ("init", "parameters", "layers"))
        for i, name in enumerate(self.trainable or []):
            if name not in shapes:
                raise InvalidInput(("trainable", i), f"unknown parameter {name!r}; known: {sorted(shapes)}")
        if isinstance(self.data, InlineData):
            check_data_shape(self, len(self.data.x[0]), len(self.data.y[0]))
        return self


def check_matrix(rows: Matrix, loc: tuple[str | int, ...]) -> None:
    """Ragged rows would silently become object arrays; refuse them here."""
    width = len(rows[0])
    if width == 0:
        raise InvalidInput(loc, "rows must not be empty")
    for i, row in enumerate(rows):
        if len(row) != width:
            raise InvalidInput((*loc, i), f"row has {len(row)} values, expected {width}")


def check_pairs(x: Matrix, y: Matrix) -> None:
    """x and y must be rectangular and have one row per data point each."""
    check_matrix(x, ("x",))
    check_matrix(y, ("y",))
    if len(x) != len(y):
        raise InvalidInput(("y",), f"x has {len(x)} rows but y has {len(y)}")


def check_parameters(values: ParameterValues, shapes: dict[str, tuple[int, ...]], loc: tuple) -> None:
    n_layers = len(shapes) // 2
    if len(values.layers) != n_layers:
        raise InvalidInput(loc, f"{len(values.layers)} layers given, architecture has {n_layers}")
    for i, layer in enumerate(values.layers):
        out, inp = shapes[f"layers.{i}.weight"]
        if len(layer.weight) != out or any(len(r) != inp for r in layer.weight):
            raise InvalidInput((*loc, i, "weight"), f"must be {out}x{inp} (out x in)")
        if len(layer.bias) != out:
            raise InvalidInput((*loc, i, "bias"), f"must have {out} values, got {len(layer.bias)}")


def check_data_shape(spec: JobCreate, n_in: int, n_out: int) -> None:
    layers = spec.architecture.layers
    if n_in != layers[0]:
        raise InvalidInput(("data", "x"), f"rows have {n_in} values but layers[0] is {layers[0]}")
    if n_out != layers[-1]:
        raise InvalidInput(("data", "y"), f"rows have {n_out} values but layers[-1] is {layers[-1]}")


def check_limits(spec: JobCreate, settings: Settings, n_points: int | None = None) -> None:
    """Limits are settings, so they are checked here rather than in the static schema."""
    layers = spec.architecture.layers
    if len(layers) > settings.max_layers:
        raise InvalidInput(("architecture", "layers"), f"at most {settings.max_layers} layers allowed")
    for i, width in enumerate(layers):
        if width > settings.max_layer_width:
            raise InvalidInput(("architecture", "layers", i), f"width {width} exceeds {settings.max_layer_width}")
    n_params = sum(a * b + b for a, b in zip(layers, layers[1:]))
    if n_params > settings.max_parameters:
        raise InvalidInput(("architecture", "layers"), f"{n_params} parameters exceed {settings.max_parameters}")
    if spec.stop.max_steps > settings.max_steps:
        raise InvalidInput(("stop", "max_steps"), f"exceeds the limit of {settings.max_steps}")
    points = len(spec.data.x) if isinstance(spec.data, InlineData) else n_points
    if points is not None and points > settings.max_points:
        raise InvalidInput(("data", "x"), f"{points} points exceed the limit of {settings.max_points}")
    if spec.batch_size is not None and points is not None and spec.batch_size > points:
        raise InvalidInput(("batch_size",), f"{spec.batch_size} exceeds the {points} data points")


class DatasetCreate(Strict):
    x: Matrix = Field(min_length=1)
    y: Matrix = Field(min_length=1)

    @model_validator(mode="after")
    def _rectangular(self) -> "DatasetCreate":
        check_pairs(self.x, self.y)
        return self


class DatasetRead(BaseModel):
    id: str
    content_hash: str
    n_points: int
    n_in: int
    n_out: int
    created_at: datetime


class WorkerInfo(BaseModel):
    hostname: str | None = None
    pid: int | None = None


class JobRead(BaseModel):
    id: str
    name: str
    status: JobStatus
    step: int
    ssr: float | None
    stop_reason: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    attempts: int
    worker: WorkerInfo
    device: str
    sweep_id: str | None = None
    sweep_values: dict[str, Any] | None = None  # a sweep member's varied values
    rung: int | None = None  # successive halving: the rung step it waits at for the sweep's cut
    error: str | None = None


class JobPage(BaseModel):
    items: list[JobRead]
    next_cursor: str | None


class HistoryRead(BaseModel):
    steps: list[int]
    ssr: list[float | None]


class ParametersRead(BaseModel):
    step: int
    layers: list[LayerParameters]


class PredictRequest(Strict):
    x: Matrix = Field(min_length=1)


class PredictRead(BaseModel):
    y: Matrix
