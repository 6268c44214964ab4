"""Starting the real server, ``python -m app``, in its own process on a free loopback port."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.config import Settings

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Server:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def memory_kb(self, field: str = "VmRSS") -> int:
        """A memory figure of the server process from ``/proc``: VmRSS now, VmHWM at peak."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(re.search(rf"{field}:\s+(\d+)", status).group(1))  # type: ignore[union-attr]

    def open_fds(self) -> int:
        return sum(1 for _ in Path(f"/proc/{self.process.pid}/fd").iterdir())

    def access_line(self, request_id: str) -> dict[str, Any]:
        """The server's JSON access-log line for ``request_id`` (written just after the
        response)."""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            for line in self.log.read_text().splitlines():
                if request_id in line and line.startswith("{"):
                    entry: dict[str, Any] = json.loads(line)
                    if entry.get("logger") == "app.access" and entry["request_id"] == request_id:
                        return entry
            time.sleep(0.05)
        pytest.fail(f"no access line for {request_id}: {self.log.read_text()[-2000:]}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start ``python -m app`` with its output going to ``log``."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "app"],
            cwd=ROOT,
            # Parity with PyTorch is checked in fp32: bf16, where a CPU has it, is tested apart.
            env={**os.environ, "PYTHONPATH": str(ROOT), "EMBED_PRECISION": "fp32", **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def wait_ready(url: str, process: subprocess.Popen[bytes], log: Path) -> float:
    """Seconds until ``/health`` says ok; fails if the process dies first."""
    started = time.perf_counter()
    while time.perf_counter() - started < 30:
        if process.poll() is not None:
            pytest.fail(f"server exited with {process.returncode}: {log.read_text()}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return time.perf_counter() - started
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    pytest.fail("server not ready in time")


@contextmanager
def serving(settings: Settings, folder: Path, **env: str) -> Iterator[Server]:
    """A ready server on the test bundle with extra ``EMBED_*`` settings; stopped after, where
    it must exit 0 (a test may have stopped it already)."""
    port = free_port()
    log = folder / "server.log"
    base = {
        "EMBED_PORT": str(port),
        "EMBED_GRPC_PORT": str(free_port()),
        "EMBED_MODEL_DIR": str(settings.model_dir),
    }
    process = start({**base, **env}, log)
    server = Server(f"http://127.0.0.1:{port}", process, log)
    try:
        ready_after = wait_ready(server.url, process, log)
        print(f"server ready {ready_after:.2f} s after start")
        yield server
    finally:
        if process.poll() is None:
            process.terminate()
        assert process.wait(timeout=15) == 0, log.read_text()


@pytest.fixture(scope="module")
def server(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server with default settings, shared by a test module."""
    with serving(settings, tmp_path_factory.mktemp("server")) as running:
        yield running
