"""The bulk job's figures, side by side in one run (a section of ``make bench``; alone:
``.venv-export/bin/python scripts/bench_bulk.py``).

1. The engine in-process: a sweep picks its best set-up on these texts among
   ``scripts/bench.py``'s measure (tokenize, sort by length, run fixed batches) on both thread
   layouts with three batch sizes, and the engine through its own batcher and planner as the
   server and the job run it (requests of 256 texts, four in flight, nothing read or written).
2. Then ``ROUNDS`` interleaved rounds, each of: the engine in its best set-up over the same
   50,000 texts (so that both are timed over the same work and stretch of time), the local job
   (``python -m app.bulk``) on 50,000 STS-B rows (the test set's sentences, over and over) as a
   file, and the same rows with ``--ray`` on this machine. Each figure is the median of its
   rounds, so that a noisy minute on this shared machine falls on all three alike and a lucky
   run does not stand for the engine. The job's rate is its own summary's, from after the model
   is loaded to the last part written (reading, tokenizing, embedding, writing); Ray's from after
   ``ray.init``, so it also pays for starting its actor and loading the model there.
   Targets: the local job at least 95% of the engine's best, Ray at least 80% of the local job.
3. The same for 300 passages of 150 to 256 tokens (no target).
4. Peak resident memory of the local job on 10,000 and 100,000 rows of the real model.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import BUNDLES, MODELS, sentences  # noqa: E402

BULK_PYTHON = ROOT / ".venv-bulk" / "bin" / "python"
ROWS = 50_000
PASSAGES = 300
MEMORY_ROWS = (10_000, 100_000)
BATCHES = (16, 32, 64)
ROUNDS = 3


def passages(texts: list[str], count: int) -> list[str]:
    """``count`` passages of 150 to 256 tokens: STS-B sentences joined until long enough."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(MODELS / BUNDLES["fp32"] / "tokenizer.json"))
    made: list[str] = []
    current: list[str] = []
    i = 0
    while len(made) < count:
        current.append(texts[i % len(texts)])
        i += 1
        tokens = len(tokenizer.encode(" ".join(current)).ids)
        if tokens >= 150:
            if tokens <= 256:
                made.append(" ".join(current))
            current = []
    return made


def engine_case(texts_file: Path, workers: int, batch: int) -> dict[str, Any]:
    """A child: the engine's timed run over the texts. ``batch`` > 0: bench.py's own measure
    (tokenize, sort, fixed batches on ``workers`` threads); 0: the engine as the service and the
    job run it, through its batcher and planner, in the job's requests and number in flight,
    with nothing read or written (this child runs in the bulk environment)."""
    texts = texts_file.read_text(encoding="utf-8").splitlines()
    if batch == 0:
        seconds = _through_the_batcher(texts)
        return {"rows_per_s": len(texts) / seconds, "workers": workers, "batch": batch}
    from bench import _timed_run, _warm_model

    model = _warm_model(BUNDLES["fp32"], texts, workers)
    run = _timed_run(model, texts, batch, workers)
    return {"rows_per_s": len(texts) / run["seconds"], "workers": workers, "batch": batch}


def _through_the_batcher(texts: list[str]) -> float:
    import asyncio
    import time

    from app.bulk.__main__ import open_engine
    from app.bulk.job import CHUNK_ROWS, IN_FLIGHT
    from app.config import Settings

    bundle = MODELS / BUNDLES["fp32"]
    engine = open_engine(Settings(model_dir=bundle), bundle, None)
    engine.warm_up()

    async def run() -> float:
        gate = asyncio.Semaphore(IN_FLIGHT)

        async def one(chunk: list[str]) -> None:
            async with gate:
                await engine.embed(chunk)

        started = time.perf_counter()
        chunks = [texts[i : i + CHUNK_ROWS] for i in range(0, len(texts), CHUNK_ROWS)]
        await asyncio.gather(*(one(chunk) for chunk in chunks))
        return time.perf_counter() - started

    try:
        return asyncio.run(run())
    finally:
        engine.close()


def engine(texts_file: Path, workers: int, batch: int) -> dict[str, Any]:
    """One timed run of the engine, in a child of its own."""
    python = BULK_PYTHON if batch == 0 else Path(sys.executable)
    command = [str(python), __file__, "engine", str(texts_file), str(workers), str(batch)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT, env=env)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def engine_best(texts_file: Path) -> dict[str, Any]:
    """The engine's best set-up on these texts: both thread layouts with each batch size, and
    the engine through its own batcher (batch 0), one worker per core."""
    cores = os.cpu_count() or 1
    runs = [engine(texts_file, w, b) for w in sorted({1, cores}) for b in BATCHES]
    runs.append(engine(texts_file, cores, 0))
    return max(runs, key=lambda r: r["rows_per_s"])


def median(runs: list[dict[str, Any]]) -> float:
    return float(statistics.median(r["rows_per_s"] for r in runs))


