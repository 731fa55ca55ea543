"""The health table on a health_scores materialization: the lowest scores, bounded (it is copied per partition)."""

from __future__ import annotations

import datetime as dt

from dm_assets.quality.assets import SCORES_TABLE_MAX_ROWS, scores_table
from dm_resources.metadata.schemas import HealthMetricIn


def _row(day: int, score: float) -> HealthMetricIn:
    failed = {"no_gaps": {"severity": "WARN", "count": 1}} if score < 100 else {}
    return HealthMetricIn(
        symbol="BTCUSDT",
        interval="1m",
        day=dt.date(2026, 1, 1) + dt.timedelta(days=day),
        completeness=score,
        freshness=100.0,
        consistency=100.0,
        score=score,
        details={"failed_checks": failed},
    )


def test_table_shows_the_lowest_scores_and_says_how_many_it_left_out() -> None:
    rows = [_row(i, 100.0) for i in range(500)] + [_row(i, 50.0 + i / 10) for i in range(SCORES_TABLE_MAX_ROWS + 10)]
    below, table = scores_table(rows)
    assert below == SCORES_TABLE_MAX_ROWS + 10
    body = [line for line in table.splitlines() if line.startswith("| 2026")]
    assert len(body) == SCORES_TABLE_MAX_ROWS
    assert "**50.00**" in body[0] and "no_gaps WARN ×1" in body[0]  # worst first, with why
    assert f"{500 + 10} more row(s) not shown (500 at 100)." in table


def test_rows_at_100_are_counted_not_listed() -> None:
    below, table = scores_table([_row(0, 100.0), _row(1, 90.0)])
    assert below == 1 and "**90.00**" in table and "**100.00**" not in table
    assert "1 more row(s) not shown (1 at 100)." in table
    assert "not shown" not in scores_table([_row(1, 90.0)])[1]
