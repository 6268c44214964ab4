"""The queue and the micro-batching loop: rows from many requests share forward passes.

Worker threads run the model's forward passes, by default one per core, each pass on one core
(``app.core.threads`` says why). Requests put their tokenized rows on a bounded queue and get a
future. A free worker wakes as soon as anything is queued (no fixed sleep: a lone request runs
at once) and moves rows, in arrival order, into a window of at most two full passes' worth that
all workers share. Before every pass it plans the whole window afresh (``plan_batches``: sorted
by length, cut where padding would cost most) and runs the one pass that holds the window's
oldest row. Rows that were left out wait for partners of their own length among the next
arrivals; the oldest row always goes next, so a row waits at most one pass for each older row
in the window. A pass that finds nothing else running or waiting, on any model sharing the
cores, takes every core's permit and runs ``alone`` (the model may spread it over all of them,
docs/threads.md). docs/batching.md has the measurements behind these choices.

Each row's output goes back into its request's own array, so every caller gets its inputs'
rows in its own order, finished (cut, normalised) as the request asked. Requests whose future
is done (deadline passed, client gone) are dropped before inference. A pass that fails is run
again request by request, so that only the request at fault fails.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np

from app.core.model import Floats, Model, Outcome, Row
from app.core.planner import PASS_OVERHEAD_TOKENS, plan_batches
from app.core.vectors import Finish
from app.errors import Overloaded, PayloadTooLarge, ShuttingDown
from app.metrics import BATCH_SIZE, BATCH_TOKENS, INFERENCE_DURATION, QUEUE_DEPTH, QUEUE_WAIT

log = logging.getLogger(__name__)
WINDOW_PASSES = 2  # the planning window holds about this many full passes


@dataclass(eq=False)
class Job:
    """One request's rows on their way through the queue."""

    rows: Sequence[Row]
    lengths: list[int]
    finish: Finish | None  # what the request asked done to its rows once all are there
    keep: Callable[[Floats], Any] | None  # what to keep of each row, as it comes (sparse)
    future: asyncio.Future[Outcome[Any]]
    loop: asyncio.AbstractEventLoop
    outputs: Floats | list[Any]
    enqueued: float = field(default_factory=time.perf_counter)
    queue_s: float = 0.0  # from arrival to the first pass that holds one of its rows
    inference_s: float = 0.0
    started: bool = False  # a pass has held one of its rows
    taken: int = 0  # rows moved into the planning window so far
    running: int = 0  # passes holding its rows that are running now
    done: int = 0  # rows with a vector
    failed: bool = False

    def abandoned(self) -> bool:
        """Cancelled by the caller (deadline, client gone) or failed already: skip its rows."""
        return self.failed or self.future.done()


Settled = tuple[Job, Outcome[Any] | BaseException]


def _settle(outcomes: list[Settled]) -> None:
    """Runs on the event loop: resolve the futures of the jobs a pass finished."""
    for job, result in outcomes:
        if job.future.done():
            continue
        if isinstance(result, BaseException):
            job.future.set_exception(result)
        else:
            job.future.set_result(result)


def _deliver(outcomes: list[Settled]) -> None:
    """Hand outcomes to their event loops, one wake-up per loop rather than one per job."""
    by_loop: dict[asyncio.AbstractEventLoop, list[Settled]] = {}
    for outcome in outcomes:
        by_loop.setdefault(outcome[0].loop, []).append(outcome)
    for loop, batch in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle, batch)
        except RuntimeError:  # that loop has closed: nobody is waiting for these any more
            log.debug("dropped %d results for a closed event loop", len(batch))


