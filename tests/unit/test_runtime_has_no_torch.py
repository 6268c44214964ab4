"""The serving path never needs torch: not installed here, not imported by anything in app/."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import app

BUILD_TIME_ONLY = {"torch", "transformers", "sentence_transformers", "onnx"}


def test_no_module_under_app_imports_a_build_time_package() -> None:
    offenders = []
    for path in Path(app.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in BUILD_TIME_ONLY]
    assert offenders == []


def test_the_runtime_environment_has_no_torch() -> None:
    assert importlib.util.find_spec("torch") is None
