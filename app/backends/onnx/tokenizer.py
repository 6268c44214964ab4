"""The bundle's Hugging Face fast tokenizer, set up as sentence-transformers uses it."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

from tokenizers import Encoding, Tokenizer

from app.errors import InputTooLong, StartupError


class TextTokenizer:
    """Special tokens added, no padding; cut to ``max_length`` or refused when over it."""

    def __init__(self, path: Path, max_length: int) -> None:
        self.max_length = max_length
        self._truncating = _load(path)
        self._truncating.enable_truncation(max_length=max_length)
        self._whole = _load(path)
        self._whole.no_truncation()

    @property
    def vocab_size(self) -> int:
        return int(self._whole.get_vocab_size())

    @cached_property
    def vocabulary(self) -> list[str]:
        """Every id's token, in id order (read once, on first use)."""
        return [self._whole.id_to_token(i) or "" for i in range(self.vocab_size)]

    def tokenize(self, texts: Sequence[str], *, truncate: bool) -> list[Encoding]:
        """One encoding per text; with ``truncate=False`` a text over the limit raises
        ``InputTooLong``."""
        if truncate:
            return _encode(self._truncating, texts)
        encodings = _encode(self._whole, texts)
        self._check_lengths(encodings)
        return encodings

    def _check_lengths(self, encodings: list[Encoding]) -> None:
        for index, encoding in enumerate(encodings):
            if len(encoding.ids) > self.max_length:
                raise InputTooLong(
                    f"input {index} has {len(encoding.ids)} tokens, more than the model's limit "
                    f"of {self.max_length}; shorten it or send truncate=true"
                )

    def pairs(self, pairs: Sequence[tuple[str, str]], *, truncate: bool) -> list[Encoding]:
        """One encoding per pair, ``[CLS] a [SEP] b [SEP]``; cut longest first when
        ``truncate``, as ``transformers`` does for a cross-encoder, else refused when over."""
        tokenizer = self._truncating if truncate else self._whole
        encodings = tokenizer.encode_batch(list(pairs))
        if not truncate:
            self._check_lengths(encodings)
        return encodings

    def prompt_length(self, prompt: str) -> int:
        """The tokens a prompt puts at the start of a row, as sentence-transformers counts them:
        the prompt tokenized alone, less a trailing special token ([SEP], </s>)."""
        encoding = self._whole.encode(prompt)
        special = encoding.special_tokens_mask
        return len(encoding.ids) - (1 if special and special[-1] else 0)

    def whole(self, texts: Sequence[str]) -> list[Encoding]:
        """Each text's tokenization with nothing cut off."""
        return self._whole.encode_batch(list(texts))


def _encode(tokenizer: Tokenizer, texts: Sequence[str]) -> list[Encoding]:
    """``encode_batch`` hands the texts to a thread pool; for one text, plain ``encode`` skips
    that hand-off (the common case under load: one sentence per request)."""
    if len(texts) == 1:
        return [tokenizer.encode(texts[0])]
    return tokenizer.encode_batch(list(texts))


def _load(path: Path) -> Tokenizer:
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception for a bad file
        raise StartupError(f"cannot read {path}: {exc}; re-export the bundle") from None
    tokenizer.no_padding()
    return tokenizer
