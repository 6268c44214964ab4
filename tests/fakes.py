"""A model that costs nothing, behind the core's ``Model`` protocol: for tests of the batcher,
the engine's request lifecycle and the HTTP layers that need no real model.

A word is a token (its id from a fixed hash); a row's vector depends on its own ids alone, so
a row gets the same vector in any pass. A pass holding the word ``poison`` raises, as a model
that breaks on some input would; a test can also hold the model busy or slow it down.
"""

from __future__ import annotations

import asyncio
import threading
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from app.core.model import Floats, ModelInfo, ModelKind, Row
from app.errors import InputTooLong

CLS, SEP = 1, 2
VOCAB = 1000
POISON = "poison"


@dataclass(frozen=True)
class FakeRow:
    """A tokenized text: ``[CLS] word... [SEP]``."""

    ids: list[int]
    tokens: list[str]
    offsets: list[tuple[int, int]] = field(default_factory=list)

    @property
    def type_ids(self) -> list[int]:
        return [0] * len(self.ids)


def word_id(word: str) -> int:
    return 3 + zlib.crc32(word.encode()) % (VOCAB - 3)


def tokenize_one(text: str) -> FakeRow:
    words = text.split()
    offsets, start = [], 0
    for word in words:
        start = text.index(word, start)
        offsets.append((start, start + len(word)))
        start += len(word)
    return FakeRow(
        ids=[CLS, *map(word_id, words), SEP],
        tokens=["[CLS]", *words, "[SEP]"],
        offsets=[(0, 0), *offsets, (0, 0)],
    )


class FakeModel:
    """See the module's docstring. ``passes`` records each pass's rows by their first word."""

    def __init__(
        self,
        *,
        width: int = 8,
        max_seq_length: int = 32,
        name: str = "fake",
        kind: ModelKind = ModelKind.DENSE,
        prompts: dict[str, str] | None = None,
        default_prompt_name: str | None = None,
    ) -> None:
        self._info = ModelInfo(
            id=name,
            kind=kind,
            width=width,
            max_seq_length=max_seq_length,
            vocab_size=VOCAB,
            runtime="fake",
            details={"pooling": "mean"},
            prompts=prompts or {},
            default_prompt_name=default_prompt_name,
            activation="sigmoid" if kind == ModelKind.RERANK else None,
        )
        basis = np.random.default_rng(0).standard_normal((VOCAB, width))
        self._basis = basis.astype(np.float32)
        self.passes: list[list[str]] = []
        self.delay = 0.0
        self.releases = 0  # how often the batcher found itself idle
        self.entered = threading.Event()
        self.release = threading.Event()
        self.release.set()  # not held until a test says so
        self.closed = False

    @property
    def info(self) -> ModelInfo:
        return self._info

    def tokenize(self, texts: Sequence[str], *, truncate: bool, prompt: str = "") -> list[FakeRow]:
        rows = [tokenize_one(prompt + text) for text in texts]
        limit = self._info.max_seq_length
        for index, row in enumerate(rows):
            if len(row.ids) > limit:
                if not truncate:
                    raise InputTooLong(f"input {index} has {len(row.ids)} tokens; limit {limit}")
                rows[index] = FakeRow([*row.ids[: limit - 1], SEP], [*row.tokens[: limit - 1]])
        return rows

    def tokenize_pairs(self, pairs: Sequence[tuple[str, str]], *, truncate: bool) -> list[FakeRow]:
        return self.tokenize([f"{a} [SEP] {b}" for a, b in pairs], truncate=truncate)

    def id_to_token(self, ids: Sequence[int]) -> list[str]:
        return [f"tok{i}" for i in ids]

    def inspect(self, texts: Sequence[str]) -> list[FakeRow]:
        return [tokenize_one(text) for text in texts]

    def run(self, rows: Sequence[Row], *, alone: bool = False) -> Floats:
        words = [getattr(row, "tokens", ["", "?"])[1:2] or [""] for row in rows]
        self.passes.append([w[0] for w in words])
        if any(POISON in getattr(row, "tokens", ()) for row in rows):
            raise RuntimeError("injected fault")
        self.entered.set()
        self.release.wait(5)
        if self.delay:
            time.sleep(self.delay)
        return self.vectors(rows)

    def vectors(self, rows: Sequence[Row]) -> Floats:
        """Each row's raw (unnormalised) vector: the mean of its tokens' basis vectors."""
        return np.stack([self._basis[row.ids].mean(axis=0) for row in rows])

    def expected(self, texts: Sequence[str]) -> Floats:
        """The unit vectors the service should answer for ``texts``."""
        raw = self.vectors(self.tokenize(texts, truncate=True))
        unit: Floats = raw / np.linalg.norm(raw, axis=1, keepdims=True)
        return unit

    def hold(self) -> None:
        """Passes from now on wait until ``release`` is set."""
        self.entered.clear()
        self.release.clear()

    async def wait_until_busy(self) -> None:
        assert await asyncio.to_thread(self.entered.wait, 5), "no pass started"

    def release_memory(self) -> None:
        self.releases += 1

    def close(self) -> None:
        self.closed = True
