"""The bulk job, run as users run it: ``.venv-bulk/bin/python -m app.bulk`` in its own process,
on real bundles, its Parquet read back here and held to the service's own vectors."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from app.core.engine import Engine
from app.core.vectors import encode_now
from tests.conftest import ROOT

BULK_PYTHON = ROOT / ".venv-bulk" / "bin" / "python"
SPLADE = ROOT / "models" / "splade-tiny"
# What each bad row of ``corpus`` is refused for.
BAD: dict[str, dict[str, Any]] = {
    "null": {"doc": "bad-null", "text": None},
    "not a string but int": {"doc": "bad-int", "text": 5},
    "no field 'text'": {"doc": "bad-missing"},
    "characters; the limit is 100000": {"doc": "bad-long", "text": "x" * 100_001},
}


# The job's vectors are compared with the server's in fp32 (bf16, where a CPU has it, is
# tested apart).
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "EMBED_PRECISION": "fp32"}


def bulk(*args: Any, check: int | None = 0, **popen: Any) -> subprocess.CompletedProcess[str]:
    if not BULK_PYTHON.is_file():
        pytest.fail("no .venv-bulk: run the tests with `make test`, which builds it")
    done = subprocess.run(
        [BULK_PYTHON, "-m", "app.bulk", *map(str, args)],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
        **popen,
    )
    if check is not None:
        assert done.returncode == check, done.stdout + done.stderr
    return done


def parts(folder: Path) -> pa.Table:
    return pq.read_table(sorted(folder.glob("part-*.parquet")))


def sentences(stsb: list[tuple[float, str, str]], n: int) -> list[str]:
    return [s for _, a, b in stsb for s in (a, b)][:n]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_jsonl_with_bad_rows_gives_every_good_row_in_order_and_lists_the_rest(
    engine: Engine, stsb: list[tuple[float, str, str]], tmp_path: Path
) -> None:
    texts = sentences(stsb, 300)
    rows: list[dict[str, Any]] = [{"doc": f"d{i}", "text": t} for i, t in enumerate(texts)]
    for offset, bad in enumerate(BAD.values()):
        rows.insert(50 * offset + 7, bad)
    source = write_jsonl(tmp_path / "corpus.jsonl", rows)
    out = tmp_path / "out"
    done = bulk(source, out, "--id-field", "doc", "--quiet", check=1)
    assert done.stdout.startswith(f"done: {len(rows)} rows, ") and "4 failed" in done.stdout
    table = parts(out)
    assert table.column("id").to_pylist() == [f"d{i}" for i in range(len(texts))]
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 384)
    metadata = {k.decode(): v.decode() for k, v in table.schema.metadata.items()}
    assert metadata["embed.model"] == "all-MiniLM-L6-v2" and metadata["embed.kind"] == "dense"
    assert metadata["embed.dimension"] == "384" and len(metadata["embed.model_sha256"]) == 64
    vectors = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
    assert np.abs(vectors - encode_now(engine.model, texts)).max() < 1e-5
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert [e["id"] for e in errors] == [b["doc"] for b in BAD.values()]
    assert [rows[e["row"]]["doc"] for e in errors] == [e["id"] for e in errors]
    for error, says in zip(errors, BAD, strict=True):
        assert says in error["reason"]
    assert (out / "_SUCCESS").exists()
    # --allow-failures: the same job, exit 0.
    assert bulk(source, out, "--id-field", "doc", "--quiet", "--allow-failures").returncode == 0


@pytest.mark.parametrize("fmt", ["csv", "tsv", "parquet", "txt"])
def test_every_format_gives_the_same_vectors(
    fmt: str, engine: Engine, stsb: list[tuple[float, str, str]], tmp_path: Path
) -> None:
    texts = sentences(stsb, 40)
    source = tmp_path / f"corpus.{fmt}"
    id_args: list[str] = []
    if fmt == "txt":
        source.write_text("".join(t + "\n" for t in texts), encoding="utf-8")
        expected_ids: list[Any] = list(range(len(texts)))
    elif fmt == "parquet":
        ids = list(range(1000, 1000 + len(texts)))
        pq.write_table(pa.table({"key": ids, "body": texts}), source)
        id_args, expected_ids = ["--id-field", "key", "--text-field", "body"], ids
    else:
        with source.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, delimiter="\t" if fmt == "tsv" else ",")
            writer.writerow(["key", "body"])
            writer.writerows([f"k{i}", t] for i, t in enumerate(texts))
        id_args = ["--id-field", "key", "--text-field", "body"]
        expected_ids = [f"k{i}" for i in range(len(texts))]
    out = tmp_path / "out"
    bulk(source, out, *id_args, "--quiet")
    table = parts(out)
    assert table.column("id").to_pylist() == expected_ids
    vectors = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
    assert np.abs(vectors - encode_now(engine.model, texts)).max() < 1e-5


def test_a_sparse_model_writes_indices_and_values(
    stsb: list[tuple[float, str, str]], tmp_path: Path
) -> None:
    texts = sentences(stsb, 20)
    source = tmp_path / "corpus.txt"
    source.write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    bulk(source, tmp_path / "out", "--model", SPLADE, "--quiet")
    table = parts(tmp_path / "out")
    assert table.schema.field("indices").type == pa.list_(pa.int32())
    assert table.schema.field("values").type == pa.list_(pa.float32())
    assert table.schema.metadata[b"embed.kind"] == b"sparse"
    values = table.column("values").to_pylist()
    assert all(v and v == sorted(v, reverse=True) for v in values)


def test_a_job_killed_mid_run_goes_on_where_it_stopped(
    stsb: list[tuple[float, str, str]], tmp_path: Path
) -> None:
    # 24 parts of 50: three stops, each after at least two more parts, leave most of the job to
    # do (with 12 parts a slow signal once let the job finish before the third stop).
    texts = sentences(stsb, 1200)
    source = write_jsonl(tmp_path / "corpus.jsonl", [{"text": t} for t in texts])
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    small = ["--part-rows", "50", "--quiet"]
    bulk(source, whole, *small)
    for how in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT):
        job = subprocess.Popen(
            [BULK_PYTHON, "-m", "app.bulk", source, stopped, *small],
            cwd=ROOT,
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        progress = stopped / "_progress.json"
        deadline = time.monotonic() + 120
        start = json.loads(progress.read_text())["parts"] if progress.exists() else 0
        while time.monotonic() < deadline:
            if progress.exists() and json.loads(progress.read_text())["parts"] >= start + 2:
                break
            time.sleep(0.05)
        job.send_signal(how)
        _, stderr = job.communicate(timeout=30)
        assert job.returncode != 0
        if how != signal.SIGKILL:
            assert "run the same command to go on" in stderr
        assert not (stopped / "_SUCCESS").exists()
    done = bulk(source, stopped, *small)
    assert done.stdout.startswith(f"done: {len(texts)} rows")
    got, expected = parts(stopped), parts(whole)
    assert got.column("id").to_pylist() == list(range(len(texts)))  # each once, in order
    a = np.stack(got.column("embedding").to_numpy(zero_copy_only=False))
    b = np.stack(expected.column("embedding").to_numpy(zero_copy_only=False))
    assert np.abs(a - b).max() < 1e-5


def test_a_resume_with_other_arguments_is_refused(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "corpus.jsonl", [{"text": "a"}, {"text": "b"}])
    out = tmp_path / "out"
    bulk(source, out, "--quiet", "--limit", "1")
    done = bulk(source, out, "--quiet", "--limit", "1", "--no-normalize", check=2)
    assert "other arguments (normalize differ)" in done.stderr
    source.write_text('{"text": "a"}\n{"text": "changed"}\n', encoding="utf-8")
    done = bulk(source, out, "--quiet", "--limit", "1", check=2)
    assert "input_mtime_ns" in done.stderr or "input_size" in done.stderr


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["missing.jsonl"], "no input file"),
        (["corpus.jsonl", "--text-field", "body", "--format", "csv"], "no column 'body'"),
        (["corpus.json"], "cannot tell the format"),
        (["corpus.jsonl", "--prompt-name", "passage"], "has no prompt named 'passage'"),
        (["corpus.jsonl", "--model", "nope"], "does not exist"),
        (["corpus.jsonl", "--limit", "0"], "--limit must be at least 1"),
    ],
)
def test_what_stops_the_job_is_exit_code_2_with_one_line(
    args: list[str], says: str, tmp_path: Path
) -> None:
    write_jsonl(tmp_path / "corpus.jsonl", [{"text": "a"}])
    (tmp_path / "corpus.json").write_text("{}")
    first, *rest = args
    done = bulk(tmp_path / first, tmp_path / "out", *rest, check=2)
    assert says in done.stderr
    assert "Traceback" not in done.stderr


def test_on_ray_the_output_equals_the_local_jobs(
    stsb: list[tuple[float, str, str]], tmp_path: Path
) -> None:
    texts = sentences(stsb, 2000)
    rows = [{"doc": f"d{i}", "text": t} for i, t in enumerate(texts)] + [
        {"doc": "bad", "text": None}
    ]
    source = write_jsonl(tmp_path / "corpus.jsonl", rows)
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    bulk(source, local, "--id-field", "doc", "--quiet", check=1)
    done = bulk(source, on_ray, "--id-field", "doc", "--quiet", "--ray", check=1)
    assert "1 failed" in done.stdout
    ray_table = pq.read_table(sorted(on_ray.glob("*.parquet")))
    ours = parts(local)
    assert sorted(ray_table.column("id").to_pylist()) == sorted(ours.column("id").to_pylist())
    by_id = dict(
        zip(
            ray_table.column("id").to_pylist(),
            ray_table.column("embedding").to_pylist(),
            strict=True,
        )
    )
    expected = np.stack(ours.column("embedding").to_numpy(zero_copy_only=False))
    got = np.array([by_id[i] for i in ours.column("id").to_pylist()], dtype=np.float32)
    assert np.abs(got - expected).max() < 1e-6
    assert ray_table.schema.metadata[b"embed.model"] == b"all-MiniLM-L6-v2"
    errors = [json.loads(line) for line in (on_ray / "errors.jsonl").read_text().splitlines()]
    assert errors == [{"id": "bad", "row": None, "reason": "null"}]


def peak_rss_kb(*args: Any) -> tuple[int, str]:
    """Run the job; its peak resident memory (this child's own, from wait4) and its stdout."""
    job = subprocess.Popen(
        [BULK_PYTHON, "-m", "app.bulk", *map(str, args)],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert job.stdout is not None
    with job.stdout:
        printed = job.stdout.read()
    _, status, usage = os.wait4(job.pid, 0)
    job.returncode = os.waitstatus_to_exitcode(status)
    assert job.returncode == 0, printed
    return usage.ru_maxrss, printed


def test_memory_is_bounded_by_the_batch_not_the_input(
    stsb: list[tuple[float, str, str]], tmp_path: Path
) -> None:
    """A million rows at the peak memory of ten thousand, on a tiny model (two layers, hidden
    size 32) so that reading, tokenizing and writing dominate, as they would for memory."""
    texts = sentences(stsb, 5000)
    big = tmp_path / "big.txt"
    with big.open("w", encoding="utf-8") as f:
        for start in range(0, 1_000_000, len(texts)):
            f.writelines(f"{t}\n" for t in texts[: 1_000_000 - start])
    small = tmp_path / "small.txt"
    small.write_text("".join(f"{t}\n" for t in (texts * 2)[:10_000]), encoding="utf-8")
    model = ["--model", ROOT / "models" / ".tiny" / "tiny-bert", "--quiet"]
    small_kb, _ = peak_rss_kb(small, tmp_path / "small-out", *model)
    big_kb, printed = peak_rss_kb(big, tmp_path / "big-out", *model)
    print(f"\npeak RSS: 10,000 rows {small_kb / 1024:.0f} MB, a million {big_kb / 1024:.0f} MB")
    print(printed.strip())
    assert printed.startswith("done: 1000000 rows")
    assert big_kb <= small_kb * 1.10
