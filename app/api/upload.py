"""A bundle upload: a ``multipart/form-data`` body streamed to a file, never held in memory.

The form has a ``name``, a ``file`` (the bundle's zip) and an optional ``description``, in any
order. The file part goes to disk as it arrives, a megabyte at a time, written off the event
loop; the text fields are kept, up to a few kilobytes. Anything else in the form, a body that
ends before its closing boundary (a truncated upload) or one larger than
``EMBED_MAX_UPLOAD_BYTES`` is refused, and the caller removes the file.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from app.errors import ClientClosed, PayloadTooLarge, ServiceError, ValidationFailed, cut

TEXT_FIELDS = {"name": 256, "description": 4096}  # the most bytes each may hold
FILE_FIELD = "file"
FLUSH_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class Upload:
    """A received form: its text fields, and where its file now is."""

    name: str
    description: str
    file: Path


@dataclass(slots=True)
class _Form:
    """The parser's callbacks: which part is being read, and what each part has given."""

    out: BinaryIO
    texts: dict[str, bytearray] = field(default_factory=dict)
    pending: bytearray = field(default_factory=bytearray)  # file bytes not yet written
    header: bytearray = field(default_factory=bytearray)
    value: bytearray = field(default_factory=bytearray)
    disposition: bytes = b""
    part: str | None = None
    files: int = 0
    ended: bool = False

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self._begin,
            "on_header_field": lambda data, start, end: self.header.extend(data[start:end]),
            "on_header_value": lambda data, start, end: self.value.extend(data[start:end]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._data,
            "on_end": self._end,
        }

    def _begin(self) -> None:
        self.disposition, self.part = b"", None

    def _header_end(self) -> None:
        if self.header.lower() == b"content-disposition":
            self.disposition = bytes(self.value)
        self.header.clear()
        self.value.clear()

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self.disposition)
        name = options.get(b"name", b"").decode("utf-8", "replace")
        if name == FILE_FIELD:
            self.files += 1
            if self.files > 1:
                raise _refused("file", "one file expected, found a second")
        elif name in TEXT_FIELDS:
            if name in self.texts:
                raise _refused(name, "given twice")
            self.texts[name] = bytearray()
        else:
            raise _refused(name, "not a field of this form; it takes name, file and description")
        self.part = name

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self.part == FILE_FIELD:
            self.pending.extend(data[start:end])
            return
        assert self.part is not None
        text = self.texts[self.part]
        text.extend(data[start:end])
        if len(text) > TEXT_FIELDS[self.part]:
            raise _refused(self.part, f"longer than {TEXT_FIELDS[self.part]} bytes")

    def _end(self) -> None:
        self.ended = True


async def receive_upload(request: Request, target: Path, max_bytes: int) -> Upload:
    """Stream the request's form into ``target``; its fields. ``target`` may be left behind
    on an error: the caller removes it."""
    kind, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise _refused(
            "file",
            "send multipart/form-data with the fields name, file (the bundle's zip) and "
            f"optionally description; found Content-Type {cut(kind.decode('latin-1')) or 'none'}",
        )
    received = 0
    with target.open("wb") as out:
        form = _Form(out)
        parser = MultipartParser(boundary, form.callbacks())  # type: ignore[arg-type]
        try:
            async for chunk in request.stream():
                received += len(chunk)
                if received > max_bytes:
                    raise PayloadTooLarge(
                        f"the upload is larger than the limit of {max_bytes} bytes "
                        "(EMBED_MAX_UPLOAD_BYTES)"
                    )
                parser.write(chunk)
                if len(form.pending) >= FLUSH_BYTES:
                    await _flush(form)
            parser.finalize()
        except ClientDisconnect:
            raise ClientClosed("the client left during the upload") from None
        except MultipartParseError as exc:
            raise _refused("file", f"the multipart body is malformed ({exc})") from None
        await _flush(form)
    if not form.ended:
        raise _refused("file", "the body ended before its closing boundary (a truncated upload)")
    if not form.files:
        raise _refused("file", "missing; the form needs the bundle's zip as its file field")
    texts = {name: value.decode("utf-8", "replace") for name, value in form.texts.items()}
    if "name" not in texts:
        raise _refused("name", "missing; the form needs the model's name")
    return Upload(texts["name"], texts.get("description", ""), target)


async def _flush(form: _Form) -> None:
    if form.pending:
        block = bytes(form.pending)
        form.pending.clear()
        await asyncio.to_thread(form.out.write, block)


def _refused(field_name: str, problem: str) -> ServiceError:
    error = ValidationFailed(f"form field {cut(field_name)!r}: {problem}")
    error.param = field_name
    return error
