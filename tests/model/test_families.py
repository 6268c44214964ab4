"""Every supported encoder family, exported and served with parity to sentence-transformers.

The bundles are tiny random models (``scripts/tiny_models.py``, built by ``make test``): two
layers, hidden size 32, each family with a tokenizer of its own type. Their ``reference.json``
holds sentence-transformers' vectors on PyTorch, with the model's default prompt and with each
prompt by name; here the service's own model code must give the same vectors, in one pass and one
by one, without torch.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.backends.onnx.bundle import load_bundle
from app.backends.onnx.model import OnnxModel
from app.core.vectors import encode_now, l2_normalize, scorer
from tests.conftest import ROOT

TINY = ROOT / "models" / ".tiny"
EXPORT_PYTHON = ROOT / ".venv-export" / "bin" / "python"
# family: (pooling, graph inputs, layout, the tokenizer's model)
FAMILIES = {
    "bert": ("mean", "packed", "WordPiece"),
    "roberta": ("cls", "padded", "BPE"),
    "xlm-roberta": ("mean", "padded", "Unigram"),
    "mpnet": ("mean", "padded", "WordPiece"),
    "distilbert": ("max", "padded", "WordPiece"),
    "electra": ("cls", "padded", "WordPiece"),
}
WITHOUT_TOKEN_TYPES = {"roberta", "xlm-roberta", "mpnet", "distilbert"}


def bundle(name: str) -> Path:
    path = TINY / name
    if not (path / "config.json").is_file():
        pytest.fail(f"no bundle at {path}: run the tests with `make test`, which builds it")
    return path


def reference(path: Path) -> dict[str, Any]:
    return json.loads((path / "reference.json").read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def worst_cosine(
    model: OnnxModel, sentences: list[str], expected: np.ndarray, prompt: str
) -> float:
    """The worst cosine to ``expected`` over the sentences in one pass and each alone."""
    unit = l2_normalize(expected.astype(np.float32))
    batched = encode_now(model, sentences, prompt=prompt)
    alone = np.vstack([encode_now(model, [s], prompt=prompt) for s in sentences])
    return float(min((batched * unit).sum(1).min(), (alone * unit).sum(1).min()))


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_serves_with_parity_to_sentence_transformers(family: str) -> None:
    path = bundle(f"tiny-{family}")
    loaded = load_bundle(path)
    pooling, layout, tokenizer_model = FAMILIES[family]
    manifest = loaded.manifest
    assert manifest["model_type"] == family
    assert (loaded.pooling, manifest["layout"]) == (pooling, layout)
    tokenizer = json.loads((path / "tokenizer.json").read_text(encoding="utf-8"))
    assert tokenizer["model"]["type"] == tokenizer_model
    assert ("token_type_ids" in loaded.input_names) == (family not in WITHOUT_TOKEN_TYPES)

    model = OnnxModel.load(loaded)
    ref = reference(path)
    sentences = ref["sentences"]
    default = model.info.prompts.get(model.info.default_prompt_name or "", "")
    expected = np.array(ref["embeddings"])
    assert worst_cosine(model, sentences, expected, default) >= 0.9999
    # The check means something: the model tells the sentences apart.
    unit = l2_normalize(expected.astype(np.float32))
    assert (unit @ unit.T)[np.triu_indices(len(unit), 1)].min() < 0.99
    for name, vectors in ref["prompt_embeddings"].items():
        prompt = model.info.prompts[name]
        assert worst_cosine(model, sentences, np.array(vectors), prompt) >= 0.9999, name
    # The token counts of the default set-up match sentence-transformers' attention masks.
    counts = [len(r.ids) for r in model.tokenize(sentences, truncate=True, prompt=default)]
    assert counts == ref["token_counts"]


@pytest.mark.parametrize(
    ("family", "include_prompt"), [("bert", True), ("mpnet", False), ("electra", False)]
)
def test_prompts_change_the_vectors_and_pooling_honours_include_prompt(
    family: str, include_prompt: bool
) -> None:
    loaded = load_bundle(bundle(f"tiny-{family}"))
    assert loaded.include_prompt is include_prompt
    assert loaded.prompts["query"] == "query: "
    ref = reference(loaded.path)
    query = np.array(ref["prompt_embeddings"]["query"])
    passage = np.array(ref["prompt_embeddings"]["passage"])
    assert not np.allclose(query, passage, atol=1e-3)


def test_the_bert_bundle_records_its_default_prompt() -> None:
    loaded = load_bundle(bundle("tiny-bert"))
    assert loaded.default_prompt_name == "query"
    model = OnnxModel.load(loaded)
    assert model.info.prompts == {"query": "query: ", "passage": "passage: ", "document": ""}


def test_cross_encoder_logits_match_cross_encoder_predict() -> None:
    path = bundle("tiny-cross-encoder")
    loaded = load_bundle(path)
    assert (loaded.kind, loaded.activation, loaded.dimension) == ("rerank", "sigmoid", 1)
    model = OnnxModel.load(loaded)
    ref = reference(path)
    pairs = [tuple(p) for p in ref["pairs"]]
    logits = np.array(ref["logits"], dtype=np.float32)
    scores = np.array(ref["scores"], dtype=np.float32)
    batched = model.run(model.tokenize_pairs(pairs, truncate=True))
    alone = np.vstack([model.run(model.tokenize_pairs([p], truncate=True)) for p in pairs])
    for got in (batched, alone):
        assert np.abs(scorer("sigmoid", raw=False)(got) - scores).max() < 1e-5
        raw = scorer("sigmoid", raw=True)(got)
        assert (np.abs(raw - logits) / (1 + np.abs(logits))).max() < 1e-5
    assert np.ptp(scores) > 0.5  # the pairs do score differently
    # The longest pair was cut to the model's limit, longest text first.
    longest = model.tokenize_pairs([pairs[-1]], truncate=True)[0]
    assert len(longest.ids) == loaded.max_seq_length


def test_an_unsupported_family_is_refused_at_export_naming_the_supported_ones(
    tmp_path: Path,
) -> None:
    source = TINY / "sources" / "tiny-modernbert"
    if not EXPORT_PYTHON.is_file() or not source.is_dir():
        pytest.fail("the export environment and tiny models are built by `make test`")
    done = subprocess.run(
        [EXPORT_PYTHON, "scripts/export_onnx.py", "--source", source, "--output-dir", tmp_path],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
        timeout=300,
    )
    assert done.returncode == 2, done.stderr
    assert "'modernbert' models are not supported" in done.stderr
    assert "bert, roberta, xlm-roberta, mpnet, distilbert, electra" in done.stderr
    assert not any(tmp_path.iterdir())
