"""The engine the API talks to: checks inputs, tokenizes, and queues rows for the batcher.

It knows nothing of HTTP. Bad input is refused here with a ``ServiceError`` before it can reach
the model. Small requests are tokenized in place (a few microseconds; a thread hop would cost
more), large ones in a tokenizer thread; inference runs on the batcher's worker threads, so the
event loop keeps accepting connections and answering ``/health`` while passes run.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import NamedTuple

import onnxruntime as ort
from tokenizers import Encoding

from app.config import Settings
from app.engine.batcher import Batcher
from app.engine.batches import CPU_OVERHEAD_TOKENS_PER_THREAD, PASS_OVERHEAD_TOKENS
from app.engine.bundle import load_bundle
from app.engine.encoder import CUDA, Embedded, Encoder, TokenIds, Tokenized
from app.engine.pooling import Floats, cosine
from app.errors import InputTooLong, InvalidText, InvalidTokenId, PayloadTooLarge, RequestTimeout
from app.metrics import INPUTS, TOKENS

WARMUP_TEXTS = ["warm-up", "a slightly longer warm-up sentence for the second row"]
INLINE_TOKENIZE_CHARS = 4096  # tokenizing this much takes well under a millisecond


@dataclass(frozen=True, slots=True)
class Limits:
    """How much one request may ask for."""

    max_inputs: int
    max_input_chars: int


@dataclass(frozen=True, slots=True)
class Batching:
    """How rows are grouped into forward passes, and how long they may wait."""

    max_batch_tokens: int = 8192
    max_batch_rows: int = 64
    max_queue_tokens: int = 65536
    max_wait_s: float = 0.0
    request_timeout_s: float = 30.0
    workers: int = 1  # forward passes run at once
    pass_overhead_tokens: int = PASS_OVERHEAD_TOKENS  # a pass's fixed cost, for the planner


def available_cores() -> int:
    """The CPUs this process may use: its affinity mask, capped by a cgroup v2 CPU quota (a
    container's CPU limit, which ``os.cpu_count()`` does not see)."""
    count = len(os.sched_getaffinity(0))
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            count = min(count, max(1, int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    return count


class ThreadPlan(NamedTuple):
    workers: int  # forward passes run at once
    intra_op_threads: int  # onnxruntime threads inside each pass
    pass_overhead_tokens: int  # a pass's fixed cost in tokens, which the batch planner weighs


def thread_plan(settings: Settings) -> ThreadPlan:
    """How many forward passes run at once, on how many onnxruntime threads each, and what a
    pass costs beyond its tokens.

    On the CPU the default is one worker per core, each pass on one thread. Two onnxruntime
    threads in one pass work in lockstep: whenever the event loop takes a core, the other
    thread finishes its share of the op and waits. Measured here with a stand-in for the event
    loop taking 6.5% of the two cores, one pass on two threads lost 14-16% of its speed, two
    passes on one thread each lost 7-9%, and were 10% faster with no load at all (one shared
    session, so the weights are in memory once). A lone sentence takes about 1 ms longer on one
    thread (4.4 vs 3.4 ms). On CUDA one worker feeds the GPU.
    """
    cores = available_cores()
    on_gpu = settings.device != "cpu" and CUDA in ort.get_available_providers()
    workers = settings.inference_workers or (1 if on_gpu else cores)
    intra = settings.intra_op_threads or max(1, cores // workers)
    measured = PASS_OVERHEAD_TOKENS if on_gpu else CPU_OVERHEAD_TOKENS_PER_THREAD * intra
    overhead = settings.pass_overhead_tokens or measured
    return ThreadPlan(workers, intra, overhead)


def check_count(count: int, limits: Limits) -> None:
    """Refuse a request with more inputs than ``EMBED_MAX_INPUTS``."""
    if count > limits.max_inputs:
        raise PayloadTooLarge(
            f"{count} inputs in one request; the limit is {limits.max_inputs} (EMBED_MAX_INPUTS)"
        )


def check_texts(texts: Sequence[str], limits: Limits) -> None:
    """Refuse what must not reach the model: too many inputs, too long, not encodable."""
    check_count(len(texts), limits)
    for index, text in enumerate(texts):
        if len(text) > limits.max_input_chars:
            raise PayloadTooLarge(
                f"input {index} has {len(text)} characters; the limit is "
                f"{limits.max_input_chars} (EMBED_MAX_INPUT_CHARS)"
            )
        if not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise InvalidText(
                    f"input {index} is not valid Unicode text: {exc.reason} at position {exc.start}"
                ) from None


class EmbeddingEngine:
    """Embeds texts with one model; every public method is a coroutine safe to await anywhere."""

    def __init__(
        self,
        encoder: Encoder,
        limits: Limits,
        batching: Batching | None = None,
        *,
        cores: threading.Semaphore | None = None,
    ) -> None:
        self.encoder = encoder
        self.limits = limits
        self.batching = batching or Batching()
        self.model_id = encoder.bundle.id
        self.dimension = encoder.bundle.dimension
        self._inputs_total = INPUTS.labels(self.model_id)  # looked up once, counted per request
        self._tokens_total = TOKENS.labels(self.model_id)
        self._tokenizer_thread = ThreadPoolExecutor(1, thread_name_prefix="tokenizer")
        self._batcher = Batcher(
            encoder,
            max_batch_tokens=self.batching.max_batch_tokens,
            max_batch_rows=self.batching.max_batch_rows,
            max_queue_tokens=self.batching.max_queue_tokens,
            max_wait_s=self.batching.max_wait_s,
            workers=self.batching.workers,
            pass_overhead_tokens=self.batching.pass_overhead_tokens,
            cores=cores,
        )

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        path: Path | None = None,
        *,
        cores: threading.Semaphore | None = None,
    ) -> EmbeddingEngine:
        """Load the bundle in ``path`` (``EMBED_MODEL_DIR`` if none) with the settings' limits;
        ``StartupError`` says what is wrong. Engines given one ``cores`` semaphore take turns."""
        bundle = load_bundle(path or settings.model_dir)
        plan = thread_plan(settings)
        encoder = Encoder.load(
            bundle,
            device=settings.device,
            intra_op_threads=plan.intra_op_threads,
            inter_op_threads=settings.inter_op_threads,
        )
        limits = Limits(max_inputs=settings.max_inputs, max_input_chars=settings.max_input_chars)
        batching = Batching(
            max_batch_tokens=settings.max_batch_tokens,
            max_batch_rows=settings.max_batch_rows,
            max_queue_tokens=settings.max_queue_tokens,
            max_wait_s=settings.max_wait_ms / 1000,
            request_timeout_s=settings.request_timeout_s,
            workers=plan.workers,
            pass_overhead_tokens=plan.pass_overhead_tokens,
        )
        return cls(encoder, limits, batching, cores=cores)

    def warm_up(self) -> None:
        """Run the model once so that the first request does not pay for lazy initialisation."""
        self.encoder.encode(WARMUP_TEXTS)

    async def embed(
        self, texts: Sequence[str], *, normalize: bool = True, truncate: bool = True
    ) -> Embedded:
        """Vectors for ``texts`` in input order, and the tokens each one fed the model.

        Raises ``Overloaded`` at once when the queue is full, and ``RequestTimeout`` when the
        answer is not there within ``request_timeout_s``; either way the rows are dropped.
        """
        started = time.perf_counter()
        check_texts(texts, self.limits)
        encodings = await self._tokenize(texts, partial(self.encoder.tokenize, truncate=truncate))
        return await self._run(encodings, normalize, started)

    async def embed_ids(self, rows: Sequence[Sequence[int]], *, normalize: bool = True) -> Embedded:
        """Vectors for inputs given as the model's own token ids, taken verbatim (no special
        tokens added); an id outside the vocabulary or a row over the model's limit is a 422."""
        started = time.perf_counter()
        check_count(len(rows), self.limits)
        vocab, limit = self.encoder.vocab_size, self.encoder.bundle.max_seq_length
        for index, ids in enumerate(rows):
            if len(ids) > limit:
                raise InputTooLong(
                    f"input {index} has {len(ids)} token ids, more than the model's limit of "
                    f"{limit}; token ids are taken verbatim, so shorten them"
                )
            bad = next((i for i in ids if not 0 <= i < vocab), None)
            if bad is not None:
                raise InvalidTokenId(
                    f"input {index} holds token id {bad}, outside the vocabulary of "
                    f"{self.model_id} (0 to {vocab - 1})"
                )
        return await self._run([TokenIds(list(ids)) for ids in rows], normalize, started)

    async def tokenize(self, texts: Sequence[str]) -> list[Encoding]:
        """Each text's whole tokenization, nothing cut off (``len(ids)`` over the model's
        ``max_seq_length`` means an embedding would truncate it)."""
        check_texts(texts, self.limits)
        return await self._tokenize(texts, self.encoder.tokenize_whole)

    async def _run(
        self, encodings: Sequence[Tokenized], normalize: bool, started: float
    ) -> Embedded:
        future = self._batcher.submit(encodings, normalize)
        remaining = self.batching.request_timeout_s - (time.perf_counter() - started)
        # A timer on the future itself rather than asyncio.wait_for, which costs a task step and
        # two futures per request on the hot path. A future that times out is done, so the
        # batcher drops its rows before inference.
        timer = asyncio.get_running_loop().call_later(max(remaining, 0.0), self._expire, future)
        try:
            result = await future
        finally:
            timer.cancel()
        self._inputs_total.inc(len(encodings))
        self._tokens_total.inc(sum(result.token_counts))
        return result

    def _expire(self, future: asyncio.Future[Embedded]) -> None:
        if not future.done():
            future.set_exception(
                RequestTimeout(
                    f"no answer within {self.batching.request_timeout_s:g} s "
                    "(EMBED_REQUEST_TIMEOUT_S); the server is busy, retry later"
                )
            )

    async def similarity(
        self, source: str, targets: Sequence[str], *, truncate: bool = True
    ) -> tuple[Floats, Embedded]:
        """Cosine similarity of ``source`` with each target, and the embedding it took."""
        embedded = await self.embed([source, *targets], normalize=True, truncate=truncate)
        return cosine(embedded.vectors[0], embedded.vectors[1:]), embedded

    def close(self) -> None:
        """Finish the queued work, then stop the threads."""
        self._batcher.stop()
        self._tokenizer_thread.shutdown(wait=True)

    async def _tokenize(
        self, texts: Sequence[str], tokenize: Callable[[Sequence[str]], list[Encoding]]
    ) -> list[Encoding]:
        """``tokenize(texts)``: in place when small, in the tokenizer thread when large."""
        if sum(len(t) for t in texts) <= INLINE_TOKENIZE_CHARS:
            return tokenize(texts)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._tokenizer_thread, tokenize, texts)
