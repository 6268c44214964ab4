"""Tiny, randomly initialised models of every encoder family the export supports, for the tests.

No weights can be downloaded here, so each family is checked on a model built from a config: two
layers, hidden size 32, with a small tokenizer of the family's own type (WordPiece, byte-level
BPE or Unigram) trained with ``tokenizers`` on the STS-B sentences. The vectors mean nothing; what
the tests check is that the exported bundle and the service reproduce sentence-transformers on
PyTorch for that architecture, tokenizer, pooling and prompt set-up::

    .venv-export/bin/python scripts/tiny_models.py models/.sources/tiny

writes one sentence-transformers folder per entry of ``TINY`` (``tiny-bert``, ``tiny-roberta``,
..., ``tiny-modernbert``, which the export must refuse) and one cross-encoder,
``tiny-cross-encoder``. Seeds are fixed: the same folders every time.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers
from sentence_transformers import CrossEncoder, SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from transformers import PreTrainedTokenizerFast

DEFAULT_STSB = Path(__file__).resolve().parents[2] / "shared" / "data" / "stsb-test.tsv"
VOCAB = 2000
MAX_SEQ_LENGTH = 128
SIZE = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
ROBERTA_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
PROMPTS = {"query": "query: ", "passage": "passage: "}


@dataclass(frozen=True)
class Tiny:
    """One family's tiny model: its config class and options, tokenizer type, pooling."""

    config: str
    options: dict[str, Any]
    tokenizer: str  # wordpiece | bpe | unigram
    pooling: str
    token_type_ids: bool
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    include_prompt: bool = True
    normalize: bool = False


# Weights drawn wider than the usual 0.02, so that an untrained model still tells sentences apart
# (at 0.02 every vector of a tiny model is within a cosine of 0.9999 of every other, and a parity
# check at that level would prove nothing).
INIT = {"initializer_range": 0.5}
BERT_LIKE = {
    **SIZE,
    **INIT,
    "intermediate_size": 64,
    "max_position_embeddings": MAX_SEQ_LENGTH + 2,
}
TINY: dict[str, Tiny] = {
    # Prompts with a default, as e5-style models ship them.
    "bert": Tiny(
        "BertConfig",
        BERT_LIKE,
        "wordpiece",
        "mean",
        True,
        PROMPTS,
        default_prompt_name="query",
        normalize=True,
    ),
    "roberta": Tiny("RobertaConfig", {**BERT_LIKE, "pad_token_id": 1}, "bpe", "cls", False),
    "xlm-roberta": Tiny(
        "XLMRobertaConfig", {**BERT_LIKE, "pad_token_id": 1}, "unigram", "mean", False
    ),
    # Prompts left out of the pooling, as instructor- and some bge-style models do.
    "mpnet": Tiny(
        "MPNetConfig",
        {**BERT_LIKE, "pad_token_id": 1},
        "wordpiece-mpnet",
        "mean",
        False,
        PROMPTS,
        include_prompt=False,
    ),
    "distilbert": Tiny(
        "DistilBertConfig",
        {
            **INIT,
            "dim": 32,
            "n_layers": 2,
            "n_heads": 2,
            "hidden_dim": 64,
            "max_position_embeddings": MAX_SEQ_LENGTH,
        },
        "wordpiece",
        "max",
        False,
    ),
    "electra": Tiny(
        "ElectraConfig",
        {**BERT_LIKE, "embedding_size": 32},
        "wordpiece",
        "cls",
        True,
        PROMPTS,
        include_prompt=False,
    ),
    "modernbert": Tiny(
        "ModernBertConfig",
        {
            **BERT_LIKE,
            "global_attn_every_n_layers": 1,
            **dict.fromkeys(["pad_token_id"], 0),
            **dict.fromkeys(["bos_token_id", "cls_token_id"], 2),
            **dict.fromkeys(["eos_token_id", "sep_token_id"], 3),
        },
        "wordpiece",
        "mean",
        False,
    ),
}


def sentences(stsb: Path) -> list[str]:
    rows = (line.split("\t") for line in stsb.read_text(encoding="utf-8").splitlines()[1:])
    return sorted({text for row in rows if len(row) >= 3 for text in row[-2:]})


def train_tokenizer(kind: str, corpus: list[str]) -> Tokenizer:
    """A small tokenizer of the family's type, with its special tokens and post-processor."""
    if kind.startswith("wordpiece"):
        specials = [*ROBERTA_SPECIALS, "[UNK]"] if kind == "wordpiece-mpnet" else BERT_SPECIALS
        unk = "[UNK]"
        tokenizer = Tokenizer(models.WordPiece(unk_token=unk))
        tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.decoder = decoders.WordPiece()
        trainer: Any = trainers.WordPieceTrainer(vocab_size=VOCAB, special_tokens=specials)
    elif kind == "bpe":
        specials = ROBERTA_SPECIALS
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=VOCAB,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
    else:
        specials = ROBERTA_SPECIALS
        tokenizer = Tokenizer(models.Unigram())
        tokenizer.normalizer = normalizers.NFKC()
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
        tokenizer.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(
            vocab_size=VOCAB, special_tokens=specials, unk_token="<unk>"
        )
    tokenizer.train_from_iterator(corpus, trainer)
    if kind.startswith("wordpiece"):
        tokenizer.model = _wordpiece(tokenizer, corpus, specials, unk)
    if specials is BERT_SPECIALS:
        cls, sep = "[CLS]", "[SEP]"
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{cls} $A {sep}",
            pair=f"{cls} $A {sep} $B:1 {sep}:1",
            special_tokens=[(t, tokenizer.token_to_id(t)) for t in (cls, sep)],
        )
    else:  # <s> A </s></s> B </s>, RoBERTa's way
        tokenizer.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>",
            pair="<s> $A </s> </s> $B </s>",
            special_tokens=[(t, tokenizer.token_to_id(t)) for t in ("<s>", "</s>")],
        )
    return tokenizer


