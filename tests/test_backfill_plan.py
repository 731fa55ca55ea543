"""How POST /backfill/start packs date × symbol partitions into runs (api/backfills.py)."""

from __future__ import annotations

import datetime as dt

import pytest

from api.backfills import MAX_SYMBOLS_PER_RUN, RunPlan, plan_runs
from dm_resources.backfill_status import run_group_status
from dm_resources.run_coordinator import SYMBOL_TAG, range_label


def days(n: int) -> list[str]:
    first = dt.date(2026, 1, 1)
    return [(first + dt.timedelta(days=i)).isoformat() for i in range(n)]


ORDER = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT", "BNBUSDT"]


def covered(plans: list[RunPlan]) -> list[str]:
    return sorted(k for p in plans for k in p.partition_keys())


def test_a_short_range_of_several_symbols_is_one_run() -> None:
    plans = plan_runs(days(30), ["BTCUSDT", "ETHUSDT", "SOLUSDT"], ORDER, per_run=200)
    assert plans == [RunPlan(tuple(days(30)), ("BTCUSDT", "ETHUSDT", "SOLUSDT"))]
    tags = plans[0].tags()
    assert tags["dagster/asset_partition_range_start"] == "2026-01-01|BTCUSDT"
    assert tags["dagster/asset_partition_range_end"] == "2026-01-30|SOLUSDT"
    assert tags[SYMBOL_TAG] == range_label("BTCUSDT", "SOLUSDT")


def test_long_ranges_are_one_symbol_per_run_of_at_most_per_run_days_split_evenly() -> None:
    plans = plan_runs(days(182), ["BTCUSDT", "ETHUSDT"], ORDER, per_run=100)
    assert [(len(p.days), p.symbols) for p in plans] == [
        (91, ("BTCUSDT",)),
        (91, ("BTCUSDT",)),
        (91, ("ETHUSDT",)),
        (91, ("ETHUSDT",)),
    ]
    assert all(p.tags()[SYMBOL_TAG] in ("BTCUSDT", "ETHUSDT") for p in plans)
    assert covered(plans) == sorted(f"{d}|{s}" for d in days(182) for s in ("BTCUSDT", "ETHUSDT"))


def test_one_day_of_many_symbols_fills_runs_with_symbols_up_to_the_symbol_cap() -> None:
    order = [f"S{i:03d}USDT" for i in range(400)]
    assert [p.partitions for p in plan_runs(days(1), order, order, per_run=40)] == [40] * 10
    plans = plan_runs(days(1), order, order, per_run=1000)  # 400 symbols fit one run; the cap makes 8, side by side
    assert [len(p.symbols) for p in plans] == [MAX_SYMBOLS_PER_RUN] * 8
    assert covered(plans) == sorted(f"{days(1)[0]}|{s}" for s in order)


def test_a_long_range_of_many_symbols_is_a_few_even_runs_of_adjacent_symbols() -> None:
    """10 symbols × 182 days by 1,000: two runs of five symbols (side by side: their symbols are disjoint)."""
    order = [f"S{i:02d}USDT" for i in range(12)]
    plans = plan_runs(days(182), order[:10], order, per_run=1000)
    assert [p.symbols for p in plans] == [tuple(order[:5]), tuple(order[5:10])]
    assert all(p.days == tuple(days(182)) for p in plans)
    assert [p.tags()[SYMBOL_TAG] for p in plans] == ["S00USDT..S04USDT", "S05USDT..S09USDT"]
    assert [len(p.symbols) for p in plan_runs(days(182), order, order, per_run=1000)] == [4, 4, 4]  # not 5 + 5 + 2
    assert covered(plans) == sorted(f"{d}|{s}" for d in days(182) for s in order[:10])


def test_a_run_never_spans_a_symbol_that_was_not_asked_for() -> None:
    plans = plan_runs(days(3), ["BTCUSDT", "SOLUSDT", "XRPUSDT"], ORDER, per_run=200)
    assert sorted(p.symbols for p in plans) == [("BTCUSDT",), ("SOLUSDT", "XRPUSDT")]  # ETHUSDT sits between
    assert covered(plans) == sorted(f"{d}|{s}" for d in days(3) for s in ("BTCUSDT", "SOLUSDT", "XRPUSDT"))
    with pytest.raises(ValueError, match="DOGEUSDT"):
        plan_runs(days(3), ["DOGEUSDT"], ORDER, per_run=200)


def test_status_of_a_group_of_runs() -> None:
    assert run_group_status([]) == "requested"
    assert run_group_status(["SUCCESS", "STARTED"]) == "running"
    assert run_group_status(["SUCCESS", "QUEUED"]) == "running"
    assert run_group_status(["SUCCESS", "SUCCESS"]) == "success"
    assert run_group_status(["SUCCESS", "FAILURE"]) == "partial"
    assert run_group_status(["FAILURE"]) == "failure"
    assert run_group_status(["CANCELED", "SUCCESS"]) == "canceled"
