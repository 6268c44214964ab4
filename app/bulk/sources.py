"""Reading a corpus row by row, streaming: JSONL, CSV, TSV, Parquet or plain text.

Each row comes out as a ``Record``: its position in the input (from 0), its id (the id field's
value, or the position), and its text, or why it has none. A row that cannot be embedded is not
an error here: the job writes it to ``errors.jsonl`` and goes on. What stops the job (exit code 2)
is an input that cannot be read at all: no such file, a format that is not one of these, a column
the file does not have.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FORMATS = {".jsonl": "jsonl", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".txt": "txt"}


class BadInput(Exception):
    """The input cannot be read as asked; the message says why, in one line."""


@dataclass(frozen=True, slots=True)
class Record:
    row: int
    id: Any
    text: Any  # the field's value, not yet checked
    missing: str | None = None  # why the row has no text field at all


def format_of(path: Path, override: str | None) -> str:
    if override:
        return override
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise BadInput(
            f"cannot tell the format of {path} from its extension; name one with --format "
            f"({', '.join(FORMATS.values())})"
        )
    return fmt


def count_rows(path: Path, fmt: str) -> int | None:
    """How many rows the input holds, where that is cheap to know: Parquet's metadata, or the
    lines of a text or JSONL file (a fast scan of the bytes). None for CSV and TSV, whose quoted
    fields may span lines."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(path).metadata.num_rows)
    if fmt in ("txt", "jsonl"):
        lines, last = 0, b"\n"
        with path.open("rb") as f:
            while block := f.read(1 << 20):
                lines += block.count(b"\n")
                last = block[-1:]
        return lines + (last != b"\n")
    return None


def read(path: Path, fmt: str, *, text_field: str, id_field: str | None) -> Iterator[Record]:
    """The input's rows in order. Raises ``BadInput`` before the first row when the file or a
    named column is missing."""
    if not path.is_file():
        raise BadInput(f"no input file at {path}")
    readers = {"jsonl": _jsonl, "csv": _csv, "tsv": _csv, "parquet": _parquet, "txt": _text}
    if fmt not in readers:
        raise BadInput(f"unknown format {fmt!r}; one of {', '.join(readers)}")
    return readers[fmt](path, fmt, text_field, id_field)


def _text(path: Path, fmt: str, text_field: str, id_field: str | None) -> Iterator[Record]:
    del fmt, text_field
    if id_field:
        raise BadInput("a plain-text input has no fields: drop --id-field (ids are line numbers)")
    return _lines(path)


def _lines(path: Path) -> Iterator[Record]:
    with path.open(encoding="utf-8", errors="surrogateescape", newline="\n") as f:
        for row, line in enumerate(f):
            yield Record(row, row, line.removesuffix("\n").removesuffix("\r"))


def _jsonl(path: Path, fmt: str, text_field: str, id_field: str | None) -> Iterator[Record]:
    del fmt
    return _json_rows(path, text_field, id_field)


def _json_rows(path: Path, text_field: str, id_field: str | None) -> Iterator[Record]:
    for line in _lines(path):
        try:
            value = json.loads(line.text)
        except ValueError as exc:
            yield Record(line.row, line.row, None, f"not a JSON object: {exc}")
            continue
        if not isinstance(value, dict):
            yield Record(line.row, line.row, None, "not a JSON object")
            continue
        ident = value.get(id_field, line.row) if id_field else line.row
        if text_field not in value:
            yield Record(line.row, ident, None, f"no field {text_field!r}")
        else:
            yield Record(line.row, ident, value[text_field])


def _csv(path: Path, fmt: str, text_field: str, id_field: str | None) -> Iterator[Record]:
    f = path.open(encoding="utf-8", errors="surrogateescape", newline="")
    csv.field_size_limit(sys.maxsize)
    reader = csv.DictReader(f, delimiter="\t" if fmt == "tsv" else ",")
    columns = reader.fieldnames or []
    for name in (text_field, id_field):
        if name and name not in columns:
            f.close()
            raise BadInput(
                f"{path} has no column {name!r}; its columns: {', '.join(columns) or 'none'}"
            )
    return _csv_rows(f, reader, text_field, id_field)


def _csv_rows(
    f: Any, reader: csv.DictReader[str], text_field: str, id_field: str | None
) -> Iterator[Record]:
    with f:
        for row, values in enumerate(reader):
            ident = values[id_field] if id_field else row
            text = values[text_field]
            yield Record(row, ident, text, None if text is not None else "a short row")


def _parquet(path: Path, fmt: str, text_field: str, id_field: str | None) -> Iterator[Record]:
    del fmt
    import pyarrow.parquet as pq

    try:
        file = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a file that is not Parquet
        raise BadInput(f"cannot read {path} as Parquet: {exc}") from None
    columns = file.schema_arrow.names
    for name in (text_field, id_field):
        if name and name not in columns:
            raise BadInput(f"{path} has no column {name!r}; its columns: {', '.join(columns)}")
    wanted = [text_field] + ([id_field] if id_field else [])
    return _parquet_rows(file, wanted, text_field, id_field)


def _parquet_rows(
    file: Any, wanted: list[str], text_field: str, id_field: str | None
) -> Iterator[Record]:
    row = 0
    for batch in file.iter_batches(batch_size=8192, columns=wanted):
        texts = batch.column(text_field).to_pylist()
        ids = batch.column(id_field).to_pylist() if id_field else None
        for i, text in enumerate(texts):
            yield Record(row, ids[i] if ids is not None else row, text)
            row += 1
