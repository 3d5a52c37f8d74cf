"""The import direction of the design, checked by walking every module's imports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STDLIB_OK = {"__future__", "dataclasses", "typing", "math", "functools", "collections", "importlib", "contextlib",
             "concurrent", "os"}


def imports_of(package: str) -> dict[str, set[str]]:
    """Top-level and dotted module names each file of ``package`` imports (lazy ones included)."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module)
            elif isinstance(node, ast.ImportFrom) and node.level > 0:
                names.add(f"{package}.<relative>")
        found[str(path.relative_to(ROOT))] = names
    return found


def roots(names: set[str]) -> set[str]:
    return {name.split(".")[0] for name in names}


def test_engine_imports_only_array_libraries() -> None:
    # cupy_backends: CuPy's own cuBLAS bindings, in CuPy's wheel; ctypes and threading: cuBLAS' C
    # functions during a CUDA graph capture, on a handle bound per thread (cuda_gemm.bound_handle)
    allowed = {"numpy", "cupy", "cupy_backends", "numba", "llvmlite", "numexpr", "threadpoolctl", "ctypes",
               "threading", "services"} | STDLIB_OK
    for path, names in imports_of("services/engine").items():
        assert roots(names) <= allowed, f"{path} imports {roots(names) - allowed}"
        inside = {n for n in names if n.startswith("services.")}
        assert all(n.startswith("services.engine") for n in inside), f"{path} imports {inside}"


@pytest.mark.parametrize(("package", "forbidden"), [("api", "worker"), ("worker", "api"), ("services", "api"), ("services", "worker")])
def test_packages_do_not_import_each_other(package: str, forbidden: str) -> None:
    for path, names in imports_of(package).items():
        assert forbidden not in roots(names), f"{path} imports {forbidden}"


def test_migrations_import_no_application_models() -> None:
    for path, names in imports_of("migrations").items():
        assert "services.db.models" not in names, f"{path} imports the models"


def test_no_pickle_anywhere() -> None:
    for package in ("api", "worker", "services"):
        for path, names in imports_of(package).items():
            assert "pickle" not in roots(names) and "cloudpickle" not in roots(names), path
        for path in (ROOT / package).rglob("*.py"):
            assert "allow_pickle=True" not in path.read_text(), path
