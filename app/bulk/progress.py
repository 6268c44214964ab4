"""The job's progress bar on stderr and its one summary line."""

from __future__ import annotations

import sys
import time
from typing import TextIO

REDRAW_S = 0.5


class Meter:
    """Rows done (of the total where known), rows/s, tokens/s and the time left, redrawn on one
    line at most twice a second; silent when ``stream`` is not a terminal or ``quiet``."""

    def __init__(
        self, total: int | None, *, done: int = 0, quiet: bool = False, stream: TextIO = sys.stderr
    ) -> None:
        self.total = total
        self.done = done
        self.rows = self.tokens = self.failed = 0  # this run's, for the rates
        self.started = time.perf_counter()
        self.stream = stream
        self.live = not quiet and stream.isatty()
        self._drawn = 0.0

    def advance(self, rows: int, tokens: int, *, failed: int = 0) -> None:
        self.rows += rows
        self.done += rows
        self.tokens += tokens
        self.failed += failed
        now = time.perf_counter()
        if self.live and now - self._drawn >= REDRAW_S:
            self._drawn = now
            self.stream.write("\r" + self.line(now) + "\033[K")
            self.stream.flush()

    def line(self, now: float) -> str:
        seconds = max(now - self.started, 1e-9)
        rate = self.rows / seconds
        of = f"/{self.total:,}" if self.total is not None else ""
        share = f" ({self.done / self.total:.0%})" if self.total else ""
        eta = ""
        if self.total is not None and rate > 0:
            left = max(self.total - self.done, 0) / rate
            eta = f" | ETA {int(left // 60)}:{int(left % 60):02d}"
        return (
            f"{self.done:,}{of} rows{share} | {rate:,.0f} rows/s | "
            f"{self.tokens / seconds:,.0f} tokens/s{eta}"
        )

    def summary(self, rows: int, tokens: int, failed: int) -> str:
        """``done: R rows, T tokens, S s, X rows/s, F failed``: the whole job's rows, tokens and
        failures; this run's time and rate."""
        if self.live:
            self.stream.write("\r\033[K")
        seconds = time.perf_counter() - self.started
        return (
            f"done: {rows} rows, {tokens} tokens, {seconds:.1f} s, "
            f"{self.rows / max(seconds, 1e-9):.0f} rows/s, {failed} failed"
        )
