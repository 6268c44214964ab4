"""The borders between the layers: the core reaches models through the protocol alone, the
settings know nothing of the engine, and no module reuses a route by importing it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parents[2] / "app"
RUNTIMES = ("onnxruntime", "tokenizers")
OUTER_LAYERS = ("app.backends", "app.api", "app.transport", "app.loading", "app.main")


def imports_of(path: Path) -> set[str]:
    """Every module a file imports, at any depth (inside functions too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def under(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize("path", sorted((APP / "core").glob("*.py")), ids=lambda p: p.name)
def test_the_core_imports_no_runtime_and_no_outer_layer(path: Path) -> None:
    bad = {
        m for m in imports_of(path) if under(m, (*RUNTIMES, "fastapi", "starlette", *OUTER_LAYERS))
    }
    assert not bad, f"{path.name} imports {sorted(bad)}"


def test_the_settings_import_nothing_of_the_service() -> None:
    bad = {m for m in imports_of(APP / "config.py") if m.startswith("app.")}
    assert not bad


def test_loading_the_core_and_the_settings_loads_no_runtime() -> None:
    code = (
        "import sys, app.config, app.core.engine, app.core.registry\n"
        f"print(sorted(m for m in {RUNTIMES!r} if m in sys.modules))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert loaded.strip() == "[]"


def test_only_the_app_factory_imports_the_routes() -> None:
    for path in APP.rglob("*.py"):
        if path.name == "main.py" and path.parent == APP:
            continue
        routes = {m for m in imports_of(path) if under(m, ("app.api.routes",))}
        assert not routes, f"{path.relative_to(APP)} imports {sorted(routes)}"