def rounds(
    sweep_file: Path, rows_file: Path, corpus: Path, folder: Path, *job_args: str
) -> dict[str, list[Any]]:
    """``ROUNDS`` interleaved rounds of the engine's best set-up (found on ``sweep_file``), the
    local job and Ray. The engine runs over the same rows as the job (``rows_file``), so that
    both are timed over the same work and the same stretch of time."""
    best = engine_best(sweep_file)
    runs: dict[str, list[Any]] = {"engine": [], "local": [], "ray": []}
    for r in range(ROUNDS):
        print(f"bulk: {corpus.stem}, round {r + 1} of {ROUNDS} ...", flush=True)
        runs["engine"].append(engine(rows_file, best["workers"], best["batch"]))
        runs["local"].append(job(corpus, folder / f"{corpus.stem}-local-{r}", *job_args))
        if job_args:  # Ray takes ids from a field
            runs["ray"].append(job(corpus, folder / f"{corpus.stem}-ray-{r}", *job_args, "--ray"))
        each = {name: round(done[-1]["rows_per_s"], 1) for name, done in runs.items() if done}
        print("  rows/s:", each, flush=True)
    return runs


def job(*args: Any) -> dict[str, Any]:
    """Run the bulk job; its summary's figures and its peak RSS (this child's, from wait4)."""
    with tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(
            [BULK_PYTHON, "-m", "app.bulk", *map(str, args), "--quiet"],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
        assert process.stdout is not None
        with process.stdout:
            out = process.stdout.read()
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            err.seek(0)
            raise SystemExit(f"bulk job failed: {out}{err.read()[-3000:]}")
    summary = out.strip().splitlines()[-1]
    rate = float(re.search(r"([\d.]+) rows/s", summary).group(1))  # type: ignore[union-attr]
    seconds = float(re.search(r"([\d.]+) s,", summary).group(1))  # type: ignore[union-attr]
    peak_mb = usage.ru_maxrss / 1024
    return {"rows_per_s": rate, "seconds": seconds, "summary": summary, "peak_mb": peak_mb}


def section() -> tuple[str, bool]:
    """Measure everything; the Markdown section and whether the targets hold."""
    texts = sentences()
    rows = [texts[i % len(texts)] for i in range(ROWS)]
    long = passages(texts, PASSAGES)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        sentence_file, passage_file = folder / "sentences.txt", folder / "passages.txt"
        sentence_file.write_text("\n".join(texts) + "\n", encoding="utf-8")
        passage_file.write_text("\n".join(long) + "\n", encoding="utf-8")
        corpus = folder / "corpus.jsonl"
        corpus.write_text(
            "".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(rows)),
            encoding="utf-8",
        )
        rows_file = folder / "rows.txt"
        rows_file.write_text("\n".join(rows) + "\n", encoding="utf-8")
        sentence_runs = rounds(sentence_file, rows_file, corpus, folder, "--id-field", "id")
        passage_runs = rounds(passage_file, passage_file, passage_file, folder)
        memory = {}
        for count in MEMORY_ROWS:
            print(f"bulk: memory on {count:,} rows ...", flush=True)
            part = folder / f"rows-{count}.txt"
            part.write_text("\n".join(rows[i % ROWS] for i in range(count)) + "\n")
            memory[count] = job(part, folder / f"memory-{count}")
    best_sentences, best_passages = median(sentence_runs["engine"]), median(passage_runs["engine"])
    local, local_passages = median(sentence_runs["local"]), median(passage_runs["local"])
    on_ray = median(sentence_runs["ray"])
    sentence_ratio, ray_ratio = local / best_sentences, on_ray / local
    ok = sentence_ratio >= 0.95 and ray_ratio >= 0.80
    small, large = (memory[c] for c in MEMORY_ROWS)
    setup = sentence_runs["engine"][0]
    if setup["batch"]:
        chosen = f"{setup['workers']} worker(s), batches of {setup['batch']}"
    else:
        chosen = "through its own batcher, one worker per core"
    table = [
        ("engine in-process, sentences (best set-up)", best_sentences, 1.0, ""),
        (f"`python -m app.bulk`, {ROWS:,} rows of JSONL", local, sentence_ratio, ">= 0.95"),
        (
            "`python -m app.bulk --ray`, the same rows",
            on_ray,
            on_ray / best_sentences,
            f"Ray / local {ray_ratio:.2f} >= 0.80",
        ),
        ("engine in-process, passages (best set-up)", best_passages, 1.0, ""),
        (
            f"`python -m app.bulk`, {PASSAGES:,} passages",
            local_passages,
            local_passages / best_passages,
            "",
        ),
    ]
    each = "; ".join(
        f"{name} " + ", ".join(f"{r['rows_per_s']:.0f}" for r in sentence_runs[name])
        for name in ("engine", "local", "ray")
    )
    lines = "\n".join(
        f"| {name} | {rate:.1f} | {ratio:.2f} | {target} |" for name, rate, ratio, target in table
    )
    text = f"""## The bulk job

{ROWS:,} STS-B rows (the test set's sentences, over and over) and {PASSAGES:,} passages of 150
to 256 tokens; the fp32 bundle; each job's rate from its own summary (after the model is loaded;
Ray's after `ray.init`). Medians of {ROUNDS} interleaved rounds, the engine in the best set-up of
a sweep ({chosen}).

| | rows/s | vs the engine's best | target |
|---|---:|---:|---|
{lines}

Each round on sentences, rows/s: {each}.

Peak resident memory of the local job: {small["peak_mb"]:.0f} MB on {MEMORY_ROWS[0]:,} rows,
{large["peak_mb"]:.0f} MB on {MEMORY_ROWS[1]:,} (`{large["summary"]}`).

Targets: {"met" if ok else "MISSED"}.
"""
    return text, ok


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "engine":
        print(json.dumps(engine_case(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))))
        sys.exit(0)
    report, met = section()
    print(report)
    sys.exit(0 if met else 1)
