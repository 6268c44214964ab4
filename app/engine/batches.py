"""Splitting rows into forward passes: sorted by length, bounded by a padded-token budget.

Padding is most of the work when short and long texts share a pass (every row is as long as the
longest), so rows are sorted by length first; then each pass takes rows while
``rows x longest <= max_tokens`` and ``rows <= max_rows``.
"""

from __future__ import annotations

from collections.abc import Sequence


def plan_batches(lengths: Sequence[int], *, max_tokens: int, max_rows: int) -> list[list[int]]:
    """Group row indices into passes; each pass lists its rows shortest first.

    A row longer than ``max_tokens`` on its own still gets a pass of one.
    """
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        width = lengths[index]  # sorted ascending: the newest row is the longest so far
        if current and ((len(current) + 1) * width > max_tokens or len(current) >= max_rows):
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches
