"""Names that two layers spell separately must agree: the spec schema and the engine."""

from typing import get_args

from services import engine
from services.spec import Activation, ArchitectureSpec, JobCreate


def test_spec_activations_are_the_engines() -> None:
    assert set(get_args(Activation)) == set(engine.ACTIVATIONS)


def test_spec_dtypes_are_the_engines() -> None:
    assert set(get_args(JobCreate.model_fields["dtype"].annotation)) == {"float64", "float32"}
    for dtype in ("float64", "float32"):
        arch = engine.Architecture((1, 2, 1))
        assert engine.init_parameters(arch, 0, dtype)["layers.0.weight"].dtype.name == dtype


def test_spec_architecture_becomes_the_engines() -> None:
    spec = ArchitectureSpec(layers=[3, 5, 2], activation="tanh", output_activation="sigmoid")
    arch = spec.to_engine()
    assert arch == engine.Architecture((3, 5, 2), "tanh", "sigmoid")
    assert spec.parameter_shapes() == {"layers.0.weight": (5, 3), "layers.0.bias": (5,),
                                       "layers.1.weight": (2, 5), "layers.1.bias": (2,)}
