"""One served model as the API sees it: checks inputs, tokenizes, queues rows, awaits the outcome.

It knows nothing of HTTP and nothing of the runtime: the model is reached through the ``Model``
protocol. Bad input is refused here with a ``ServiceError`` before it can reach the model. Small
requests are tokenized in place (a thread hop would cost more than the tokenizing), large ones in
a tokenizer thread; passes run on the batcher's worker threads, so the event loop keeps
accepting connections and answering ``/health`` while they run.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Concatenate, ParamSpec, TypeVar

from app.config import REQUEST_TOKENS, Settings
from app.core.batcher import Batcher
from app.core.model import (
    Floats,
    Model,
    ModelInfo,
    ModelKind,
    Outcome,
    Row,
    SparseVector,
    TokenIds,
    TokenView,
)
from app.core.planner import PASS_OVERHEAD_TOKENS
from app.core.threads import ThreadPlan
from app.core.vectors import dot_scores, finisher, scorer, sparse_pruner
from app.errors import (
    InputTooLong,
    InvalidParameter,
    InvalidText,
    InvalidTokenId,
    PayloadTooLarge,
    RequestTimeout,
    ValidationFailed,
    WrongModelKind,
    cut,
)

T = TypeVar("T")
S = TypeVar("S", str, tuple[str, str])
P = ParamSpec("P")
WARMUP_TEXTS = ["warm-up", "a slightly longer warm-up sentence for the second row"]
INLINE_TOKENIZE_CHARS = 4096  # tokenizing this much takes well under a millisecond
TOKENIZE_SLICE = 64  # texts tokenized at a time in a large request, counting tokens as they come


@dataclass(frozen=True, slots=True)
class Limits:
    """How much one request may ask for."""

    max_inputs: int = 2048
    max_input_chars: int = 100_000

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(max_inputs=settings.max_inputs, max_input_chars=settings.max_input_chars)


@dataclass(frozen=True, slots=True)
class Batching:
    """How rows are grouped into forward passes, and how long they may wait."""

    max_batch_tokens: int = 1024
    max_batch_rows: int = 64
    max_queue_tokens: int = 65536
    max_request_tokens: int = REQUEST_TOKENS  # one request's tokens, after truncation
    max_retry_after_s: int = 30
    max_wait_s: float = 0.0
    request_timeout_s: float = 30.0
    workers: int = 1  # forward passes run at once
    pass_overhead_tokens: int = PASS_OVERHEAD_TOKENS  # a pass's fixed cost, for the planner

    @classmethod
    def from_settings(cls, settings: Settings, plan: ThreadPlan) -> Batching:
        return cls(
            max_batch_tokens=settings.max_batch_tokens,
            max_batch_rows=settings.max_batch_rows,
            max_queue_tokens=settings.max_queue_tokens,
            max_request_tokens=settings.max_request_tokens,
            max_retry_after_s=settings.max_retry_after_s,
            max_wait_s=settings.max_wait_ms / 1000,
            request_timeout_s=settings.request_timeout_s,
            workers=plan.workers,
            pass_overhead_tokens=plan.pass_overhead_tokens,
        )


def check_count(count: int, limits: Limits, what: str = "inputs") -> None:
    """Refuse a request with more inputs (or ``what`` else counts) than ``EMBED_MAX_INPUTS``."""
    if count > limits.max_inputs:
        raise PayloadTooLarge(
            f"{count} {what} in one request; the limit is {limits.max_inputs} (EMBED_MAX_INPUTS)"
        )


def check_texts(texts: Sequence[str], limits: Limits, what: str = "inputs") -> None:
    """Refuse what must not reach the model: too many inputs, too long, not encodable."""
    check_count(len(texts), limits, what)
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


def counted(
    method: Callable[Concatenate[Engine, P], Coroutine[Any, Any, T]],
) -> Callable[Concatenate[Engine, P], Coroutine[Any, Any, T]]:
    """Count the request in the engine from the call's first step to its end, so that an engine
    swapped out of the registry is closed only once its requests are done (``drained``)."""

    @functools.wraps(method)
    async def counting(self: Engine, /, *args: P.args, **kwargs: P.kwargs) -> T:
        self._active += 1
        try:
            return await method(self, *args, **kwargs)
        finally:
            self._active -= 1
            if not self._active:
                self._idle.set()

    return counting


class Engine:
    """Serves one model; every public coroutine is safe to await from any request."""

    def __init__(
        self,
        model: Model,
        limits: Limits | None = None,
        batching: Batching | None = None,
        *,
        cores: threading.Semaphore | None = None,
        default_prompt_name: str | None = None,
    ) -> None:
        self.model = model
        self.info: ModelInfo = model.info
        # EMBED_DEFAULT_PROMPT_NAME: used where this model has a prompt of that name.
        self.default_prompt_name = (
            default_prompt_name if default_prompt_name in self.info.prompts else None
        ) or self.info.default_prompt_name
        self.limits = limits or Limits()
        self.batching = batching or Batching()
        self._active = 0  # requests inside one of the public coroutines now
        self._idle = asyncio.Event()
        self._tokenizer_thread = ThreadPoolExecutor(1, thread_name_prefix="tokenizer")
        max_tokens = self.batching.max_batch_tokens
        if self.info.max_pass_tokens is not None:
            max_tokens = min(max_tokens, self.info.max_pass_tokens)
        self._batcher = Batcher(
            model,
            max_batch_tokens=max_tokens,
            max_batch_rows=self.batching.max_batch_rows,
            max_queue_tokens=self.batching.max_queue_tokens,
            max_request_tokens=self.batching.max_request_tokens,
            max_retry_after_s=self.batching.max_retry_after_s,
            max_wait_s=self.batching.max_wait_s,
            workers=self.batching.workers,
            pass_overhead_tokens=self.batching.pass_overhead_tokens,
            cores=cores,
        )

    @property
    def model_id(self) -> str:
        return self.info.id

    def warm_up(self) -> None:
        """Run the model once, as a shared pass and as a lone one, so that the first request
        does not pay for lazy initialisation."""
        rows = self.model.tokenize(WARMUP_TEXTS, truncate=True)
        self.model.run(rows)
        self.model.run(rows, alone=True)

    @counted
    async def embed(
        self,
        texts: Sequence[str],
        *,
        normalize: bool = True,
        truncate: bool = True,
        dimensions: int | None = None,
        prompt: str = "",
    ) -> Outcome[Floats]:
        """Vectors for ``texts`` in input order (the first ``dimensions`` components of each, if
        given), and the tokens each one fed the model, ``prompt``'s included.

        Raises ``Overloaded`` at once when the queue is full, and ``RequestTimeout`` when the
        answer is not there within ``request_timeout_s``; either way the rows are dropped.
        """
        started = time.perf_counter()
        self.require(ModelKind.DENSE)
        self._check_dimensions(dimensions)
        check_texts(texts, self.limits)
        rows = await self._rows(
            texts, lambda t: self.model.tokenize(t, truncate=truncate, prompt=prompt)
        )
        return await self._run(rows, normalize, dimensions, started)

    def prompt(self, prompt: str | None = None, prompt_name: str | None = None) -> str:
        """The text to put before each input, as ``SentenceTransformer.encode`` picks it: a
        literal ``prompt`` (``""`` for none), else the named prompt, else the server's default
        name (``EMBED_DEFAULT_PROMPT_NAME``) where this model has it, else the model's own
        default. An unknown name is a 422 listing the model's prompts."""
        if prompt is not None:
            return prompt
        name = prompt_name or self.default_prompt_name
        if name is None:
            return ""
        if name not in self.info.prompts:
            known = ", ".join(repr(p) for p in self.info.prompts) or "none"
            error = ValidationFailed(
                f"{self.model_id} has no prompt named {cut(name)!r}; its prompts: {known}"
            )
            error.param = "prompt_name"
            raise error
        return self.info.prompts[name]

    @counted
    async def rerank(
        self,
        query: str,
        texts: Sequence[str],
        *,
        truncate: bool = True,
        raw_scores: bool = False,
    ) -> Outcome[Floats]:
        """A cross-encoder's score for ``query`` with each text, in input order: the model's
        activation of its logit (``CrossEncoder.predict``'s default), or the logit when
        ``raw_scores``. Pairs are truncated longest first; each counts its tokens."""
        started = time.perf_counter()
        self.require(ModelKind.RERANK)
        check_texts([query], self.limits)  # the documents' count and indices are their own
        check_texts(texts, self.limits)
        pairs = [(query, text) for text in texts]
        rows = await self._rows(pairs, lambda p: self.model.tokenize_pairs(p, truncate=truncate))
        future = self._batcher.submit(rows, scorer(self.info.activation, raw=raw_scores))
        return await self._await(future, started)

    @counted
    async def embed_sparse(
        self,
        texts: Sequence[str],
        *,
        truncate: bool = True,
        threshold: float = 0.0,
        top_k: int | None = None,
        prompt: str = "",
    ) -> Outcome[list[SparseVector]]:
        """A sparse model's vector for each text, in input order: the entries above
        ``threshold``, highest first, at most ``top_k`` of them."""
        started = time.perf_counter()
        self.require(ModelKind.SPARSE)
        check_texts(texts, self.limits)
        rows = await self._rows(
            texts, lambda t: self.model.tokenize(t, truncate=truncate, prompt=prompt)
        )
        keep = sparse_pruner(threshold=threshold, top_k=top_k)
        return await self._await(self._batcher.submit(rows, None, keep), started)

    def require(self, kind: ModelKind) -> None:
        """Refuse, with ``WrongModelKind``, work that this model's kind does not do."""
        if self.info.kind != kind:
            raise WrongModelKind(
                f"{self.model_id} is a {self.info.kind} model; this route serves {kind} models"
            )

    @counted
    async def embed_ids(
        self,
        rows: Sequence[Sequence[int]],
        *,
        normalize: bool = True,
        dimensions: int | None = None,
    ) -> Outcome[Floats]:
        """Vectors for inputs given as the model's own token ids, taken verbatim (no special
        tokens added); an id outside the vocabulary or a row over the model's limit is a 422."""
        started = time.perf_counter()
        self.require(ModelKind.DENSE)
        self._check_dimensions(dimensions)
        check_count(len(rows), self.limits)
        vocab, limit = self.info.vocab_size, self.info.max_seq_length
        for index, ids in enumerate(rows):
            if len(ids) > limit:
                raise InputTooLong(
                    f"input {index} has {len(ids)} token ids, more than the model's limit of "
                    f"{limit}; token ids are taken verbatim, so shorten them"
                )
            bad = next((i for i in ids if not 0 <= i < vocab), None)
            if bad is not None:
                raise InvalidTokenId(
                    f"input {index} holds token id {cut(str(bad))}, outside the vocabulary of "
                    f"{self.model_id} (0 to {vocab - 1})"
                )
        return await self._run(
            [TokenIds(list(ids)) for ids in rows], normalize, dimensions, started
        )

    @counted
    async def similarity(
        self, source: str, targets: Sequence[str], *, truncate: bool = True
    ) -> Outcome[Floats]:
        """The cosine similarity of ``source`` with each target, in order, as the outcome's
        values; its token counts cover the source and every target. ``EMBED_MAX_INPUTS`` counts
        the targets."""
        started = time.perf_counter()
        self.require(ModelKind.DENSE)
        check_texts([source], self.limits)
        check_texts(targets, self.limits, "targets")
        rows = await self._rows(
            [source, *targets], lambda t: self.model.tokenize(t, truncate=truncate)
        )
        embedded = await self._run(rows, True, None, started)
        scores = dot_scores(embedded.values[0], embedded.values[1:])
        return replace(embedded, values=scores)

    @counted
    async def tokenize(self, texts: Sequence[str], *, prompt: str = "") -> Sequence[TokenView]:
        """Each text's whole tokenization, ``prompt`` before it, nothing cut off (more ids than
        ``max_seq_length`` means an embedding would truncate it)."""
        check_texts(texts, self.limits)
        return await self._off_loop([prompt + t for t in texts], self.model.inspect)

    async def drained(self) -> None:
        """Return once no request is inside the engine (on the event loop that serves it)."""
        while self._active:
            self._idle.clear()
            await self._idle.wait()

    def stop(self) -> None:
        """Finish the queued work, then stop the threads; the model stays open (for an engine
        that shares its model with another)."""
        self._batcher.stop()
        self._tokenizer_thread.shutdown(wait=True)

    def close(self) -> None:
        """Finish the queued work, then stop the threads and free the model."""
        self.stop()
        self.model.close()

    def _check_dimensions(self, dimensions: int | None) -> None:
        if dimensions is not None and not 1 <= dimensions <= self.info.width:
            raise InvalidParameter(
                f"dimensions must be between 1 and {self.info.width} for {self.model_id}; "
                f"got {dimensions}",
                param="dimensions",
            )

    async def _run(
        self, rows: Sequence[Row], normalize: bool, dimensions: int | None, started: float
    ) -> Outcome[Floats]:
        cut = dimensions if dimensions is not None and dimensions < self.info.width else None
        future = self._batcher.submit(rows, finisher(normalize=normalize, dimensions=cut))
        return await self._await(future, started)

    async def _await(self, future: asyncio.Future[Outcome[Any]], started: float) -> Outcome[Any]:
        """The outcome, or ``RequestTimeout`` once the request's deadline has passed."""
        remaining = self.batching.request_timeout_s - (time.perf_counter() - started)
        # A timer on the future itself rather than asyncio.wait_for, which costs a task step and
        # two futures per request on the hot path. A future that times out is done, so the
        # batcher drops its rows before inference.
        timer = asyncio.get_running_loop().call_later(max(remaining, 0.0), self._expire, future)
        try:
            return await future
        finally:
            timer.cancel()

    def _expire(self, future: asyncio.Future[Outcome[Any]]) -> None:
        if not future.done():
            future.set_exception(
                RequestTimeout(
                    f"no answer within {self.batching.request_timeout_s:g} s "
                    "(EMBED_REQUEST_TIMEOUT_S); the server is busy, retry later"
                )
            )

    async def _rows(
        self, items: Sequence[S], tokenize: Callable[[Sequence[S]], Sequence[Row]]
    ) -> Sequence[Row]:
        """``tokenize(items)``: small requests at once, large ones in slices in the tokenizer
        thread, refused as soon as their rows hold more tokens than ``EMBED_MAX_REQUEST_TOKENS``
        (so that a request far past it costs its first slices' tokenizing, not all of it)."""
        limit = self.batching.max_request_tokens
        if _chars(items) <= INLINE_TOKENIZE_CHARS:
            return tokenize(items)
        loop = asyncio.get_running_loop()
        rows: list[Row] = []
        tokens = 0
        for start in range(0, len(items), TOKENIZE_SLICE):
            part = items[start : start + TOKENIZE_SLICE]
            rows += await loop.run_in_executor(self._tokenizer_thread, tokenize, part)
            tokens += sum(len(row.ids) for row in rows[start:])
            if tokens > limit and len(rows) < len(items):
                raise PayloadTooLarge(
                    f"this request holds more than {limit} tokens after truncation "
                    f"(EMBED_MAX_REQUEST_TOKENS): {tokens} in its first {len(rows)} of "
                    f"{len(items)} inputs; split it into requests of fewer tokens"
                )
        return rows

    async def _off_loop(self, items: Sequence[S], work: Callable[[Sequence[S]], T]) -> T:
        """``work(items)``: in place when small, in the tokenizer thread when large."""
        if _chars(items) <= INLINE_TOKENIZE_CHARS:
            return work(items)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._tokenizer_thread, work, items)


def _chars(items: Sequence[str | tuple[str, str]]) -> int:
    return sum(len(i) if isinstance(i, str) else len(i[0]) + len(i[1]) for i in items)
