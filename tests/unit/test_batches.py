from __future__ import annotations

from app.core.planner import plan_batches


def test_every_row_lands_in_exactly_one_pass() -> None:
    lengths = [5, 80, 12, 12, 300, 7, 33, 2]
    plan = plan_batches(lengths, max_tokens=100, max_rows=3)
    assert sorted(i for rows in plan for i in rows) == list(range(len(lengths)))


def test_passes_respect_the_token_budget_and_row_cap() -> None:
    lengths = [10, 20, 30, 40, 50, 60, 70, 80]
    for rows in plan_batches(lengths, max_tokens=120, max_rows=2):
        assert len(rows) <= 2
        assert len(rows) == 1 or len(rows) * max(lengths[i] for i in rows) <= 120


def test_rows_are_sorted_by_length_so_padding_is_small() -> None:
    lengths = [50, 3, 49, 4, 51, 2]
    plan = plan_batches(lengths, max_tokens=1000, max_rows=3)
    assert plan == [[5, 1, 3], [2, 0, 4]]


def test_a_row_over_the_budget_still_gets_a_pass_of_its_own() -> None:
    assert plan_batches([500, 3], max_tokens=100, max_rows=8) == [[1], [0]]
