"""A bounded soak: 20,000 mixed requests against one real server (``make soak``; not in the
default suite). Resident memory after warm-up must grow by less than 10%, no file descriptor may
leak, and one-sentence latency at the end must match the start (p50 within 20%)."""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from app.config import Settings
from app.core.engine import Engine
from app.core.vectors import encode_now
from tests.e2e.conftest import Server, serving

pytestmark = [pytest.mark.e2e, pytest.mark.soak]
REQUESTS = 20_000
WINDOW = 2_000  # warm-up is the first window; start and end are compared over one window each
CONCURRENCY = 16


@dataclass(frozen=True)
class Sent:
    path: str
    body: dict[str, object]
    expect: int
    single: bool  # one sentence to /embed: the requests whose latency is compared


def mixed_requests(sentences: list[str], count: int, seed: int = 7) -> list[Sent]:
    """One-sentence requests mostly, then batches of 4 and 32, long texts that get truncated,
    similarity calls, and a few bad requests, shuffled the same way every run."""
    rng = random.Random(seed)
    long_text = " ".join(sentences[:40])  # well past the model's 256 tokens
    made = []
    for _ in range(count):
        roll = rng.random()
        if roll < 0.70:
            made.append(Sent("/embed", {"inputs": rng.choice(sentences)}, 200, True))
        elif roll < 0.85:
            made.append(Sent("/embed", {"inputs": rng.sample(sentences, 4)}, 200, False))
        elif roll < 0.90:
            made.append(Sent("/embed", {"inputs": rng.sample(sentences, 32)}, 200, False))
        elif roll < 0.93:
            made.append(Sent("/embed", {"inputs": [long_text, rng.choice(sentences)]}, 200, False))
        elif roll < 0.98:
            body: dict[str, object] = {
                "source": rng.choice(sentences),
                "targets": rng.sample(sentences, 3),
            }
            made.append(Sent("/similarity", body, 200, False))
        else:
            made.append(Sent("/embed", {"inputs": [], "normalize": "yes"}, 422, False))
    return made


async def drive(server: Server, work: list[Sent]) -> list[tuple[float, float]]:
    """Send ``work`` over ``CONCURRENCY`` keep-alive connections; (start, latency) of the
    one-sentence requests, in order. Fails on any unexpected status or a malformed vector."""
    queue: asyncio.Queue[tuple[int, Sent]] = asyncio.Queue()
    for item in enumerate(work):
        queue.put_nowait(item)
    timings: dict[int, tuple[float, float]] = {}
    statuses: Counter[int] = Counter()

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            index, sent = queue.get_nowait()
            started = time.perf_counter()
            response = await client.post(sent.path, json=sent.body)
            elapsed = time.perf_counter() - started
            statuses[response.status_code] += 1
            assert response.status_code == sent.expect, response.text
            if sent.single:
                vector = np.array(response.json()["embeddings"][0])
                assert vector.shape == (384,) and abs(np.linalg.norm(vector) - 1) < 1e-4
                timings[index] = (started, elapsed)

    limits = httpx.Limits(max_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(CONCURRENCY)))
    assert sum(statuses.values()) == len(work)  # nothing lost, nothing answered twice
    return [timings[i] for i in sorted(timings)]


def test_soak(
    settings: Settings, engine: Engine, stsb: list[tuple[float, str, str]], tmp_path: Path
) -> None:
    sentences = sorted({s for _, a, b in stsb for s in (a, b)})
    work = mixed_requests(sentences, REQUESTS)
    with serving(settings, tmp_path) as server:
        warm_up, start, middle, end = (
            work[:WINDOW],
            work[WINDOW : 2 * WINDOW],
            work[2 * WINDOW : -WINDOW],
            work[-WINDOW:],
        )
        asyncio.run(drive(server, warm_up))
        rss_start, fds_start = server.memory_kb(), server.open_fds()
        started = time.perf_counter()
        first = asyncio.run(drive(server, start))
        asyncio.run(drive(server, middle))
        last = asyncio.run(drive(server, end))
        seconds = time.perf_counter() - started
        rss_end, fds_end = server.memory_kb(), server.open_fds()
        peak = server.memory_kb("VmHWM")
        check = httpx.post(f"{server.url}/embed", json={"inputs": sentences[:3]}, timeout=30)
        expected = encode_now(engine.model, sentences[:3])
        assert np.allclose(check.json()["embeddings"], expected, atol=1e-5)

    p50_start = statistics.median(latency for _, latency in first)
    p50_end = statistics.median(latency for _, latency in last)
    growth = rss_end / rss_start - 1
    print(
        f"\nsoak: {REQUESTS} requests ({REQUESTS - WINDOW} after warm-up in {seconds:.0f} s, "
        f"{(REQUESTS - WINDOW) / seconds:.0f} req/s) over {CONCURRENCY} connections\n"
        f"RSS after warm-up {rss_start / 1024:.1f} MB, at the end {rss_end / 1024:.1f} MB "
        f"({growth:+.1%}), peak {peak / 1024:.1f} MB\n"
        f"open fds {fds_start} -> {fds_end}\n"
        f"one-sentence p50 {p50_start * 1000:.1f} ms at the start, {p50_end * 1000:.1f} ms "
        f"at the end ({p50_end / p50_start - 1:+.1%})"
    )
    assert growth < 0.10
    assert fds_end <= fds_start
    assert abs(p50_end / p50_start - 1) <= 0.20
