"""The micro-batching engine on the real model: order, equality, backpressure, deadlines."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pytest
from tokenizers import Encoding

from app.engine.engine import Batching, EmbeddingEngine, Limits
from app.errors import Overloaded, RequestTimeout
from tests.conftest import HeldForward, slowed

LIMITS = Limits(max_inputs=2048, max_input_chars=100_000)
TEXTS = [
    "A man is playing a guitar.",
    "Short.",
    "A considerably longer sentence that will need quite a bit more padding than the others do.",
    "Cats sleep a lot.",
    "Ein Satz auf Deutsch, mit Umlauten: über, schön.",
    "?!",
]


@pytest.fixture
def fresh(engine: EmbeddingEngine) -> Iterator[Any]:
    """Make an engine around the session's encoder with the given batching; closed after."""
    made: list[EmbeddingEngine] = []

    def make(**batching: Any) -> EmbeddingEngine:
        made.append(EmbeddingEngine(engine.encoder, LIMITS, Batching(**batching)))
        return made[-1]

    yield make
    for e in made:
        e.close()


def test_batched_results_equal_unbatched_and_keep_each_callers_order(
    engine: EmbeddingEngine,
) -> None:
    requests = [[TEXTS[(i + j) % len(TEXTS)] for j in range(1 + i % 4)] for i in range(40)]

    async def run() -> list[Any]:
        return await asyncio.gather(*(engine.embed(r) for r in requests))

    results = asyncio.run(run())
    assert len(results) == len(requests)
    for texts, result in zip(requests, results, strict=True):
        alone = np.vstack([engine.encoder.encode([t]).vectors for t in texts])
        assert result.vectors.shape == alone.shape
        assert np.allclose(result.vectors, alone, atol=1e-5)
        assert result.token_counts == [len(e.ids) for e in engine.encoder.tokenize(texts)]


def test_several_workers_give_the_same_vectors_in_each_callers_order(fresh: Any) -> None:
    workers = fresh(workers=2)
    requests = [[TEXTS[(i + j) % len(TEXTS)] for j in range(1 + i % 5)] for i in range(60)]

    async def run() -> list[Any]:
        return await asyncio.gather(*(workers.embed(r) for r in requests))

    for texts, result in zip(requests, asyncio.run(run()), strict=True):
        alone = np.vstack([workers.encoder.encode([t]).vectors for t in texts])
        assert np.allclose(result.vectors, alone, atol=1e-5)


