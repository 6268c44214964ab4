"""The serving path never needs torch: not installed here, not imported by anything in app/.
Nor does it need the bulk job's pyarrow and Ray, which live in .venv-bulk only. (``onnx`` itself
is in the runtime lock: checking a bundle, ``app.bundle``, reads its graph with it.)"""

from __future__ import annotations

import ast
import importlib.util
from collections.abc import Iterator
from pathlib import Path

import app

BUILD_TIME_ONLY = {"torch", "transformers", "sentence_transformers", "onnxscript"}
BULK_ONLY = {"pyarrow", "ray"}


def imports(path: Path) -> Iterator[str]:
    """Every module that ``path`` imports, by its full name."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module


def test_no_module_under_app_imports_a_build_time_package() -> None:
    offenders = [
        f"{path.name}: {name}"
        for path in Path(app.__file__).parent.rglob("*.py")
        for name in imports(path)
        if name.split(".")[0] in BUILD_TIME_ONLY
    ]
    assert offenders == []


def test_only_the_bulk_job_imports_pyarrow_and_ray() -> None:
    offenders = [
        f"{path.name}: {name}"
        for path in Path(app.__file__).parent.rglob("*.py")
        if "bulk" not in path.parts
        for name in imports(path)
        if name.split(".")[0] in BULK_ONLY or name.startswith("app.bulk")
    ]
    assert offenders == []


def test_the_runtime_environment_has_no_torch() -> None:
    assert importlib.util.find_spec("torch") is None
