"""The local bulk job: read, embed on the service's own engine, write Parquet parts, in order.

Reading, checking and writing run on the event loop while the engine's workers run passes: up
to ``IN_FLIGHT`` chunks are queued at once, so the cores never wait for the reader, and memory is
bounded by those chunks and one part, never by the input.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from app.bulk import output
from app.bulk.progress import Meter
from app.bulk.sources import Record
from app.core.engine import Engine
from app.core.model import ModelKind
from app.errors import InputTooLong

IN_FLIGHT = 4  # chunks queued on the engine at once
CHUNK_ROWS = 256


@dataclass(frozen=True)
class Plan:
    """How the job writes: where, in parts of how many input rows, with what columns."""

    folder: Path
    part_rows: int
    kind: ModelKind
    dimension: int
    normalize: bool
    truncate: bool
    prompt: str
    id_type: pa.DataType
    metadata: dict[str, str]
    meter: Meter


@dataclass
class Part:
    """The rows of one part so far: ids and vectors of the embedded ones, the failed ones."""

    index: int
    ids: list[Any] = field(default_factory=list)
    values: list[Any] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    tokens: int = 0


@dataclass
class Chunk:
    """Rows read together: those sent to the engine, and why each other one was not."""

    records: list[Record]
    valid: list[Record]
    reasons: dict[int, str]  # by row
    work: asyncio.Task[tuple[Any, int, dict[int, str]]]


def problem(text: Any, max_chars: int) -> str | None:
    """Why a row's text cannot be embedded, or None."""
    if text is None:
        return "null"
    if not isinstance(text, str):
        return f"not a string but {type(text).__name__}"
    if len(text) > max_chars:
        return f"{len(text)} characters; the limit is {max_chars} (EMBED_MAX_INPUT_CHARS)"
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return "not valid UTF-8 text"
    return None


async def run(
    engine: Engine, records: Iterator[Record], plan: Plan, progress: output.Progress
) -> output.Progress:
    """Embed ``records`` (those after the finished rows) into the parts after ``progress``.

    Chunks are settled in order, ``IN_FLIGHT`` at a time, and a part is written as soon as its
    last chunk is settled, while the next part's chunks are already on the engine: the workers
    never wait for a part to be written."""
    part = Part(progress.parts)
    pending: deque[Chunk] = deque()
    for records_in_chunk in _chunks(records, plan.part_rows):
        pending.append(_submit(engine, records_in_chunk, plan))
        while len(pending) >= IN_FLIGHT:
            part, progress = await _settle(pending.popleft(), part, plan, progress)
    while pending:
        part, progress = await _settle(pending.popleft(), part, plan, progress)
    if part.ids or part.errors:
        rows = progress.rows + len(part.ids) + len(part.errors)
        progress = _commit(part, rows, plan, progress)
    return progress


def _chunks(records: Iterator[Record], part_rows: int) -> Iterator[list[Record]]:
    """Chunks of at most ``CHUNK_ROWS`` rows that never cross a part's boundary."""
    buffer: list[Record] = []
    for record in records:
        buffer.append(record)
        if len(buffer) == CHUNK_ROWS or (record.row + 1) % part_rows == 0:
            yield buffer
            buffer = []
    if buffer:
        yield buffer


def _submit(engine: Engine, records: list[Record], plan: Plan) -> Chunk:
    valid, reasons = [], {}
    for record in records:
        reason = record.missing or problem(record.text, engine.limits.max_input_chars)
        if reason is None:
            valid.append(record)
        else:
            reasons[record.row] = reason
    return Chunk(records, valid, reasons, asyncio.create_task(_embed(engine, valid, plan)))


async def _settle(
    chunk: Chunk, part: Part, plan: Plan, progress: output.Progress
) -> tuple[Part, output.Progress]:
    """Await ``chunk`` and add it to ``part``; if it ends the part, write the part and go on
    with the next one."""
    values, tokens, refused = await chunk.work
    embedded = [r for r in chunk.valid if r.row not in refused]
    reasons = chunk.reasons | refused
    for record in chunk.records:
        if record.row in reasons:
            error = {"id": record.id, "row": record.row, "reason": reasons[record.row]}
            part.errors.append(error)
    part.ids += [r.id for r in embedded]
    part.values += list(values)
    part.tokens += tokens
    plan.meter.advance(len(chunk.records), tokens, failed=len(chunk.records) - len(embedded))
    last_row = chunk.records[-1].row
    if (last_row + 1) % plan.part_rows:
        return part, progress
    return Part(part.index + 1), _commit(part, last_row + 1, plan, progress)


async def _embed(
    engine: Engine, records: list[Record], plan: Plan
) -> tuple[Any, int, dict[int, str]]:
    """The vectors of ``records`` in order, their tokens, and the rows refused (over the model's
    limit with ``--no-truncate``) with the reason."""
    refused: dict[int, str] = {}
    while True:
        left = [r for r in records if r.row not in refused]
        if not left:
            return [], 0, refused
        texts = [r.text for r in left]
        try:
            if plan.kind == ModelKind.SPARSE:
                outcome: Any = await engine.embed_sparse(
                    texts, truncate=plan.truncate, prompt=plan.prompt
                )
            else:
                outcome = await engine.embed(
                    texts, normalize=plan.normalize, truncate=plan.truncate, prompt=plan.prompt
                )
            return outcome.values, outcome.tokens, refused
        except InputTooLong as exc:  # "input N has ... tokens, more than ..." names one
            index = int(exc.message.split()[1])
            refused[left[index].row] = exc.message.split(" ", 2)[2]


def _commit(part: Part, rows: int, plan: Plan, progress: output.Progress) -> output.Progress:
    """Write the part, append its errors, then record it as finished."""
    if part.ids:
        values = part.values if plan.kind == ModelKind.SPARSE else np.vstack(part.values)
        output.write_part(
            plan.folder,
            part.index,
            part.ids,
            values,
            kind=plan.kind,
            dimension=plan.dimension,
            metadata=plan.metadata,
            id_type=plan.id_type,
        )
    errors_bytes = progress.errors_bytes
    if part.errors:
        errors_bytes = output.append_errors(plan.folder, part.errors)
    progress = replace(
        progress,
        parts=part.index + 1,
        rows=rows,
        embedded=progress.embedded + len(part.ids),
        failed=progress.failed + len(part.errors),
        tokens=progress.tokens + part.tokens,
        errors_bytes=errors_bytes,
    )
    output.record(plan.folder, progress)
    return progress