def _wordpiece(tokenizer: Tokenizer, corpus: list[str], specials: list[str], unk: str) -> Any:
    """A WordPiece vocabulary made the same way every time: the special tokens, every character
    of the corpus alone and as a continuation, then its most frequent words (ties by the word).
    The trainer's own vocabulary differs from run to run (its ties fall by hash order), and so
    did the models' token ids, and a gate as fine as the reranker's logits to 1e-5 could fail on
    one draw and pass on the next."""
    counts: Counter[str] = Counter()
    for text in corpus:
        normalized = tokenizer.normalizer.normalize_str(text) if tokenizer.normalizer else text
        counts.update(word for word, _ in tokenizer.pre_tokenizer.pre_tokenize_str(normalized))
    characters = sorted({c for word in counts for c in word})
    vocab = [*specials, *characters, *(f"##{c}" for c in characters)]
    ranked = sorted((w for w in counts if len(w) > 1), key=lambda w: (-counts[w], w))
    vocab += ranked[: max(0, VOCAB - len(vocab))]
    return models.WordPiece({token: i for i, token in enumerate(vocab)}, unk_token=unk)


def hf_tokenizer(tokenizer: Tokenizer, token_type_ids: bool) -> PreTrainedTokenizerFast:
    bert = tokenizer.token_to_id("[CLS]") is not None
    names = dict(
        zip(
            ["pad_token", "unk_token", "cls_token", "sep_token", "mask_token"],
            BERT_SPECIALS if bert else ["<pad>", "<unk>", "<s>", "</s>", "<mask>"],
            strict=True,
        )
    )
    inputs = ["input_ids", "token_type_ids", "attention_mask"]
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        model_max_length=MAX_SEQ_LENGTH,
        model_input_names=inputs
        if token_type_ids
        else [i for i in inputs if i != "token_type_ids"],
        **names,
    )


def save_encoder(name: str, tiny: Tiny, corpus: list[str], out: Path) -> None:
    """A sentence-transformers folder: the random transformer, its tokenizer, the pooling."""
    torch.manual_seed(0)
    tokenizer = hf_tokenizer(train_tokenizer(tiny.tokenizer, corpus), tiny.token_type_ids)
    config = getattr(transformers, tiny.config)(vocab_size=len(tokenizer), **tiny.options)
    hf_dir = out.with_name(f".{out.name}-hf")
    transformers.AutoModel.from_config(config).save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)
    transformer = Transformer(str(hf_dir), max_seq_length=MAX_SEQ_LENGTH)
    modules: list[torch.nn.Module] = [
        transformer,
        Pooling(32, pooling_mode=tiny.pooling, include_prompt=tiny.include_prompt),
    ]
    if tiny.normalize:
        modules.append(Normalize())
    st = SentenceTransformer(
        modules=modules,
        prompts=tiny.prompts or None,
        default_prompt_name=tiny.default_prompt_name,
        device="cpu",
    )
    st.save(str(out))
    shutil.rmtree(hf_dir)
    print(f"wrote {out} ({name}: {tiny.tokenizer}, {tiny.pooling} pooling)")


def save_cross_encoder(corpus: list[str], out: Path) -> None:
    """A BERT sequence classifier with one label, saved as a sentence-transformers CrossEncoder
    (sigmoid, as ``CrossEncoder.predict`` applies for one label by default)."""
    torch.manual_seed(0)
    tokenizer = hf_tokenizer(train_tokenizer("wordpiece", corpus), token_type_ids=True)
    config = transformers.BertConfig(vocab_size=len(tokenizer), num_labels=1, **BERT_LIKE)
    hf_dir = out.with_name(f".{out.name}-hf")
    transformers.AutoModelForSequenceClassification.from_config(config).save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)
    encoder = CrossEncoder(str(hf_dir), max_length=MAX_SEQ_LENGTH, device="cpu")
    encoder.save(str(out))
    shutil.rmtree(hf_dir)
    print(f"wrote {out} (cross-encoder: BERT, one label)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("output", type=Path, help="folder for the tiny-* model folders")
    parser.add_argument("--stsb", type=Path, default=DEFAULT_STSB)
    args = parser.parse_args(argv)
    corpus = sentences(args.stsb)
    args.output.mkdir(parents=True, exist_ok=True)
    for name, tiny in TINY.items():
        save_encoder(name, tiny, corpus, args.output / f"tiny-{name}")
    save_cross_encoder(corpus, args.output / "tiny-cross-encoder")
    return 0


if __name__ == "__main__":
    sys.exit(main())
