"""Funding stats and annualization with the interval read from the data (never assumed 8h)."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from bson.decimal128 import Decimal128

from dm_assets.analytics.funding import compute_funding, events_per_year, funding_interval_ms

REL = 1e-9
H = 3_600_000
T0 = 1_700_006_400_000


def rates(values: list, hours: float, jitter: list[int] | None = None) -> pd.DataFrame:
    times = [T0 + int(i * hours * H) + (jitter[i] if jitter else 0) for i in range(len(values))]
    return pd.DataFrame({"funding_time": times, "funding_rate": values})


def test_stats_and_8h_annualization() -> None:
    res = compute_funding(rates([1e-4, 2e-4, -1e-4, 3e-4], 8, jitter=[0, 3, 1, 7]))
    assert res.count == 4 and res.interval_ms == 8 * H and res.interval_hours == 8.0
    assert res.events_per_year == pytest.approx(1095.0, rel=REL)
    assert res.mean == pytest.approx(1.25e-4, rel=REL)
    # deviations (e-4): −.25, .75, −2.25, 1.75 → Σ² = 8.75 → /3
    assert res.std == pytest.approx(math.sqrt(8.75e-8 / 3), rel=REL)
    assert (res.min, res.max, res.last) == (pytest.approx(-1e-4), pytest.approx(3e-4), pytest.approx(3e-4))
    assert res.last_time == T0 + 24 * H + 7
    assert res.cumulative == pytest.approx(5e-4, rel=REL)
    assert res.annualized == pytest.approx(1.25e-4 * 1095, rel=REL)
    assert res.interval_source == "funding_times" and res.insufficient_data is False
    json.dumps(res.to_dict(), allow_nan=False)


@pytest.mark.parametrize(("hours", "per_year"), [(8, 1095), (4, 2190), (1, 8760)])
def test_interval_from_spacing(hours: int, per_year: int) -> None:
    res = compute_funding(rates([1e-4] * 5, hours))
    assert res.events_per_year == pytest.approx(per_year, rel=REL)
    assert res.annualized == pytest.approx(1e-4 * per_year, rel=REL)


def test_missing_event_does_not_change_interval() -> None:
    df = rates([1e-4] * 6, 4).drop(index=[2]).reset_index(drop=True)
    assert funding_interval_ms(df["funding_time"]) == 4 * H
    assert events_per_year(4 * H) == pytest.approx(2190, rel=REL) and events_per_year(None) is None


def test_fallback_to_mark_price_next_funding_time() -> None:
    marks = pd.DataFrame(
        {
            "event_time": [1, 2, 3],
            "mark_price": [1.0, 1.0, 1.0],
            "funding_rate": ["0.0001", "0.0002", Decimal128("0.0003")],
            "next_funding_time": [T0 + 4 * H, T0 + 4 * H, T0 + 8 * H],
        }
    )
    res = compute_funding(rates([Decimal128("0.0005")], 4), marks)
    assert res.count == 1 and res.std is None and res.mean == pytest.approx(5e-4, rel=REL)
    assert res.interval_source == "mark_prices" and res.events_per_year == pytest.approx(2190, rel=REL)
    assert res.annualized == pytest.approx(5e-4 * 2190, rel=REL)
    assert res.predicted_rate == pytest.approx(3e-4, rel=REL)
    assert res.predicted_annualized == pytest.approx(3e-4 * 2190, rel=REL)
    assert res.next_funding_time == T0 + 8 * H


def test_unknown_interval_and_empty() -> None:
    one = compute_funding(rates([1e-4], 8))
    assert one.annualized is None and one.events_per_year is None and one.insufficient_data is True
    json.dumps(one.to_dict(), allow_nan=False)
    empty = compute_funding(rates([], 8))
    assert empty.count == 0 and empty.mean is None and empty.insufficient_data is True
    assert compute_funding(None).count == 0


def test_interval_changes_over_time_are_segmented_and_each_event_annualized_by_its_own() -> None:
    from dm_assets.analytics.funding import interval_segments

    # 8h for 6 events, then 4h for 6, then 1h for 6 (a symbol hitting its rate cap), one 8h event missing.
    t0 = 1_767_225_600_000
    times = [t0 + i * 8 * H for i in range(6) if i != 3]
    t1 = times[-1] + 4 * H
    times += [t1 + i * 4 * H for i in range(6)]
    t2 = times[-1] + H
    times += [t2 + i * H for i in range(6)]
    assert interval_segments(pd.Series(times)) == [(t0, 8 * H), (t1, 4 * H), (t2, H)]
    rates = pd.DataFrame({"funding_time": times, "funding_rate": [1e-4] * len(times)})
    res = compute_funding(rates)
    assert res.interval_ms == H and res.interval_hours == 1.0  # the current interval
    assert [c["interval_hours"] for c in res.interval_changes] == [8.0, 4.0, 1.0]
    covered = 5 * 8 * H + 6 * 4 * H + 6 * H
    assert res.annualized == pytest.approx(1e-4 * len(times) / covered * 365 * 24 * H, rel=REL)
    # Annualizing the mean by the current (1h) interval alone would overstate it by ~3x.
    assert res.annualized < 1e-4 * 8760 / 2
