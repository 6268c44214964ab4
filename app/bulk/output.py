"""The job's output folder: Parquet parts, written whole or not at all, and the progress file
that says which parts are finished.

A part holds the embedded rows of a fixed range of input rows (``part_rows`` of them), so a
resumed job knows from the progress file alone which rows are done. Each part is written to a
temporary name and renamed; then ``progress.json`` is replaced (also by rename) to count it, with
the length that ``errors.jsonl`` had once that part's failed rows were appended. A job stopped at
any moment therefore leaves finished parts, at most one part that a resume writes again (the same
rows, the same file), and errors that a resume cuts back to the recorded length: no row twice.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from app.core.model import Floats, ModelKind, SparseVector

PROGRESS = "_progress.json"  # "_": Parquet readers of the folder skip it
ERRORS = "errors.jsonl"
SUCCESS = "_SUCCESS"


class Mismatch(Exception):
    """An unfinished output was made with other arguments; the message names them."""


@dataclass
class Progress:
    arguments: dict[str, Any]
    parts: int = 0  # finished parts, in order
    rows: int = 0  # input rows behind them
    embedded: int = 0
    failed: int = 0
    tokens: int = 0
    errors_bytes: int = 0


def part_path(folder: Path, index: int) -> Path:
    return folder / f"part-{index:05d}.parquet"


def start(folder: Path, arguments: dict[str, Any]) -> Progress:
    """The progress to go on from: none for a new folder, the recorded one for an unfinished job
    with the same arguments. Cleans what a stopped job left half-done."""
    folder.mkdir(parents=True, exist_ok=True)
    file = folder / PROGRESS
    if not file.exists():
        if any(folder.glob("part-*.parquet")):
            raise Mismatch(f"{folder} holds parts but no {PROGRESS}: not an output of this job")
        progress = Progress(arguments)
    else:
        recorded = json.loads(file.read_text(encoding="utf-8"))
        progress = Progress(**recorded)
        changed = sorted(
            key
            for key in arguments.keys() | progress.arguments.keys()
            if arguments.get(key) != progress.arguments.get(key)
        )
        if changed:
            raise Mismatch(
                f"{folder} holds a job run with other arguments ({', '.join(changed)} differ); "
                "run it with the same ones to go on, or write to another folder"
            )
    for leftover in folder.glob("*.tmp"):
        leftover.unlink()
    for index in range(progress.parts, progress.parts + 10_000):
        stale = part_path(folder, index)
        if not stale.exists():
            break
        stale.unlink()  # written after the last recorded progress: written again
    errors = folder / ERRORS
    with errors.open("ab") as f:
        f.truncate(progress.errors_bytes)
    return progress


def done(folder: Path) -> bool:
    return (folder / SUCCESS).exists()


def record(folder: Path, progress: Progress) -> None:
    _replace(folder / PROGRESS, json.dumps(asdict(progress), indent=1).encode())


def finish(folder: Path) -> None:
    _replace(folder / SUCCESS, b"")


def write_part(
    folder: Path,
    index: int,
    ids: list[Any],
    values: Floats | list[SparseVector],
    *,
    kind: ModelKind,
    dimension: int,
    metadata: dict[str, str],
    id_type: pa.DataType,
) -> None:
    """One part file, ``part-NNNNN.parquet`` (zstd), whole or not at all."""
    columns: dict[str, pa.Array] = {"id": pa.array(ids, type=id_type)}
    if kind == ModelKind.SPARSE:
        vectors: list[SparseVector] = values  # type: ignore[assignment]
        columns["indices"] = pa.array([v.indices for v in vectors], type=pa.list_(pa.int32()))
        columns["values"] = pa.array([v.values for v in vectors], type=pa.list_(pa.float32()))
    else:
        dense = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
        flat = pa.array(dense, type=pa.float32())
        columns["embedding"] = pa.FixedSizeListArray.from_arrays(flat, dimension)
    table = pa.table(columns).replace_schema_metadata(metadata)
    target = part_path(folder, index)
    temporary = target.with_suffix(".parquet.tmp")
    pq.write_table(table, temporary, compression="zstd")
    temporary.replace(target)


def append_errors(folder: Path, errors: list[dict[str, Any]]) -> int:
    """Append ``errors`` to ``errors.jsonl``; its length after."""
    with (folder / ERRORS).open("ab") as f:
        for error in errors:
            f.write(json.dumps(error, default=str).encode() + b"\n")
        f.flush()
        os.fsync(f.fileno())
        return f.tell()


def _replace(target: Path, content: bytes) -> None:
    temporary = target.with_name(target.name + ".tmp")
    with temporary.open("wb") as f:
        f.write(content)
        f.flush()
        os.fsync(f.fileno())
    temporary.replace(target)