def test_workers_run_passes_at_once_but_never_more_than_their_number(
    fresh: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    busy, most, rows = 0, 0, 0
    lock = threading.Lock()
    forward = fresh(workers=1).encoder.forward

    def counting(encodings: Sequence[Encoding]) -> Any:
        nonlocal busy, most, rows
        with lock:
            busy += 1
            most = max(most, busy)
            rows += len(encodings)
        time.sleep(0.02)
        with lock:
            busy -= 1
        return forward(encodings)

    for workers in (2, 3):
        busy, most, rows = 0, 0, 0
        engine = fresh(workers=workers, max_batch_rows=2)
        monkeypatch.setattr(engine.encoder, "forward", counting)

        async def run(engine: EmbeddingEngine = engine) -> None:
            await asyncio.gather(*(engine.embed([t]) for t in TEXTS * 6))

        asyncio.run(run())
        assert most == workers and rows == len(TEXTS) * 6  # every row once, no more at once


def test_the_oldest_queued_row_goes_in_the_next_pass(
    fresh: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The planner would put the ten short rows together and the long one alone; the long one
    came first, so its pass runs first, and nothing waits behind newer rows for ever."""
    engine = fresh(workers=1)
    held = HeldForward(engine.encoder.forward)
    passes: list[list[str]] = []

    def recording(encodings: Sequence[Encoding]) -> Any:
        passes.append([e.tokens[1] for e in encodings])
        return held(encodings)

    monkeypatch.setattr(engine.encoder, "forward", recording)
    long = "long " + "and winding sentence " * 20

    async def run() -> None:
        first = asyncio.ensure_future(engine.embed(["first"]))
        await held.wait_until_busy()
        queued = [asyncio.ensure_future(engine.embed([long]))]
        queued += [asyncio.ensure_future(engine.embed([f"short {i}"])) for i in range(10)]
        await asyncio.sleep(0.05)  # all of them queued behind the held pass
        held.release.set()
        await asyncio.gather(first, *queued)

    asyncio.run(run())
    assert passes[0] == ["first"]
    assert passes[1] == ["long"]  # the oldest row, alone: the shorts do not pad to its length
    assert sorted(row for later in passes[2:] for row in later) == ["short"] * 10


def test_concurrent_requests_share_forward_passes(
    engine: EmbeddingEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    passes: list[int] = []
    forward = engine.encoder.forward

    def counting(encodings: Sequence[Encoding]) -> Any:
        passes.append(len(encodings))
        time.sleep(0.01)  # while one pass runs, the others queue up
        return forward(encodings)

    monkeypatch.setattr(engine.encoder, "forward", counting)

    async def run() -> None:
        await asyncio.gather(*(engine.embed([t]) for t in TEXTS * 10))

    asyncio.run(run())
    assert sum(passes) == 60 and len(passes) < 30  # far fewer passes than requests


def test_a_full_queue_refuses_at_once_and_accepted_requests_finish(
    fresh: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    small = fresh(max_queue_tokens=200)
    forward = small.encoder.forward
    monkeypatch.setattr(small.encoder, "forward", slowed(forward, 0.05))
    refused: list[float] = []

    async def one(i: int) -> Any:
        started = time.perf_counter()
        try:
            return await small.embed([f"request number {i}: " + "word " * 10])
        except Overloaded as exc:
            refused.append(time.perf_counter() - started)
            assert int(exc.headers["Retry-After"]) >= 1
            return None

    async def run() -> list[Any]:
        return await asyncio.gather(*(one(i) for i in range(40)))

    results = asyncio.run(run())
    accepted = [r for r in results if r is not None]
    assert refused and accepted and len(refused) + len(accepted) == 40
    assert max(refused) < 0.05  # refused before any forward pass could finish
    for i, result in enumerate(results):
        if result is not None:
            expected = forward(small.encoder.tokenize([f"request number {i}: " + "word " * 10]))
            expected /= np.linalg.norm(expected, axis=1, keepdims=True)
            assert np.allclose(result.vectors, expected, atol=1e-5)


def test_a_passed_deadline_is_a_timeout_and_its_rows_are_dropped(
    fresh: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow = fresh(request_timeout_s=0.2)
    held = HeldForward(slow.encoder.forward)
    monkeypatch.setattr(slow.encoder, "forward", held)

    async def run() -> None:
        first = asyncio.ensure_future(slow.embed(["first"]))
        try:
            await held.wait_until_busy()
            started = time.perf_counter()
            with pytest.raises(RequestTimeout):
                await slow.embed(["late"])
            assert 0.15 < time.perf_counter() - started < 0.5
        finally:
            held.release.set()
        with pytest.raises(RequestTimeout):  # it waited past its deadline too
            await first

    asyncio.run(run())
    time.sleep(0.1)  # let the worker look at the queue once more
    assert held.seen == ["first"]  # the timed-out request never reached the model


def test_a_failing_pass_fails_its_requests_and_the_engine_keeps_serving(
    fresh: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    flaky = fresh()
    forward = flaky.encoder.forward
    calls = iter([True, False])

    def sometimes(encodings: Sequence[Encoding]) -> Any:
        if next(calls, False):
            raise RuntimeError("injected")
        return forward(encodings)

    monkeypatch.setattr(flaky.encoder, "forward", sometimes)

    async def run() -> None:
        with pytest.raises(RuntimeError, match="injected"):
            await flaky.embed(["first"])
        assert (await flaky.embed(["second"])).vectors.shape == (1, 384)

    asyncio.run(run())


def test_max_wait_gathers_requests_that_arrive_a_little_apart(
    fresh: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    patient = fresh(max_wait_s=0.2)
    passes: list[int] = []
    forward = patient.encoder.forward

    def counting(encodings: Sequence[Encoding]) -> Any:
        passes.append(len(encodings))
        return forward(encodings)

    monkeypatch.setattr(patient.encoder, "forward", counting)

    async def staggered() -> None:
        async def later(i: int) -> Any:
            await asyncio.sleep(0.02 * i)
            return await patient.embed([f"sentence {i} of four."])  # equal lengths

        await asyncio.gather(*(later(i) for i in range(4)))

    asyncio.run(staggered())
    assert passes == [4]  # one pass, though they arrived 20 ms apart


def test_a_request_whose_rows_break_the_model_fails_alone(
    fresh: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = fresh()
    held = HeldForward(shared.encoder.forward)
    passes: list[list[str]] = []

    def poisoned(encodings: Sequence[Encoding]) -> Any:
        passes.append([e.tokens[1] for e in encodings])
        if any("poison" in e.tokens for e in encodings):
            raise RuntimeError("injected fault")
        return held(encodings)

    monkeypatch.setattr(shared.encoder, "forward", poisoned)
    requests = [["first"], ["cats sleep", "a lot"], ["poison pill", "harmless"], ["dogs bark"]]

    async def run() -> list[Any]:
        first = asyncio.ensure_future(shared.embed(requests[0]))
        await held.wait_until_busy()  # the rest queue up behind it and share the next pass
        rest = [asyncio.ensure_future(shared.embed(texts)) for texts in requests[1:]]
        await asyncio.sleep(0.05)
        held.release.set()
        return await asyncio.gather(first, *rest, return_exceptions=True)

    results = asyncio.run(run())
    assert len(passes[1]) == 5  # the shared pass that failed, then each request alone
    assert sorted(map(len, passes[2:])) == [1, 2, 2]
    assert isinstance(results[2], RuntimeError)
    monkeypatch.undo()
    for texts, result in zip(requests, results, strict=True):
        if texts is not requests[2]:
            alone = np.vstack([shared.encoder.encode([t]).vectors for t in texts])
            assert np.allclose(result.vectors, alone, atol=1e-5)
