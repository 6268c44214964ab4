"""Graceful shutdown of the real server under load: SIGTERM turns ``/health`` to 503 at once,
new connections are refused, every request that reached the server before the signal gets its
complete 200, and the process exits 0."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import httpx
import pytest

from app.config import Settings
from tests.e2e.conftest import serving

pytestmark = pytest.mark.e2e
CLIENTS = 24
MARGIN_S = 0.02  # a request sent this long before the signal has surely reached the server


def test_sigterm_under_load_finishes_what_arrived_and_exits_0(
    settings: Settings, tmp_path: Path
) -> None:
    texts = [f"shutdown test sentence {i} with a few more words in it" for i in range(8)]
    with serving(settings, tmp_path, EMBED_SHUTDOWN_GRACE_S="20") as server:
        results: list[tuple[float, int | str]] = []  # (sent at, status or error)
        signalled = asyncio.Event()

        async def client_loop(client: httpx.AsyncClient) -> None:
            while not signalled.is_set():
                sent = time.perf_counter()
                try:
                    response = await client.post("/embed", json={"inputs": texts})
                    ok = response.status_code == 200 and len(response.json()["embeddings"]) == 8
                    results.append((sent, response.status_code if ok else "incomplete"))
                except httpx.TransportError as exc:
                    results.append((sent, type(exc).__name__))

        async def run() -> tuple[float, int | str, bool]:
            limits = httpx.Limits(max_connections=CLIENTS + 1)
            async with httpx.AsyncClient(base_url=server.url, timeout=30, limits=limits) as client:
                assert (await client.get("/health")).status_code == 200  # a kept-alive probe
                loops = [asyncio.ensure_future(client_loop(client)) for _ in range(CLIENTS)]
                # Under load long enough to mean something: 60 answers, however slow the
                # machine (a fixed sleep made this a speed test on a busy one).
                deadline = time.perf_counter() + 60
                while len(results) < 60 and time.perf_counter() < deadline:
                    await asyncio.sleep(0.05)
                signal_at = time.perf_counter()
                server.process.send_signal(signal.SIGTERM)
                try:
                    probe: int | str = (await client.get("/health")).status_code
                except httpx.TransportError as exc:
                    probe = type(exc).__name__
                signalled.set()
                await asyncio.sleep(0.5)
                try:
                    httpx.get(f"{server.url}/health/live", timeout=2)
                    refused = False
                except httpx.ConnectError:
                    refused = True
                await asyncio.gather(*loops)
                return signal_at, probe, refused

        signal_at, probe, refused = asyncio.run(run())
        assert server.process.wait(timeout=30) == 0

    before = [outcome for sent, outcome in results if sent < signal_at - MARGIN_S]
    after = [outcome for sent, outcome in results if sent >= signal_at - MARGIN_S]
    print(f"\n{len(before)} requests before the signal, {len(after)} around or after it: {after}")
    print(f"/health right after the signal: {probe}")
    assert len(before) > 50
    assert before == [200] * len(before)  # every one complete
    assert probe != 200  # 503 shutting_down, or the connection already closed
    assert refused  # new connections are refused
    assert "500" not in str(after)
