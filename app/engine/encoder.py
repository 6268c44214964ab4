"""The ONNX session and the fast tokenizer: texts in, pooled vectors out (synchronous).

``Encoder.tokenize`` and ``Encoder.forward`` are separate so that a batcher can tokenize each
request on its own and then run rows from many requests in one forward pass.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import onnxruntime as ort
from tokenizers import Encoding, Tokenizer

from app.engine.bundle import Bundle
from app.engine.packing import PACKED_INPUT, PACKED_INPUTS, pack, pool_packed
from app.engine.pooling import Floats, l2_normalize, pool
from app.errors import InputTooLong, StartupError

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
Device = Literal["cpu", "cuda", "auto"]
KNOWN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
CUDA_HINT = (
    "install the CUDA build of onnxruntime in place of the CPU one "
    "(pip uninstall onnxruntime && pip install onnxruntime-gpu==<same version>) with CUDA 12 "
    "and cuDNN 9 libraries, or set EMBED_DEVICE=cpu"
)


class Tokenized(Protocol):
    """One row for the model: a ``tokenizers.Encoding``, or a ``TokenIds`` a caller sent."""

    @property
    def ids(self) -> list[int]: ...

    @property
    def type_ids(self) -> list[int]: ...


@dataclass(frozen=True, slots=True)
class TokenIds:
    """Token ids taken verbatim from a request (OpenAI's token-array input)."""

    ids: list[int]

    @property
    def type_ids(self) -> list[int]:
        return [0] * len(self.ids)


@dataclass(frozen=True, slots=True)
class Embedded:
    """Vectors for a list of texts, in input order, and the tokens each one fed the model."""

    vectors: Floats
    token_counts: list[int]
    queue_s: float = 0.0  # from arrival in the queue to the first forward pass
    inference_s: float = 0.0  # forward passes that held this request's rows


def select_providers(device: Device) -> list[str]:
    """The execution providers to ask onnxruntime for, best first, for ``EMBED_DEVICE``."""
    available = ort.get_available_providers()
    if device == "cpu":
        return [CPU]
    if CUDA in available:
        return [CUDA, CPU]
    if device == "cuda":
        raise StartupError(
            f"EMBED_DEVICE=cuda but onnxruntime {ort.__version__} has no CUDA provider "
            f"(it has {', '.join(available)}); {CUDA_HINT}"
        )
    log.info("EMBED_DEVICE=auto: no CUDA provider in onnxruntime, running on the CPU")
    return [CPU]


def create_session(
    bundle: Bundle, *, device: Device, intra_op_threads: int, inter_op_threads: int
) -> ort.InferenceSession:
    """Open ``model.onnx`` on the provider ``device`` asks for; fail loudly, never silently."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = inter_op_threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    # onnxruntime's threads spin between ops by default; on two cores that burns the CPU the
    # event loop needs to parse the next requests. Measured here with 64 clients: 387 req/s
    # with spinning off, 253 with it on.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = select_providers(device)
    try:
        session = ort.InferenceSession(
            str(bundle.model_path), sess_options=options, providers=providers
        )
    except Exception as exc:  # onnxruntime raises several unrelated types here
        raise StartupError(
            f"onnxruntime cannot load {bundle.model_path}: {exc}; re-export the bundle"
        ) from None
    active = session.get_providers()[0]
    if device == "cuda" and active != CUDA:
        # onnxruntime falls back to the CPU when the CUDA libraries fail to load.
        raise StartupError(f"EMBED_DEVICE=cuda but the CUDA provider failed to load; {CUDA_HINT}")
    if device == "auto":
        log.info("EMBED_DEVICE=auto: running on %s", active)
    return session


class Encoder:
    """One model: tokenizes texts, runs the ONNX graph, pools and normalises."""

    def __init__(self, bundle: Bundle, session: ort.InferenceSession) -> None:
        self.bundle = bundle
        self.session = session
        self.provider: str = session.get_providers()[0]
        self._feed_names = [i.name for i in session.get_inputs()]
        # The graph says how it takes a batch: padded (rows x width) or packed (see
        # app.engine.packing), and the feed is built for the names it declares.
        self.packed = PACKED_INPUT in self._feed_names
        unknown = set(self._feed_names) - set(PACKED_INPUTS if self.packed else KNOWN_INPUTS)
        if unknown:
            raise StartupError(
                f"{bundle.model_path} takes inputs {sorted(unknown)} that a text encoder does "
                "not feed; export a sentence-transformers model with scripts/export_onnx.py"
            )
        self._output = [bundle.output_name]
        self._truncating = _load_tokenizer(bundle, truncate=True)
        self._whole = _load_tokenizer(bundle, truncate=False)

    @classmethod
    def load(
        cls,
        bundle: Bundle,
        *,
        device: Device = "cpu",
        intra_op_threads: int = 0,
        inter_op_threads: int = 1,
    ) -> Encoder:
        """Open the bundle's model on ``device`` and its tokenizer."""
        session = create_session(
            bundle,
            device=device,
            intra_op_threads=intra_op_threads,
            inter_op_threads=inter_op_threads,
        )
        return cls(bundle, session)

    def tokenize(self, texts: Sequence[str], *, truncate: bool = True) -> list[Encoding]:
        """Tokenize as sentence-transformers does: special tokens added, cut to max_seq_length.

        With ``truncate=False`` an input over the limit raises ``InputTooLong``.
        """
        if truncate:
            return _encode(self._truncating, texts)
        encodings = _encode(self._whole, texts)
        limit = self.bundle.max_seq_length
        for index, encoding in enumerate(encodings):
            if len(encoding.ids) > limit:
                raise InputTooLong(
                    f"input {index} has {len(encoding.ids)} tokens, more than the model's limit "
                    f"of {limit}; shorten it or send truncate=true"
                )
        return encodings

    def tokenize_whole(self, texts: Sequence[str]) -> list[Encoding]:
        """Tokenize without cutting anything off: what ``/tokenize`` shows."""
        return self._whole.encode_batch(list(texts))

    @property
    def vocab_size(self) -> int:
        return int(self._whole.get_vocab_size())

    def forward(self, encodings: Sequence[Tokenized]) -> Floats:
        """Run one batch through the model and pool it; rows are not normalised."""
        if self.packed:
            packed = pack(encodings)
            feed = {name: packed.feed[name] for name in self._feed_names}
            hidden = self.session.run(self._output, feed)[0]
            return pool_packed(self.bundle.pooling, hidden.astype(np.float32, copy=False), packed)
        width = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(encodings), width), dtype=np.int64)
        types = np.zeros_like(ids)
        mask = np.zeros_like(ids)
        for row, encoding in enumerate(encodings):
            n = len(encoding.ids)
            ids[row, :n] = encoding.ids
            types[row, :n] = encoding.type_ids
            mask[row, :n] = 1
        arrays = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        feed = {name: arrays[name] for name in self._feed_names}
        hidden = self.session.run(self._output, feed)[0]
        return pool(self.bundle.pooling, hidden.astype(np.float32, copy=False), mask)

    def encode(
        self, texts: Sequence[str], *, normalize: bool = True, truncate: bool = True
    ) -> Embedded:
        """Embed ``texts`` in one batch; vectors come back in input order."""
        encodings = self.tokenize(texts, truncate=truncate)
        vectors = self.forward(encodings)
        if normalize:
            vectors = l2_normalize(vectors)
        return Embedded(vectors, [len(e.ids) for e in encodings])


def _encode(tokenizer: Tokenizer, texts: Sequence[str]) -> list[Encoding]:
    """``encode_batch`` hands the texts to a thread pool; for one text, plain ``encode`` skips
    that hand-off (the common case under load: one sentence per request)."""
    if len(texts) == 1:
        return [tokenizer.encode(texts[0])]
    return tokenizer.encode_batch(list(texts))


def _load_tokenizer(bundle: Bundle, *, truncate: bool) -> Tokenizer:
    try:
        tokenizer = Tokenizer.from_file(str(bundle.tokenizer_path))
    except Exception as exc:  # tokenizers raises a bare Exception for a bad file
        raise StartupError(
            f"cannot read {bundle.tokenizer_path}: {exc}; re-export the bundle"
        ) from None
    tokenizer.no_padding()
    if truncate:
        tokenizer.enable_truncation(max_length=bundle.max_seq_length)
    else:
        tokenizer.no_truncation()
    return tokenizer
