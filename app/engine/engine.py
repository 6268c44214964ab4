"""The engine the API talks to: checks inputs, then runs the encoder off the event loop.

It knows nothing of HTTP. Bad input is refused here with a ``ServiceError`` before it can reach
the model; good input is tokenized and run in a worker thread, so the event loop keeps accepting
connections and answering ``/health`` while a batch runs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from app.config import Settings
from app.engine.batches import plan_batches
from app.engine.bundle import load_bundle
from app.engine.encoder import Embedded, Encoder
from app.engine.pooling import Floats, cosine, l2_normalize
from app.errors import InvalidText, PayloadTooLarge
from app.metrics import BATCH_SIZE, INFERENCE_DURATION, INPUTS, TOKENS

WARMUP_TEXTS = ["warm-up", "a slightly longer warm-up sentence for the second row"]


@dataclass(frozen=True, slots=True)
class Limits:
    """How much one request may ask for."""

    max_inputs: int
    max_input_chars: int
    max_batch_tokens: int = 8192
    max_batch_rows: int = 64


def check_texts(texts: Sequence[str], limits: Limits) -> None:
    """Refuse what must not reach the model: too many inputs, too long, not encodable."""
    if len(texts) > limits.max_inputs:
        raise PayloadTooLarge(
            f"{len(texts)} inputs in one request; the limit is {limits.max_inputs} "
            "(EMBED_MAX_INPUTS)"
        )
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

    def __init__(self, encoder: Encoder, limits: Limits) -> None:
        self.encoder = encoder
        self.limits = limits
        self.model_id = encoder.bundle.id
        self.dimension = encoder.bundle.dimension
        # One inference thread: onnxruntime already spreads one run over every core, and two
        # concurrent runs would only fight over them.
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")

    @classmethod
    def from_settings(cls, settings: Settings) -> EmbeddingEngine:
        """Load the bundle that the settings name; ``StartupError`` says what is wrong."""
        bundle = load_bundle(settings.model_dir)
        encoder = Encoder.load(
            bundle,
            device=settings.device,
            intra_op_threads=settings.intra_op_threads,
            inter_op_threads=settings.inter_op_threads,
        )
        limits = Limits(
            max_inputs=settings.max_inputs,
            max_input_chars=settings.max_input_chars,
            max_batch_tokens=settings.max_batch_tokens,
            max_batch_rows=settings.max_batch_rows,
        )
        return cls(encoder, limits)

    def warm_up(self) -> None:
        """Run the model once so that the first request does not pay for lazy initialisation."""
        self.encoder.encode(WARMUP_TEXTS)

    async def embed(
        self, texts: Sequence[str], *, normalize: bool = True, truncate: bool = True
    ) -> Embedded:
        """Vectors for ``texts`` in input order, and the tokens each one fed the model."""
        check_texts(texts, self.limits)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._worker, self._run, texts, normalize, truncate)

    async def similarity(
        self, source: str, targets: Sequence[str], *, truncate: bool = True
    ) -> tuple[Floats, int]:
        """Cosine similarity of ``source`` with each target, and the tokens it took."""
        embedded = await self.embed([source, *targets], normalize=True, truncate=truncate)
        scores = cosine(embedded.vectors[0], embedded.vectors[1:])
        return scores, sum(embedded.token_counts)

    def close(self) -> None:
        """Stop the worker thread once the work in hand is done."""
        self._worker.shutdown(wait=True)

    def _run(self, texts: Sequence[str], normalize: bool, truncate: bool) -> Embedded:
        encodings = self.encoder.tokenize(texts, truncate=truncate)
        counts = [len(e.ids) for e in encodings]
        vectors = np.empty((len(encodings), self.dimension), dtype=np.float32)
        plan = plan_batches(
            counts, max_tokens=self.limits.max_batch_tokens, max_rows=self.limits.max_batch_rows
        )
        for rows in plan:
            started = time.perf_counter()
            vectors[rows] = self.encoder.forward([encodings[i] for i in rows])
            INFERENCE_DURATION.labels(self.model_id).observe(time.perf_counter() - started)
            BATCH_SIZE.labels(self.model_id).observe(len(rows))
        INPUTS.labels(self.model_id).inc(len(counts))
        TOKENS.labels(self.model_id).inc(sum(counts))
        return Embedded(l2_normalize(vectors) if normalize else vectors, counts)
