"""``OnnxModel``: a bundle served with onnxruntime, behind the core's ``Model`` protocol.

It tokenizes with the bundle's fast tokenizer and runs one pass over rows, padded
(rows x width) or packed (the rows' tokens end to end; ``packing``), as the graph's declared
inputs say, then pools the token vectors into one vector per row. Vectors leave here
unnormalised: the core normalises them once, as each request asks.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import cast

import numpy as np
from tokenizers import Encoding

from app.backends.onnx.bundle import Bundle
from app.backends.onnx.packing import PACKED_INPUT, PACKED_INPUTS, Packed, pack, pool_packed
from app.backends.onnx.pooling import Ints, PoolingMode, pool
from app.backends.onnx.runtimes import ONNXRUNTIME_FP32, Choice, Runner, open_runner
from app.backends.onnx.tokenizer import TextTokenizer
from app.core.model import Floats, ModelInfo, ModelKind, Row
from app.errors import StartupError

log = logging.getLogger(__name__)
KNOWN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass(frozen=True, slots=True)
class Prompted:
    """A row whose first ``skip`` tokens are a prompt that the pooling leaves out."""

    encoding: Encoding
    skip: int

    @property
    def ids(self) -> list[int]:
        return self.encoding.ids

    @property
    def type_ids(self) -> list[int]:
        return self.encoding.type_ids


class OnnxModel:
    """One bundle on one onnxruntime session: a dense model, pooled here; a sparse one, pooled
    inside its graph; or a reranker, whose graph gives a logit per pair."""

    def __init__(
        self,
        bundle: Bundle,
        runner: Runner,
        *,
        wide: Runner | None = None,
        max_sparse_pass_tokens: int | None = None,
    ) -> None:
        self.bundle = bundle
        self.runner = runner
        # A lone pass (nothing else running or queued) may take every core on this one.
        self.wide = wide
        self.provider: str = self.runner.name
        self._feed_names = self.runner.input_names
        # The graph says how it takes a pass: padded (rows x width) or packed, and the feed is
        # built for the names it declares.
        self.packed = PACKED_INPUT in self._feed_names
        self._grown: set[int] = set()  # runners (by id) that ran a large pass since a release
        unknown = set(self._feed_names) - set(PACKED_INPUTS if self.packed else KNOWN_INPUTS)
        if unknown:
            raise StartupError(
                f"{bundle.model_path} takes inputs {sorted(unknown)} that a text encoder does "
                "not feed; export a sentence-transformers model with scripts/export_onnx.py"
            )
        self._output = bundle.output_name
        self.tokenizer = TextTokenizer(bundle.tokenizer_path, bundle.max_seq_length)
        self._info = ModelInfo(
            id=bundle.id,
            kind=bundle.kind,
            width=bundle.dimension,
            max_seq_length=bundle.max_seq_length,
            vocab_size=self.tokenizer.vocab_size,
            variant=bundle.variant,
            runtime=self.provider,
            normalize=bundle.normalize,
            created=_unix_time(bundle.manifest.get("exported_at")),
            # A sparse pass holds tokens x vocabulary logits before its max: cap its tokens.
            max_pass_tokens=max_sparse_pass_tokens if bundle.kind == ModelKind.SPARSE else None,
            details={"pooling": bundle.pooling},
            prompts=bundle.prompts,
            default_prompt_name=bundle.default_prompt_name,
            activation=bundle.activation,
        )
        self._pooled_in_graph = bundle.kind != ModelKind.DENSE
        # Prompts the pooling leaves out: each prompt's length in tokens, measured once.
        self._skips: dict[str, int] | None = None if bundle.include_prompt else {}

    @classmethod
    def load(
        cls,
        bundle: Bundle,
        *,
        device: str = "cpu",
        intra_op_threads: int = 0,
        inter_op_threads: int = 1,
        max_sparse_pass_tokens: int | None = None,
        choice: Choice = ONNXRUNTIME_FP32,
        workers: int = 1,
        lone_threads: int = 0,
    ) -> OnnxModel:
        """Open the bundle's graph on ``choice``'s runtime for ``workers`` passes at once of
        ``intra_op_threads`` each, and its tokenizer. With ``lone_threads`` above that, a
        second runner spreads a lone pass over that many threads. A bundle whose graph is
        unsafe on more threads (its manifest's ``max_intra_op_threads``) gets no more."""
        cap = bundle.max_intra_op_threads
        if cap is not None and (intra_op_threads == 0 or intra_op_threads > cap):
            if intra_op_threads > cap:
                log.warning(
                    "%s runs each pass on at most %d thread(s), as its manifest says",
                    bundle.id,
                    cap,
                )
            intra_op_threads = cap
        if cap is not None:
            lone_threads = min(lone_threads, cap)
        opening = functools.partial(
            open_runner, bundle, choice, device=device, inter_op=inter_op_threads
        )
        runner = opening(streams=workers, threads=intra_op_threads)
        wide = None
        if device == "cpu" and intra_op_threads and lone_threads > intra_op_threads:
            wide = opening(streams=1, threads=lone_threads)
        return cls(bundle, runner, wide=wide, max_sparse_pass_tokens=max_sparse_pass_tokens)

    @property
    def info(self) -> ModelInfo:
        return self._info

    def tokenize(self, texts: Sequence[str], *, truncate: bool, prompt: str = "") -> list[Row]:
        if not prompt:
            return cast(list[Row], self.tokenizer.tokenize(texts, truncate=truncate))
        encodings = self.tokenizer.tokenize([prompt + t for t in texts], truncate=truncate)
        if self._skips is None:
            return cast(list[Row], encodings)
        skip = self._skips.get(prompt)
        if skip is None:
            skip = self._skips[prompt] = self.tokenizer.prompt_length(prompt)
        return [Prompted(e, skip) for e in encodings]

    def tokenize_pairs(self, pairs: Sequence[tuple[str, str]], *, truncate: bool) -> list[Encoding]:
        return self.tokenizer.pairs(pairs, truncate=truncate)

    def id_to_token(self, ids: Sequence[int]) -> list[str]:
        vocabulary = self.tokenizer.vocabulary
        return [vocabulary[i] for i in ids]

    def inspect(self, texts: Sequence[str]) -> list[Encoding]:
        return self.tokenizer.whole(texts)

    def run(self, rows: Sequence[Row], *, alone: bool = False) -> Floats:
        """One pass over ``rows``, pooled; vectors are not normalised. ``alone``: nothing else
        runs, so the pass may take every core."""
        runner = self.wide if alone and self.wide else self.runner
        if max(len(row.ids) for row in rows) >= RELEASE_FROM_WIDTH:
            self._grown.add(id(runner))
        out, layout = self._forward(rows, runner)
        if self._pooled_in_graph:
            return out
        mode = cast(PoolingMode, self.bundle.pooling)
        if isinstance(layout, Packed):
            return pool_packed(mode, out, layout, _skips(rows))
        return pool(mode, out, layout, _skips(rows))

    def release_memory(self) -> None:
        """Runtimes keep the largest pass's working memory for good (onnxruntime's arena: one
        pass of 32 rows of 256 tokens leaves the process 400 MB larger), and glibc keeps what
        they free. After large passes, once idle: each runner that ran one gives back what it
        holds (a tiny pass with arena shrinkage, on onnxruntime), then the heap's free pages go
        back to the system. Short passes, whose memory is small and reused, never pay for
        this."""
        if not self._grown:
            return
        grown, self._grown = self._grown, set()
        feed, _ = self._feed(self.tokenize(["."], truncate=True))
        for runner in (self.runner, self.wide):
            if runner is not None and id(runner) in grown:
                runner.shrink(self._output, feed)
        trim_heap()

    def _forward(self, rows: Sequence[Row], runner: Runner) -> tuple[Floats, Packed | Ints]:
        """The graph's output for ``rows``, and what pooling it needs: the packing, or the
        attention mask of the padded rows."""
        feed, layout = self._feed(rows)
        return runner.run(self._output, feed).astype(np.float32, copy=False), layout

    def _feed(self, rows: Sequence[Row]) -> tuple[dict[str, Ints], Packed | Ints]:
        layout: Packed | Ints
        if self.packed:
            layout = pack(rows)
            return {name: layout.feed[name] for name in self._feed_names}, layout
        width = max(len(row.ids) for row in rows)
        ids = np.zeros((len(rows), width), dtype=np.int64)
        types = np.zeros_like(ids)
        layout = np.zeros_like(ids)
        for index, row in enumerate(rows):
            n = len(row.ids)
            ids[index, :n] = row.ids
            types[index, :n] = row.type_ids
            layout[index, :n] = 1
        arrays = {"input_ids": ids, "attention_mask": layout, "token_type_ids": types}
        return {name: arrays[name] for name in self._feed_names}, layout

    def close(self) -> None:
        """Let go of the runners (their sessions and weights), then hand the freed heap back to
        the system: a model undeployed at run time gives its memory back at once."""
        if hasattr(self, "runner"):  # closing twice is harmless
            del self.runner
        self.wide = None
        trim_heap()


RELEASE_FROM_WIDTH = 128
"""A pass whose longest row has at least this many tokens leaves working memory behind worth
giving back once the server is idle: attention holds rows x heads x width^2 scores, so long rows
are what make a pass large."""


def trim_heap() -> None:
    """Hand the C heap's free pages back to the system (glibc's ``malloc_trim``), where there
    is such a call."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL(None).malloc_trim(0)


MMAP_THRESHOLD = 256 * 1024
"""Blocks from this size up get pages of their own, given back to the system when freed."""
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number, from glibc's malloc.h


def map_large_blocks() -> None:
    """Give every block of ``MMAP_THRESHOLD`` or more pages of its own, for the whole process.

    glibc raises that threshold each time such a block is freed (up to 32 MB), so once a model
    has been closed, the next one's weights and buffers land in the heap among small blocks,
    where ``trim_heap`` can hand back only part of them: undeploying the int8 bundle gave back
    25 to 56 of its 59 to 85 MB. With the threshold fixed it gave back all but a few MB, every
    time, at the same speed (docs/limits.md). An operator's ``MALLOC_MMAP_THRESHOLD_`` wins."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)


def _skips(rows: Sequence[Row]) -> Ints | None:
    """Each row's prompt tokens that the pooling leaves out, or ``None`` when no row has any."""
    if not rows or not isinstance(rows[0], Prompted):
        return None
    return np.fromiter((cast(Prompted, r).skip for r in rows), np.int64, len(rows))


def _unix_time(timestamp: object) -> int:
    if not isinstance(timestamp, str):
        return 0
    try:
        return int(datetime.fromisoformat(timestamp).timestamp())
    except ValueError:
        return 0
