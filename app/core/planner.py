"""Splitting rows into forward passes: sorted by length, cut where padding would cost most.

Every row of a pass is padded to the pass's longest row, so the work of a pass is about
``rows x longest`` tokens, plus a fixed cost per pass (thread hand-offs, per-op overhead).
``plan_batches`` sorts the rows by length and chooses the cuts that minimise that total,
exactly, by dynamic programming over the sorted rows, within a token budget and a row cap.

Why it matters: rows of mixed lengths padded to the longest waste a large share of a pass's
work; cut into passes of similar lengths they waste little (docs/batching.md).
"""

from __future__ import annotations

from collections.abc import Sequence

CPU_OVERHEAD_TOKENS_PER_THREAD = 8
"""A CPU pass's fixed cost, in tokens of work, for each runtime thread in it: fitted from pass
timings as a fixed cost plus a cost per token (docs/batching.md has the fit). Settable with
``EMBED_PASS_OVERHEAD_TOKENS`` for other models and machines.
"""

PASS_OVERHEAD_TOKENS = 32
"""The fixed cost of a pass where none was measured per layout (CUDA): the older CPU estimate."""


def plan_batches(
    lengths: Sequence[int],
    *,
    max_tokens: int,
    max_rows: int,
    overhead: int = PASS_OVERHEAD_TOKENS,
) -> list[list[int]]:
    """Group row indices into passes; each pass lists its rows shortest first.

    Each pass keeps ``rows x longest <= max_tokens`` (a row longer than that on its own still
    gets a pass of one) and ``rows <= max_rows``. Among such plans it returns one of least
    ``sum(rows x longest + overhead)``.
    """
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    sorted_lengths = [lengths[i] for i in order]
    n = len(order)
    best = [0] * (n + 1)  # best[j]: least cost of the first j sorted rows
    cut = [0] * (n + 1)  # where the last pass of that plan starts
    for end in range(1, n + 1):
        width = sorted_lengths[end - 1]  # the longest row of any pass ending here
        best[end] = best[end - 1] + width + overhead
        cut[end] = end - 1
        start = end - 2
        while start >= 0 and end - start <= max_rows and (end - start) * width <= max_tokens:
            # Reaching back one more row adds ``width`` to the pass and saves at most
            # ``length + overhead`` before it (that row in a pass of its own). Once the row is
            # shorter than ``width - overhead``, every longer reach costs more than the last:
            # stop. The plan is the same as without the cut-off, only found sooner.
            if width - sorted_lengths[start] > overhead:
                break
            cost = best[start] + (end - start) * width + overhead
            if cost <= best[end]:
                best[end], cut[end] = cost, start
            start -= 1
    batches: list[list[int]] = []
    end = n
    while end > 0:
        batches.append(order[cut[end] : end])
        end = cut[end]
    batches.reverse()
    return batches