class Batcher:
    """The queue in front of one model, and the threads that drain it."""

    def __init__(
        self,
        model: Model,
        *,
        max_batch_tokens: int,
        max_batch_rows: int,
        max_queue_tokens: int,
        max_request_tokens: int | None = None,
        max_retry_after_s: int = 30,
        max_wait_s: float = 0.0,
        workers: int = 1,
        pass_overhead_tokens: int = PASS_OVERHEAD_TOKENS,
        cores: threading.Semaphore | None = None,
    ) -> None:
        self.model = model
        # One permit held for each forward pass. Models served together share one semaphore
        # with a permit per worker, so their passes take turns on the cores instead of running
        # at once and oversubscribing them.
        self._cores = cores or threading.Semaphore(workers)
        self._permits = workers
        self.model_id = model.info.id
        # This model's metric series, looked up once rather than on every request and pass.
        self._queue_depth = QUEUE_DEPTH.labels(self.model_id)
        self._queue_wait = QUEUE_WAIT.labels(self.model_id)
        self._pass_seconds = INFERENCE_DURATION.labels(self.model_id)
        self._pass_rows = BATCH_SIZE.labels(self.model_id)
        self._pass_real_tokens = BATCH_TOKENS.labels(self.model_id, "real")
        self._pass_padded_tokens = BATCH_TOKENS.labels(self.model_id, "padded")
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_rows = max_batch_rows
        self.max_queue_tokens = max_queue_tokens
        self.max_request_tokens = max_request_tokens or max_queue_tokens
        self.max_retry_after_s = max_retry_after_s
        self.max_wait_s = max_wait_s
        self.pass_overhead_tokens = pass_overhead_tokens
        self._jobs: deque[Job] = deque()
        self._window: list[tuple[Job, int]] = []  # rows taken from the queue, arrival order
        self._queued_tokens = 0
        self._queued_rows = 0
        self._throughput = 0.0  # tokens/s of recent passes, for Retry-After
        self._busy = 0  # passes running now
        self._cond = threading.Condition()
        self._stopping = False
        self._workers = [
            threading.Thread(target=self._loop, name=f"batcher-{i}", daemon=True)
            for i in range(workers)
        ]
        for thread in self._workers:
            thread.start()

    def submit(
        self,
        rows: Sequence[Row],
        finish: Finish | None,
        keep: Callable[[Floats], Any] | None = None,
    ) -> asyncio.Future[Outcome[Any]]:
        """Queue one request's rows; ``Overloaded`` at once when the queue is full. The future
        gets the request's ``Outcome``: its rows in one array passed through ``finish``, or, with
        ``keep``, a list of what ``keep`` made of each row as its pass ended."""
        loop = asyncio.get_running_loop()
        lengths = [len(row.ids) for row in rows]
        tokens = sum(lengths)
        if tokens > self.max_request_tokens:
            raise PayloadTooLarge(
                f"this request holds {tokens} tokens after truncation; the limit is "
                f"{self.max_request_tokens} (EMBED_MAX_REQUEST_TOKENS): split it into requests "
                "of fewer tokens"
            )
        width = self.model.info.width
        job = Job(
            rows=rows,
            lengths=lengths,
            finish=finish,
            keep=keep,
            future=loop.create_future(),
            loop=loop,
            outputs=[None] * len(rows) if keep else np.empty((len(rows), width), np.float32),
        )
        with self._cond:
            if self._stopping:
                raise ShuttingDown("the server is shutting down")
            # A request bigger than the whole queue still gets in when the queue is empty.
            if self._queued_tokens and self._queued_tokens + tokens > self.max_queue_tokens:
                raise self._overloaded(tokens)
            self._jobs.append(job)
            self._queued_tokens += tokens
            self._queued_rows += len(rows)
            self._queue_depth.set(self._queued_rows)
            self._cond.notify()
        return job.future

    def stop(self) -> None:
        """Finish what is queued, then end the worker threads."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for thread in self._workers:
            thread.join()

    def _overloaded(self, tokens: int) -> Overloaded:
        # When the queue will have room for this request at the recent rate, within 1 s and
        # EMBED_MAX_RETRY_AFTER_S.
        rate = self._throughput or 1000.0
        excess = self._queued_tokens + tokens - self.max_queue_tokens
        retry_after = min(self.max_retry_after_s, max(1, math.ceil(excess / rate)))
        error = Overloaded(
            f"the queue holds {self._queued_tokens} tokens and this request adds {tokens}; "
            f"the limit is {self.max_queue_tokens} (EMBED_MAX_QUEUE_TOKENS); retry shortly"
        )
        error.headers = {"Retry-After": str(retry_after)}
        return error

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._jobs and not self._window and not self._stopping:
                    self._cond.wait()
                if not self._jobs and not self._window:
                    return
                if self.max_wait_s and not self._window:  # an optional short wait for company
                    self._cond.wait_for(self._full_or_stopping, self.max_wait_s)
                self._fill()
                # Nothing else running or waiting: the pass may take every core.
                alone = not self._busy
                rows = self._next_pass()
                alone = alone and not self._window and not self._jobs
            if rows:
                try:
                    self._run_pass(rows, alone)
                finally:
                    with self._cond:
                        for job in {job for job, _ in rows}:
                            job.running -= 1
                        self._busy -= 1
                        idle = not self._busy and not self._jobs and not self._window
                if idle:  # the last pass of a burst: what it leaves behind can go back now
                    self._release_memory()

    def _release_memory(self) -> None:
        try:
            self.model.release_memory()
        except Exception:  # memory stays held; the next pass is no worse off
            log.exception("%s could not release its memory", self.model_id)

    def _full_or_stopping(self) -> bool:
        return self._queued_tokens >= self.max_batch_tokens or self._stopping

    def _fill(self) -> None:
        """Move queued rows, in arrival order, into the window until it holds about
        ``WINDOW_PASSES`` full passes (rows and tokens); the lock is held. While more than one
        request is waiting, each may hold at most one full pass of the window, so that a large
        request cannot fill it and keep later ones out until it is done."""
        window = self._window = [item for item in self._window if not item[0].abandoned()]
        max_rows = self.max_batch_rows * WINDOW_PASSES
        max_tokens = self.max_batch_tokens * WINDOW_PASSES
        held: dict[Job, list[int]] = {}  # rows and tokens each request holds in the window
        for job, row in window:
            share = held.setdefault(job, [0, 0])
            share[0] += 1
            share[1] += job.lengths[row]
        tokens = sum(share[1] for share in held.values())
        shared = len(held.keys() | set(self._jobs)) > 1
        rows_each = self.max_batch_rows if shared else max_rows
        tokens_each = self.max_batch_tokens if shared else max_tokens
        for job in list(self._jobs):
            if len(window) >= max_rows or tokens >= max_tokens:
                break
            share = held.setdefault(job, [0, 0])
            lengths = job.lengths
            abandoned = job.abandoned()
            while (
                job.taken < len(lengths)
                and len(window) < max_rows
                and tokens < max_tokens
                and share[0] < rows_each
                and share[1] < tokens_each
            ):
                length = lengths[job.taken]
                if not abandoned:
                    window.append((job, job.taken))
                    tokens += length
                    share[0] += 1
                    share[1] += length
                self._queued_tokens -= length
                self._queued_rows -= 1
                job.taken += 1
            if job.taken == len(lengths):
                self._jobs.remove(job)
        self._queue_depth.set(self._queued_rows)

    def _next_pass(self) -> list[tuple[Job, int]]:
        """Plan the whole window and take out the pass that holds its oldest row (none if the
        window is empty); the lock is held. A request already running on ``max(1, workers -
        1)`` passes yields: the oldest pass that holds a row of another request goes first, so
        that one request never holds every worker while others wait."""
        window = self._window
        if not window:
            return []
        lengths = [job.lengths[row] for job, row in window]
        plan = plan_batches(
            lengths,
            max_tokens=self.max_batch_tokens,
            max_rows=self.max_batch_rows,
            overhead=self.pass_overhead_tokens,
        )
        cap = max(1, len(self._workers) - 1)
        by_age = sorted(plan, key=min)
        chosen = next(
            (
                indices
                for indices in by_age
                if any(window[index][0].running < cap for index in indices)
            ),
            by_age[0],
        )
        taken = set(chosen)
        self._window = [item for index, item in enumerate(window) if index not in taken]
        rows = [window[index] for index in chosen]
        for job in {job for job, _ in rows}:
            job.running += 1
        self._busy += 1
        return rows

    def _run_pass(self, rows: list[tuple[Job, int]], alone: bool = False) -> None:
        inputs = [job.rows[row] for job, row in rows]
        now = time.perf_counter()
        for job, _ in rows:
            if not job.started:
                job.started = True
                job.queue_s = now - job.enqueued
                self._queue_wait.observe(job.queue_s)
        held = self._take_cores(alone)
        try:
            try:
                started = time.perf_counter()
                outputs = self.model.run(inputs, alone=held > 1)
                elapsed = time.perf_counter() - started
            finally:
                for _ in range(held):
                    self._cores.release()
            if outputs.shape != (len(inputs), self.model.info.width):
                raise RuntimeError(
                    f"{self.model_id} returned {outputs.shape} for {len(inputs)} rows; "
                    f"expected ({len(inputs)}, {self.model.info.width})"
                )
        except Exception as exc:  # one bad pass must not end the worker
            self._retry_alone(rows, exc)
            return
        lengths = [job.lengths[row] for job, row in rows]
        real = sum(lengths)
        padded = len(lengths) * max(lengths)
        # tokens/s of the whole batcher, for Retry-After: every worker runs passes like this one
        rate = len(self._workers) * real / max(elapsed, 1e-6)
        self._throughput = 0.8 * self._throughput + 0.2 * rate
        self._pass_seconds.observe(elapsed)
        self._pass_rows.observe(len(rows))
        self._pass_real_tokens.observe(real)
        self._pass_padded_tokens.observe(padded)
        for job in {job for job, _ in rows}:
            job.inference_s += elapsed
        finished: list[Settled] = []
        for (job, row), output in zip(rows, outputs, strict=True):
            job.outputs[row] = job.keep(output) if job.keep else output
            job.done += 1
            if job.done == len(job.lengths):
                kept = job.outputs
                values = job.finish(cast(Floats, kept)) if job.finish else kept
                outcome = Outcome(self.model_id, values, job.lengths, job.queue_s, job.inference_s)
                finished.append((job, outcome))
        _deliver(finished)

    def _take_cores(self, alone: bool) -> int:
        """The permits a pass holds: every one when it runs alone and none is taken (no pass of
        this model or of another that shares the cores is running), else one."""
        if alone and self._permits > 1:
            taken = 0
            while taken < self._permits and self._cores.acquire(blocking=False):
                taken += 1
            if taken == self._permits:
                return taken
            for _ in range(taken):
                self._cores.release()
        self._cores.acquire()
        return 1

    def _retry_alone(self, rows: list[tuple[Job, int]], exc: Exception) -> None:
        """A pass failed: run each request's rows again on their own, so that one request's bad
        rows fail only that request and the others sharing the pass still get their vectors."""
        by_job: dict[Job, list[tuple[Job, int]]] = {}
        for job, row in rows:
            by_job.setdefault(job, []).append((job, row))
        if len(by_job) > 1:
            log.warning(
                "forward pass of %d rows from %d requests failed (%r); retrying each alone",
                len(rows),
                len(by_job),
                exc,
            )
            for own_rows in by_job.values():
                self._run_pass(own_rows)
            return
        (job,) = by_job
        log.error("forward pass of %d rows failed", len(rows), exc_info=exc)
        job.failed = True
        _deliver([(job, exc)])
