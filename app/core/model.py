"""The seam between the core and the models: what a model is, and the one protocol it speaks.

A backend (``app.backends``) implements ``Model``: it says what the model is (``ModelInfo``),
turns texts into rows of token ids, and runs one forward pass over rows, returning one row of
floats per input row. What that row means depends on the model's ``kind``: a dense vector
(``dense``), a vector over the vocabulary (``sparse``), or a score per pair (``rerank``). The
core queues, batches and post-processes; it never sees a tensor layout, a session or a
tokenizer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Generic, Protocol, TypeVar

import numpy as np
from numpy.typing import NDArray

Floats = NDArray[np.float32]
V = TypeVar("V")


class ModelKind(StrEnum):
    """What one row of a model's output is."""

    DENSE = "dense"  # a sentence vector
    SPARSE = "sparse"  # a weight per vocabulary entry
    RERANK = "rerank"  # a score (per label) for a pair of texts


class Row(Protocol):
    """One input row for a pass: a ``tokenizers.Encoding``, or ``TokenIds`` a caller sent."""

    @property
    def ids(self) -> list[int]: ...

    @property
    def type_ids(self) -> list[int]: ...


class TokenView(Protocol):
    """A text's whole tokenization, for ``/tokenize``: ids, token strings, character spans."""

    @property
    def ids(self) -> list[int]: ...

    @property
    def tokens(self) -> list[str]: ...

    @property
    def offsets(self) -> list[tuple[int, int]]: ...


@dataclass(frozen=True, slots=True)
class TokenIds:
    """Token ids taken verbatim from a request (OpenAI's token-array input)."""

    ids: list[int]

    @property
    def type_ids(self) -> list[int]:
        return [0] * len(self.ids)


@dataclass(frozen=True, slots=True)
class SparseVector:
    """A sparse model's vector: its entries, highest value first (ties by index)."""

    indices: NDArray[np.int32]
    values: Floats


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What the core and the API need to know about a model; no runtime detail beyond names."""

    id: str
    kind: ModelKind
    width: int  # floats in one row of a pass's output: the dimension, the vocabulary, the labels
    max_seq_length: int  # tokens in one row, special tokens included
    vocab_size: int
    variant: str = "fp32"
    runtime: str = ""  # where passes run, e.g. "onnxruntime CPUExecutionProvider"
    normalize: bool = True  # whether the model's vectors are meant to be unit length
    created: int = 0  # when it was exported, in Unix seconds (0: unknown)
    max_pass_tokens: int | None = None  # a cap on the tokens of one pass, if the model has one
    details: dict[str, str] = field(default_factory=dict)  # shown by /info (pooling, ...)
    prompts: dict[str, str] = field(default_factory=dict)  # by name, as sentence-transformers
    default_prompt_name: str | None = None  # the prompt used when a request names none
    activation: str | None = None  # a reranker's score function over its logit (core.vectors)


class Model(Protocol):
    """One loaded model. ``tokenize`` and ``run`` are synchronous and thread-safe: the core calls
    ``tokenize`` on the event loop or a tokenizer thread, and ``run`` on its worker threads."""

    @property
    def info(self) -> ModelInfo: ...

    def tokenize(self, texts: Sequence[str], *, truncate: bool, prompt: str = "") -> Sequence[Row]:
        """One row per text, ``prompt`` put before it and special tokens added; cut to
        ``max_seq_length`` when ``truncate``, else a text over it raises ``InputTooLong``. The
        rows remember the prompt where the model leaves its tokens out of the pooling."""
        ...

    def tokenize_pairs(self, pairs: Sequence[tuple[str, str]], *, truncate: bool) -> Sequence[Row]:
        """One row per pair of texts, as a cross-encoder takes them (``type_ids`` tell the two
        apart); cut longest first to ``max_seq_length`` when ``truncate``."""
        ...

    def inspect(self, texts: Sequence[str]) -> Sequence[TokenView]:
        """Each text's whole tokenization, nothing cut off."""
        ...

    def id_to_token(self, ids: Sequence[int]) -> list[str]:
        """The vocabulary's token for each id (a sparse vector's entries, by name)."""
        ...

    def run(self, rows: Sequence[Row], *, alone: bool = False) -> Floats:
        """One forward pass: ``(len(rows), info.width)`` float32, row i for ``rows[i]``.
        ``alone``: no other pass runs or waits, so this one may spread over every core."""
        ...

    def release_memory(self) -> None:
        """Nothing is running or waiting: give back the working memory that large passes left
        behind, if any (cheap when there is none; the batcher calls it each time it goes
        idle)."""
        ...

    def close(self) -> None:
        """Free what the model holds."""
        ...


@dataclass(frozen=True, slots=True)
class Outcome(Generic[V]):
    """What a request got from the engine: its values, in input order, and how it got them.

    ``values`` is one row per input (vectors), one score per target for ``similarity``, or one
    ``SparseVector`` per input for a sparse model. The route builds the response body, the
    timing headers, the metrics and the access-log fields from this one value.
    """

    model: str
    values: V
    token_counts: list[int]
    queue_s: float = 0.0  # from arrival in the queue to the first forward pass
    inference_s: float = 0.0  # forward passes that held this request's rows

    @property
    def tokens(self) -> int:
        return sum(self.token_counts)
