"""Fair and honest admission on the real server: a request past the token limit is refused at
once, the largest allowed request finishes while one-sentence requests keep flowing, and memory
under the worst requests the limits allow stays under the documented peak and comes back down."""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.config import Settings
from tests.e2e.conftest import Server, serving

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
SPLADE = ROOT / "models" / "splade-tiny"
LIMITS = Settings(_env_file=None)  # type: ignore[call-arg]
PEAK_MB = 740
"""The documented peak resident memory of the default models under the worst requests
(docs/limits.md); deploy/k8s sets the memory limit to at least 1.25 times it. 700 until the
gRPC server joined the process (measured here 688 MiB with it off, 699 to 709 with it on)."""


def passage(i: int) -> str:
    """A text of well over the model's 256 tokens, different for each ``i``."""
    return f"passage {i}: " + " ".join(f"word{(i * 7 + j) % 97} and more" for j in range(150))


@pytest.fixture(scope="module")
def both(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """What ``make run`` serves: the dense model and the sparse one."""
    models = f"{settings.model_dir},{SPLADE}"
    with serving(settings, tmp_path_factory.mktemp("both"), EMBED_MODELS=models) as running:
        yield running


def small_requests(server: Server, stop: threading.Event, latencies: list[float]) -> None:
    """One-sentence requests, one after another, until ``stop``."""
    with httpx.Client(base_url=server.url, timeout=30) as client:
        i = 0
        while not stop.is_set():
            started = time.perf_counter()
            response = client.post("/embed", json={"inputs": f"a short sentence, number {i}"})
            assert response.status_code == 200, response.text
            latencies.append(time.perf_counter() - started)
            i += 1


def test_a_request_past_the_token_limit_is_refused_at_once(both: Server) -> None:
    stop, latencies = threading.Event(), list[float]()
    flowing = threading.Thread(target=small_requests, args=(both, stop, latencies))
    flowing.start()
    try:
        for _ in range(2):
            response = httpx.post(
                f"{both.url}/embed",
                json={"inputs": ["!" * 2000] * 2048},
                headers={"x-request-id": "huge"},
                timeout=60,
            )
            assert response.status_code == 413, response.text
            message = response.json()["error"]["message"]
            limit = LIMITS.max_request_tokens
            assert f"holds more than {limit} tokens after truncation" in message
            assert "(EMBED_MAX_REQUEST_TOKENS)" in message
            # Refused after tokenizing the first of its inputs, with no wait in the queue.
            assert both.access_line("huge")["total_ms"] < 1000
    finally:
        stop.set()
        flowing.join()
    assert latencies and max(latencies) < 2.0


def test_the_largest_allowed_request_finishes_while_small_ones_keep_their_p99(
    both: Server,
) -> None:
    count = LIMITS.max_request_tokens // 256  # each passage truncated to 256 tokens
    stop, latencies = threading.Event(), list[float]()
    flowing = threading.Thread(target=small_requests, args=(both, stop, latencies))
    flowing.start()
    try:
        time.sleep(0.5)
        started = time.perf_counter()
        response = httpx.post(
            f"{both.url}/embed", json={"inputs": [passage(i) for i in range(count)]}, timeout=60
        )
        took = time.perf_counter() - started
    finally:
        stop.set()
        flowing.join()
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["prompt_tokens"] == LIMITS.max_request_tokens
    p99 = statistics.quantiles(latencies, n=100)[98]
    print(f"largest request ({count} x 256 tokens): {took:.1f} s; meanwhile {len(latencies)} ")
    print(f"one-sentence requests, p50 {statistics.median(latencies) * 1000:.0f} ms, ")
    print(f"p99 {p99 * 1000:.0f} ms")
    assert took < LIMITS.request_timeout_s / 2
    assert p99 < 1.0


def test_memory_under_the_worst_allowed_requests_stays_under_the_peak_and_comes_back(
    both: Server,
) -> None:
    """Every worker busy on long inputs of both models at once, several times over; then idle."""
    baseline = both.memory_kb() / 1024

    async def burst() -> None:
        async with httpx.AsyncClient(base_url=both.url, timeout=120) as client:
            count = LIMITS.max_request_tokens // 256
            dense = [passage(i) for i in range(count)]
            sparse = [passage(i) for i in range(count // 2)]

            async def send(path: str, texts: list[str]) -> None:
                model = "splade-tiny" if "sparse" in path else None
                response = await client.post(path, json={"inputs": texts, "model": model})
                assert response.status_code == 200, response.text

            for _ in range(2):
                await asyncio.gather(
                    send("/embed", dense), send("/embed", dense), send("/embed_sparse", sparse)
                )

    asyncio.run(burst())
    peak = both.memory_kb("VmHWM") / 1024
    time.sleep(10)
    after = both.memory_kb() / 1024
    print(f"resident memory: baseline {baseline:.0f} MB, peak {peak:.0f} MB, ", end="")
    print(f"10 s after {after:.0f} MB")
    assert peak <= PEAK_MB
    assert after <= baseline + (peak - baseline) / 4
