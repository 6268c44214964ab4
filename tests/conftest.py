"""Fixtures shared by every test: the real exported bundle, a loaded engine, a TestClient."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.core.engine import Engine
from app.loading import load_engine
from app.main import create_app

ROOT = Path(__file__).resolve().parents[1]
# tests/triton runs in .venv-triton, with tritonclient (protobuf < 7): `make test` runs it apart.
collect_ignore = ["triton"]
MODEL_DIR = Path(os.environ.get("EMBED_TEST_MODEL_DIR", ROOT / "models" / "all-MiniLM-L6-v2"))
STSB = Path(os.environ.get("EMBED_TEST_STSB", ROOT.parent / "shared" / "data" / "stsb-test.tsv"))


@pytest.fixture(scope="session")
def settings() -> Settings:
    if not (MODEL_DIR / "config.json").is_file():
        pytest.fail(f"no bundle at {MODEL_DIR}: run the tests with `make test`, which builds it")
    # One inference worker, so that a test can make "the model busy" by holding one pass.
    # Several workers are tested in tests/unit/test_batcher.py, and the e2e servers run the
    # defaults (one worker per core).
    # fp32, as parity with PyTorch is checked; bf16 is tested apart (tests/model/test_runtimes.py).
    return Settings(model_dir=MODEL_DIR, inference_workers=1, precision="fp32")


@pytest.fixture(scope="session")
def engine(settings: Settings) -> Iterator[Engine]:
    loaded = load_engine(settings)
    yield loaded
    loaded.close()


@pytest.fixture(scope="session")
def client(settings: Settings, engine: Engine) -> Iterator[TestClient]:
    """A client of the real app on the real model; 5xx come back as responses, not raises."""
    with TestClient(create_app(settings, engine), raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture(scope="session")
def reference() -> dict[str, Any]:
    """PyTorch's vectors for the export's verification sentences (written by the export)."""
    return json.loads((MODEL_DIR / "reference.json").read_text(encoding="utf-8"))  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def stsb() -> list[tuple[float, str, str]]:
    """STS Benchmark test pairs: (gold score, sentence 1, sentence 2)."""
    if not STSB.is_file():
        pytest.fail(f"STS-B data not found at {STSB} (set EMBED_TEST_STSB)")
    rows = []
    for line in STSB.read_text(encoding="utf-8").splitlines():
        fields = line.split("\t")
        rows.append((float(fields[4]), fields[5], fields[6]))
    return rows


def slowed(forward: Callable[..., Any], seconds: float) -> Callable[..., Any]:
    """``forward`` taking ``seconds`` longer: a busy model, for queue and deadline tests."""

    def slow(encodings: Any, *, alone: bool = False) -> Any:
        time.sleep(seconds)
        return forward(encodings, alone=alone)

    return slow


class HeldForward:
    """A forward pass that holds the model until ``release`` is set, recording each row's first
    word: lets a test queue requests behind a busy model and see which ones reached it."""

    def __init__(self, forward: Callable[..., Any]) -> None:
        self.forward = forward
        self.entered, self.release = threading.Event(), threading.Event()
        self.seen: list[str] = []

    def __call__(self, encodings: Any, *, alone: bool = False) -> Any:
        self.seen.extend(e.tokens[1] for e in encodings)
        self.entered.set()
        self.release.wait(5)
        return self.forward(encodings, alone=alone)

    async def wait_until_busy(self) -> None:
        await asyncio.to_thread(self.entered.wait, 5)


def error_of(response: Any) -> tuple[int, str, str]:
    """(status, type, code) of an error response, checking its shape on the way."""
    body = response.json()
    assert set(body) == {"error"}, body
    shape = {"message", "type", "code"}
    if response.request.url.path.startswith("/v1/"):  # OpenAI's shape has the field at fault
        shape.add("param")
    assert set(body["error"]) == shape, body
    assert body["error"]["message"], body
    return response.status_code, body["error"]["type"], body["error"]["code"]
