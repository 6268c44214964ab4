"""The batcher and the engine's request lifecycle, on a model that costs nothing: order,
sharing passes, worker limits, the oldest row first, backpressure, deadlines, departed clients,
a failing pass that spares the other requests."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pytest

from app.core.engine import Batching, Engine, Limits
from app.core.model import Floats, Row
from app.errors import Overloaded, PayloadTooLarge, RequestTimeout, ShuttingDown
from tests.fakes import FakeModel

TEXTS = [
    "a man is playing a guitar",
    "short",
    "a considerably longer sentence that needs more padding than the others do",
    "cats sleep a lot",
    "ein Satz auf Deutsch mit Umlauten über schön",
    "?!",
]


@pytest.fixture
def make() -> Iterator[Any]:
    """Make an engine on a fresh fake model with the given batching; closed after the test."""
    made: list[Engine] = []

    def engine(**batching: Any) -> Engine:
        made.append(Engine(FakeModel(), Limits(), Batching(**batching)))
        return made[-1]

    yield engine
    for e in made:
        fake(e).release.set()
        e.close()


def fake(engine: Engine) -> FakeModel:
    assert isinstance(engine.model, FakeModel)
    return engine.model


def test_batched_results_equal_unbatched_and_keep_each_callers_order(make: Any) -> None:
    engine = make(workers=2)
    requests = [[TEXTS[(i + j) % len(TEXTS)] for j in range(1 + i % 4)] for i in range(40)]

    async def run() -> list[Any]:
        return await asyncio.gather(*(engine.embed(r) for r in requests))

    results = asyncio.run(run())
    for texts, result in zip(requests, results, strict=True):
        assert np.allclose(result.values, fake(engine).expected(texts), atol=1e-6)
        assert result.token_counts == [len(t.split()) + 2 for t in texts]
        assert result.model == "fake" and result.inference_s > 0
    assert len(fake(engine).passes) < len(requests)  # requests shared passes


def test_workers_run_passes_at_once_but_never_more_than_their_number(make: Any) -> None:
    for workers in (2, 3):
        engine = make(workers=workers, max_batch_rows=2)
        busy, most, rows = 0, 0, 0
        lock = threading.Lock()
        run_pass = engine.model.run

        def counting(
            batch: Sequence[Row],
            *,
            alone: bool = False,
            run_pass: Any = run_pass,
            lock: threading.Lock = lock,
            workers: int = workers,
        ) -> Floats:
            nonlocal busy, most, rows
            cores = workers if alone else 1  # a lone pass takes every core
            with lock:
                busy += cores
                most = max(most, busy)
                rows += len(batch)
            time.sleep(0.02)
            with lock:
                busy -= cores
            result: Floats = run_pass(batch)
            return result

        engine.model.run = counting

        async def run(engine: Engine = engine) -> None:
            await asyncio.gather(*(engine.embed([t]) for t in TEXTS * 6))

        asyncio.run(run())
        assert most == workers and rows == len(TEXTS) * 6  # every row once, no more at once


def test_the_oldest_queued_row_goes_in_the_next_pass(make: Any) -> None:
    """The planner would put the ten short rows together and the long one alone; the long one
    came first, so its pass runs first, and nothing waits behind newer rows for ever."""
    engine = make(workers=1)
    model = fake(engine)
    model.hold()
    long = "long " + "and winding sentence " * 8

    async def run() -> None:
        first = asyncio.ensure_future(engine.embed(["first"]))
        await model.wait_until_busy()
        queued = [asyncio.ensure_future(engine.embed([long]))]
        queued += [asyncio.ensure_future(engine.embed([f"short {i}"])) for i in range(10)]
        await asyncio.sleep(0.05)  # all of them queued behind the held pass
        model.release.set()
        await asyncio.gather(first, *queued)

    asyncio.run(run())
    assert model.passes[0] == ["first"]
    assert model.passes[1] == ["long"]  # the oldest row, alone: the shorts do not pad to it
    assert sorted(row for later in model.passes[2:] for row in later) == ["short"] * 10


def test_a_full_queue_refuses_at_once_and_accepted_requests_finish(make: Any) -> None:
    engine = make(max_queue_tokens=256)
    model = fake(engine)
    model.hold()
    texts = [f"request number {i} " + "word " * 10 for i in range(40)]  # 15 tokens each

    async def one(text: str) -> Any:
        try:
            return await engine.embed([text])
        except Overloaded as exc:
            assert int(exc.headers["Retry-After"]) >= 1
            assert "EMBED_MAX_QUEUE_TOKENS" in exc.message
            return None

    async def run() -> list[Any]:
        tasks = [asyncio.ensure_future(one(text)) for text in texts]
        await model.wait_until_busy()
        await asyncio.sleep(0.05)
        refused = [task for task in tasks if task.done()]
        assert refused  # answered while the model was still held: refused at once
        model.release.set()
        return await asyncio.gather(*tasks)

    results = asyncio.run(run())
    accepted = [(t, r) for t, r in zip(texts, results, strict=True) if r is not None]
    assert 0 < len(accepted) < len(texts)
    assert sum(15 for _ in accepted) <= 256 + 15  # what fitted, and the one in the held pass
    for text, result in accepted:
        assert np.allclose(result.values, model.expected([text]), atol=1e-6)


def test_a_passed_deadline_is_a_timeout_and_its_rows_are_dropped(make: Any) -> None:
    engine = make(request_timeout_s=0.2)
    model = fake(engine)
    model.hold()

    async def run() -> None:
        first = asyncio.ensure_future(engine.embed(["first"]))
        try:
            await model.wait_until_busy()
            started = time.perf_counter()
            with pytest.raises(RequestTimeout, match="EMBED_REQUEST_TIMEOUT_S"):
                await engine.embed(["late"])
            assert time.perf_counter() - started >= 0.15  # not before its deadline
        finally:
            model.release.set()
        with pytest.raises(RequestTimeout):  # it waited past its deadline too
            await first

    asyncio.run(run())
    engine.close()  # finishes whatever is queued
    assert model.passes == [["first"]]  # the timed-out request never reached the model


def test_a_client_that_leaves_takes_its_rows_out_of_the_queue(make: Any) -> None:
    engine = make()
    model = fake(engine)
    model.hold()

    async def run() -> Any:
        first = asyncio.ensure_future(engine.embed(["first"]))
        await model.wait_until_busy()
        gone = asyncio.ensure_future(engine.embed(["gone"]))
        stays = asyncio.ensure_future(engine.embed(["stays"]))
        await asyncio.sleep(0.01)
        gone.cancel()  # what the server does when the client disconnects
        model.release.set()
        return await asyncio.gather(first, stays)

    _, stays = asyncio.run(run())
    assert stays.values.shape == (1, 8)
    assert "gone" not in [word for rows in model.passes for word in rows]


def test_a_failing_pass_fails_its_requests_and_the_engine_keeps_serving(make: Any) -> None:
    engine = make()

    async def run() -> None:
        with pytest.raises(RuntimeError, match="injected"):
            await engine.embed(["poison"])
        assert (await engine.embed(["second"])).values.shape == (1, 8)

    asyncio.run(run())


def test_a_request_whose_rows_break_the_model_fails_alone(make: Any) -> None:
    engine = make()
    model = fake(engine)
    model.hold()
    requests = [["first"], ["cats sleep", "a lot"], ["poison pill", "harmless"], ["dogs bark"]]

    async def run() -> list[Any]:
        first = asyncio.ensure_future(engine.embed(requests[0]))
        await model.wait_until_busy()  # the rest queue up behind it and share the next pass
        rest = [asyncio.ensure_future(engine.embed(texts)) for texts in requests[1:]]
        await asyncio.sleep(0.05)
        model.release.set()
        return await asyncio.gather(first, *rest, return_exceptions=True)

    results = asyncio.run(run())
    assert len(model.passes[1]) == 5  # the shared pass that failed, then each request alone
    assert sorted(map(len, model.passes[2:])) == [1, 2, 2]
    assert isinstance(results[2], RuntimeError)
    for texts, result in zip(requests, results, strict=True):
        if texts is not requests[2]:
            assert np.allclose(result.values, model.expected(texts), atol=1e-6)


def test_a_model_that_answers_the_wrong_shape_fails_the_request_not_the_worker(
    make: Any,
) -> None:
    engine = make(workers=1)
    run_pass = engine.model.run
    engine.model.run = lambda rows, alone=False: run_pass(rows)[:, :3]

    async def run() -> None:
        with pytest.raises(RuntimeError, match="expected"):
            await engine.embed(["a cat"])
        engine.model.run = run_pass
        assert (await engine.embed(["a dog"])).values.shape == (1, 8)

    asyncio.run(run())


def test_max_wait_gathers_requests_that_arrive_a_little_apart(make: Any) -> None:
    engine = make(max_wait_s=0.5)

    async def staggered() -> None:
        async def later(i: int) -> Any:
            await asyncio.sleep(0.02 * i)
            return await engine.embed([f"sentence {i} of four"])  # equal lengths

        await asyncio.gather(*(later(i) for i in range(4)))

    asyncio.run(staggered())
    assert list(map(len, fake(engine).passes)) == [4]  # one pass, though they came apart


def test_closing_finishes_the_queue_and_then_refuses(make: Any) -> None:
    engine = make()
    model = fake(engine)
    model.delay = 0.02

    async def run() -> list[Any]:
        tasks = [asyncio.ensure_future(engine.embed([t])) for t in TEXTS]
        await asyncio.sleep(0)
        await asyncio.to_thread(engine.close)
        with pytest.raises(ShuttingDown):
            await engine.embed(["too late"])
        return await asyncio.gather(*tasks)

    results = asyncio.run(run())
    assert [r.values.shape for r in results] == [(1, 8)] * len(TEXTS)


def test_a_large_request_leaves_a_worker_and_a_place_in_the_window_to_others(make: Any) -> None:
    """Forty rows in passes of two take ten rounds of both workers; a one-row request that
    arrives meanwhile waits for one pass at most, not for the large request to finish."""
    engine = make(workers=2, max_batch_rows=2)
    model = fake(engine)
    model.delay = 0.05

    async def run() -> tuple[float, bool]:
        large = asyncio.ensure_future(engine.embed([f"large {i}" for i in range(40)]))
        await asyncio.sleep(0.12)
        started = time.perf_counter()
        await engine.embed(["small"])
        waited = time.perf_counter() - started
        running = not large.done()
        await large
        return waited, running

    waited, large_still_running = asyncio.run(run())
    assert large_still_running
    assert waited < 3 * model.delay, waited  # at most one pass of the large one, then its own
    alone = [p for p in model.passes if "small" in p]
    assert alone and len(model.passes) >= 20


def test_a_request_over_the_token_limit_is_refused_at_once(make: Any) -> None:
    engine = make(max_request_tokens=20)
    texts = ["one two three four five six seven eight"] * 3  # 10 tokens each

    with pytest.raises(PayloadTooLarge) as refused:
        asyncio.run(engine.embed(texts))
    assert refused.value.message.startswith("this request holds 30 tokens after truncation")
    assert "the limit is 20 (EMBED_MAX_REQUEST_TOKENS)" in refused.value.message
    assert not fake(engine).passes
    assert len(asyncio.run(engine.embed(texts[:2])).values) == 2


def test_retry_after_never_says_more_than_its_limit(make: Any) -> None:
    engine = make(max_queue_tokens=40, max_retry_after_s=3)
    model = fake(engine)
    model.hold()
    engine._batcher._throughput = 0.5  # tokens/s: an honest estimate would be minutes

    async def run() -> Overloaded:
        first = asyncio.ensure_future(engine.embed(["held " * 10]))
        await model.wait_until_busy()
        queued = asyncio.ensure_future(engine.embed(["queued " * 30]))
        await asyncio.sleep(0.01)
        try:
            await engine.embed(["refused " * 30])
        except Overloaded as exc:
            model.release.set()
            await asyncio.gather(first, queued)
            return exc
        raise AssertionError("not refused")

    assert asyncio.run(run()).headers["Retry-After"] == "3"


def test_the_model_is_asked_to_release_memory_when_the_batcher_goes_idle(make: Any) -> None:
    engine = make(workers=2, max_batch_rows=2)
    model = fake(engine)
    model.delay = 0.01  # passes outlast the requests' arrival, so the queue empties only once

    async def run() -> None:
        await asyncio.gather(*(engine.embed([t]) for t in TEXTS * 4))

    asyncio.run(run())
    deadline = time.monotonic() + 2
    while not model.releases and time.monotonic() < deadline:
        time.sleep(0.01)
    assert 1 <= model.releases < len(model.passes)  # when idle, not after every pass
