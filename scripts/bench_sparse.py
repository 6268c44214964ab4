"""The SPLADE model in-process, against the same model on PyTorch: part of ``make bench``.

Both sides get the same texts sorted by length and cut into batches of 32 (the engine's also
within ``EMBED_MAX_SPARSE_PASS_TOKENS``, as the server cuts them): STS-B's sentences, and 600
passages of 150 to 256 tokens made of consecutive STS-B sentences. PyTorch runs
``AutoModelForMaskedLM`` and the SPLADE formula on every core; the engine runs the exported
bundle as the server does, one pass per core on one thread each. The goal is at least 1.5x
PyTorch on sentences; the vocabulary projection is one GEMM both run at the same speed, so the
gain has to come from padding and overhead. Run alone::

    .venv-export/bin/python scripts/bench_sparse.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

from bench import MODELS, ROOT, peak_rss_mb, run_batches, sentences

BUNDLE = MODELS / "splade-tiny"
SOURCE = MODELS / ".sources" / "splade-tiny"
BATCH = 32
PASS_TOKENS = 2048  # EMBED_MAX_SPARSE_PASS_TOKENS's default
PASSAGES = 600
GOAL = 1.5


def passages(texts: list[str], count: int = PASSAGES) -> list[str]:
    """Consecutive sentences joined until each passage holds 150 to 256 tokens."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(BUNDLE / "tokenizer.json"))
    made, current, length = [], [], 2
    for text in texts:
        current.append(text)
        length += len(tokenizer.encode(text, add_special_tokens=False).ids)
        if length >= 150:
            if length <= 256:
                made.append(" ".join(current))
            current, length = [], 2
            if len(made) == count:
                break
    return made


def case_pytorch(texts: list[str]) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    torch.set_num_threads(os.cpu_count() or 1)
    model = AutoModelForMaskedLM.from_pretrained(str(SOURCE)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(SOURCE))
    ordered = sorted(texts, key=lambda t: len(tokenizer(t)["input_ids"]))

    def run(batch: list[str]) -> None:
        inputs = tokenizer(
            batch, padding=True, truncation=True, max_length=256, return_tensors="pt"
        )
        logits = model(**inputs).logits
        weights = torch.log1p(torch.relu(logits)) * inputs["attention_mask"][:, :, None]
        weights.amax(dim=1)

    with torch.no_grad():
        run(ordered[:BATCH])
        started = time.perf_counter()
        tokens = 0
        for start in range(0, len(ordered), BATCH):
            batch = ordered[start : start + BATCH]
            tokens += sum(
                len(ids) for ids in tokenizer(batch, truncation=True, max_length=256)["input_ids"]
            )
            run(batch)
    return {"seconds": time.perf_counter() - started, "tokens": tokens}


def case_engine(texts: list[str]) -> dict[str, Any]:
    from app.backends.onnx.bundle import load_bundle
    from app.backends.onnx.model import OnnxModel

    workers = os.cpu_count() or 1
    model = OnnxModel.load(load_bundle(BUNDLE), intra_op_threads=1)
    model.run(model.tokenize(texts[:BATCH], truncate=True))
    started = time.perf_counter()
    ordered = sorted(model.tokenize(texts, truncate=True), key=lambda e: len(e.ids))
    batches: list[list[Any]] = [[]]
    for row in ordered:  # batches of 32 rows, within the pass's token cap (rows x longest)
        batch = batches[-1]
        if batch and (len(batch) == BATCH or (len(batch) + 1) * len(row.ids) > PASS_TOKENS):
            batches.append(batch := [])
        batch.append(row)
    run_batches(model, batches, workers)
    return {"seconds": time.perf_counter() - started, "tokens": sum(len(r.ids) for r in ordered)}


def run_child(case: str, which: str) -> dict[str, Any]:
    command = [sys.executable, __file__, "--case", case, "--texts", which]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    output = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    return dict(json.loads(output.stdout.strip().splitlines()[-1]))


def section() -> tuple[str, bool]:
    """The benchmark's sparse section in Markdown, and whether the goal was met."""
    rows, ratios = [], {}
    for which in ("sentences", "passages"):
        print(f"sparse {which}: PyTorch, engine ...", flush=True)
        torch_run, engine_run = run_child("pytorch", which), run_child("engine", which)
        count = len(sentences()) if which == "sentences" else PASSAGES
        ratios[which] = torch_run["seconds"] / engine_run["seconds"]
        for name, run in (
            ("PyTorch, AutoModelForMaskedLM + formula", torch_run),
            ("engine (the exported bundle)", engine_run),
        ):
            rows.append(
                f"| splade-tiny {which}, {name} | {count / run['seconds']:,.0f} | "
                f"{run['tokens'] / run['seconds']:,.0f} | {run['peak_rss_mb']:,.0f} |"
            )
    ok = ratios["sentences"] >= GOAL
    lines = [
        "## Sparse (SPLADE)",
        "",
        f"splade-tiny in-process, texts sorted by length, batches of {BATCH} (the engine's also "
        f"within {PASS_TOKENS} padded tokens per pass); {PASSAGES} passages of 150-256 tokens "
        "from consecutive STS-B sentences.",
        "",
        "| configuration | texts/s | tokens/s | peak RSS MB |",
        "|---|---:|---:|---:|",
        *rows,
        "",
        f"Engine over PyTorch: {ratios['sentences']:.2f}x on sentences (goal >= {GOAL}x: "
        f"{'met' if ok else '**missed**'}), {ratios['passages']:.2f}x on passages (reported).",
        "",
    ]
    return "\n".join(lines), ok


def main() -> int:
    if "--case" in sys.argv:
        case = sys.argv[sys.argv.index("--case") + 1]
        which = sys.argv[sys.argv.index("--texts") + 1]
        texts = sentences() if which == "sentences" else passages(sentences())
        result = case_pytorch(texts) if case == "pytorch" else case_engine(texts)
        print(json.dumps({**result, "peak_rss_mb": peak_rss_mb()}))
        return 0
    text, ok = section()
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
