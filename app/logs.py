"""Logging: one JSON object per line (for log shippers), or plain text for a terminal.

Every record becomes ``{"ts", "level", "logger", "message", ...}``; a record logged with
``extra={"fields": {...}}`` carries those fields at the top level too, which is how the access
log writes one line per request. uvicorn's own loggers go through the same handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import logging.config
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

LogFormat = Literal["json", "text"]


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class TurnBufferedHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A ``StreamHandler`` that writes the lines an event loop logs in one turn together, at the
    end of the turn, in one write; lines from other threads go out at once, after any held ones.

    With one access-log line per request, a write and a flush per line cost the event loop a
    system call each, on the cores inference needs, and each one lets a worker thread take the
    GIL (docs/design.md). A line waits for the end of its turn, never longer; lines still held
    when the process ends are written by ``logging.shutdown``, which flushes every handler.
    """

    def __init__(self, stream: Any = None) -> None:
        super().__init__(stream)
        self._held: list[str] = []
        self._flush_on: asyncio.AbstractEventLoop | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not on an event loop: write now, after what is held
            self.flush()
            super().emit(record)
            return
        try:
            line = self.format(record) + self.terminator
        except Exception:
            self.handleError(record)
            return
        self._held.append(line)
        if self._flush_on is not loop:
            self._flush_on = loop
            loop.call_soon(self.flush)

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._flush_on = None
            if self._held:
                lines = "".join(self._held)
                self._held.clear()
                # A closed or broken stream must not break the server (StreamHandler reports
                # the error on stderr, which here is that stream).
                with contextlib.suppress(OSError, ValueError):
                    self.stream.write(lines)
            with contextlib.suppress(OSError, ValueError):
                super().flush()


def configure_logging(level: str, log_format: LogFormat) -> dict[str, Any]:
    """Set up the root logger; returns the dict config to hand to uvicorn as well."""
    formatter: dict[str, Any] = (
        {"()": JsonFormatter}
        if log_format == "json"
        else {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}
    )
    config: dict[str, Any] = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "handlers": {
            "stderr": {
                "()": TurnBufferedHandler,
                "formatter": "default",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["stderr"], "level": level.upper()},
        "loggers": {
            name: {"handlers": [], "propagate": True, "level": level.upper()}
            for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
        },
    }
    logging.config.dictConfig(config)
    # No format here shows the thread, the process or the calling function, and each costs time
    # on every record (the access log writes one per request): leave them out, as the logging
    # HOWTO's "Optimization" section describes.
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging._srcfile = None  # the documented switch that skips findCaller
    return config
