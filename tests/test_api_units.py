"""The API's plain functions: parameter parsing, the hot cache, backfill planning, status mapping."""

from __future__ import annotations

import datetime as dt

import pytest

from api.backfills import backfill_status, plan_partitions
from api.cache import HotCache, ValueCache, VersionWatcher
from api.params import (
    ParamError,
    check_known,
    check_period,
    normalise_pair,
    parse_after,
    parse_pairs,
    parse_range,
    parse_time,
)
from api.routes.analysis import subset_correlation

T0 = 1_773_100_800_000  # 2026-03-10T00:00:00Z


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("1773100800000", T0),
        ("2026-03-10T00:00:00Z", T0),
        ("2026-03-10T00:00:00+00:00", T0),
        ("2026-03-10T00:00:00 00:00", T0),  # '+' decoded to a space by a careless client
        ("2026-03-10T02:00:00+02:00", T0),
        ("2026-03-10", T0),
        ("2026-03-10T00:00:00.250", T0 + 250),
        ("0", 0),
    ],
)
def test_parse_time_accepts_iso_and_epoch_ms(text: str, ms: int) -> None:
    assert parse_time(text, "start") == ms


@pytest.mark.parametrize(
    "text",
    ["", "yesterday", "2026-13-01", "-5", "99999999999999999", "1e12", '{"$gt": 0}', "2026-03-10T00:00:00+25:00"],
)
def test_parse_time_refuses_with_the_parameter_name(text: str) -> None:
    with pytest.raises(ParamError) as err:
        parse_time(text, "end")
    assert err.value.param == "end" and err.value.status == 422


def test_parse_range_orders_start_before_end() -> None:
    assert parse_range("2026-03-10", "2026-03-11") == (T0, T0 + 86_400_000)
    assert parse_range(None, None) == (None, None)
    with pytest.raises(ParamError, match="before end"):
        parse_range("2026-03-11", "2026-03-10")
    with pytest.raises(ParamError):
        parse_range(str(T0), str(T0))  # empty [start, end)


@pytest.mark.parametrize("bad", ['{"$ne": 1}', "$where", "BTC USDT", "B", "BTC-USDT", "x" * 31, "BTCUSDT\x00"])
def test_pairs_that_could_be_operators_are_refused(bad: str) -> None:
    with pytest.raises(ParamError) as err:
        normalise_pair(bad)
    assert err.value.param == "pair"


def test_pairs_are_upper_cased_and_checked_against_known() -> None:
    assert normalise_pair(" btcusdt ") == "BTCUSDT"
    assert parse_pairs("ethusdt, BTCUSDT,ETHUSDT,") == ["ETHUSDT", "BTCUSDT"]
    with pytest.raises(ParamError) as err:
        check_known("XRPUSDT", {"BTCUSDT"})
    assert err.value.status == 404 and "BTCUSDT" in err.value.message
    with pytest.raises(ParamError, match="at most 2"):
        parse_pairs("AAA,BBB,CCC", max_pairs=2)


def test_period_and_after() -> None:
    assert check_period("1h") == "1h"
    for bad in ("1M", "2m", "1s", "1H"):
        with pytest.raises(ParamError):
            check_period(bad)
    assert parse_after("123") == 123 and parse_after(None) is None
    for bad in ("-1", "1.5", "{}", "99999999999999999999"):
        with pytest.raises(ParamError):
            parse_after(bad)


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_hot_cache_revalidates_then_expires() -> None:
    clock = Clock()
    cache: HotCache[bytes] = HotCache(ttl_s=5, revalidate_s=1, clock=clock)
    probes: list[int | None] = []

    def newer(flag: bool):  # type: ignore[no-untyped-def]
        def probe(newest: int | None) -> bool:
            probes.append(newest)
            return flag

        return probe

    cache.put("k", b"v", 100)
    assert cache.get("k", newer(True)) == b"v" and probes == []  # fresh: no probe
    clock.t = 1.5
    assert cache.get("k", newer(False)) == b"v" and probes == [100]  # probed, still newest
    clock.t = 2.0
    assert cache.get("k", newer(True)) == b"v" and probes == [100]  # re-checked at 1.5: fresh again
    clock.t = 3.0
    assert cache.get("k", newer(True)) is None and probes == [100, 100]  # newer data landed
    cache.put("k", b"w", 200)
    clock.t = 8.5
    assert cache.get("k", newer(False)) is None  # past the TTL whatever the store says
    assert (cache.hits, cache.invalidations) == (3, 1)


def test_version_watcher_drops_only_moved_datasets_and_races_are_not_stored() -> None:
    cache: HotCache[bytes] = HotCache(ttl_s=60, revalidate_s=0)
    versions = {"candles:BTCUSDT:1m": 1, "candles:ETHUSDT:1m": 1}
    wall = [1_000]

    def read_since(since: int) -> list[dict[str, object]]:
        return [{"_id": k, "v": v} for k, v in versions.items()]

    w = VersionWatcher(cache, read_since, wall_ms=lambda: wall[0])
    w.poll_once()
    assert cache.notified
    cache.put("btc", b"b", 1, tag="candles:BTCUSDT:1m", generation=cache.generation("candles:BTCUSDT:1m"))
    cache.put("eth", b"e", 1, tag="candles:ETHUSDT:1m", generation=cache.generation("candles:ETHUSDT:1m"))

    def fail(_: int | None) -> bool:
        raise AssertionError("no store probe while notified")

    assert cache.get("btc", fail) == b"b" and cache.probes == 0
    versions["candles:BTCUSDT:1m"] = 2
    assert w.poll_once() == ["candles:BTCUSDT:1m"]
    assert cache.get("btc", fail) is None and cache.get("eth", fail) == b"e"
    # a fill that read the store before a bump must not be stored after it
    gen = cache.generation("candles:ETHUSDT:1m")
    versions["candles:ETHUSDT:1m"] = 2
    w.poll_once()
    cache.put("eth", b"stale", 1, tag="candles:ETHUSDT:1m", generation=gen)
    assert cache.get("eth", fail) is None
    # the versions cannot be read: notification off, entries flushed, probing resumes
    w.read_since = lambda since: [][0]  # type: ignore[assignment]
    w.poll_once()
    assert not cache.notified and len(cache) == 0


def test_hot_cache_is_bounded() -> None:
    cache: HotCache[int] = HotCache(max_entries=2)
    for i in range(3):
        cache.put(i, i, None)
    assert len(cache) == 2 and cache.get(0, lambda _: False) is None


def test_value_cache_recomputes_after_ttl() -> None:
    clock = Clock()
    calls: list[int] = []
    vc = ValueCache(lambda: calls.append(1) or len(calls), ttl_s=30, clock=clock)
    assert (vc.get(), vc.get()) == (1, 1)
    clock.t = 31
    assert vc.get() == 2


def test_plan_partitions_covers_every_touched_utc_day() -> None:
    first, today = dt.date(2026, 1, 1), dt.date(2026, 3, 12)
    keys = plan_partitions(
        ["BTCUSDT", "ETHUSDT"], T0 + 3_600_000, T0 + 86_400_000 + 1, first_day=first, today=today, max_days=10
    )
    assert keys == ["2026-03-10|BTCUSDT", "2026-03-10|ETHUSDT", "2026-03-11|BTCUSDT", "2026-03-11|ETHUSDT"]
    # end is exclusive: ending exactly at midnight does not touch the next day
    assert plan_partitions(["BTCUSDT"], T0, T0 + 86_400_000, first_day=first, today=today, max_days=10) == [
        "2026-03-10|BTCUSDT"
    ]
    with pytest.raises(ParamError, match="before the first partition"):
        plan_partitions(["BTCUSDT"], 0, T0, first_day=first, today=today, max_days=1000)
    with pytest.raises(ParamError, match="after today"):
        plan_partitions(["BTCUSDT"], T0, T0 + 5 * 86_400_000, first_day=first, today=today, max_days=10)
    with pytest.raises(ParamError, match="at most 1"):
        plan_partitions(["BTCUSDT"], T0, T0 + 2 * 86_400_000, first_day=first, today=today, max_days=1)


@pytest.mark.parametrize(
    ("status", "runs", "ours"),
    [
        ("REQUESTED", [], "requested"),
        ("REQUESTED", ["STARTED"], "running"),
        ("COMPLETED", ["SUCCESS", "STARTED"], "running"),
        ("COMPLETED_SUCCESS", ["SUCCESS", "SUCCESS"], "success"),
        ("COMPLETED", ["SUCCESS", "FAILURE"], "failure"),
        ("COMPLETED_FAILED", ["SUCCESS", "FAILURE"], "partial"),
        ("FAILED", ["FAILURE"], "failure"),
        ("CANCELING", ["STARTED"], "canceled"),
    ],
)
def test_backfill_status_mapping(status: str, runs: list[str], ours: str) -> None:
    assert backfill_status(status, runs) == ours


def test_subset_correlation_keeps_matrix_rows_and_edges_of_requested_pairs() -> None:
    syms = ["A1", "B1", "C1"]
    values = {
        "windows": [
            {
                "symbols": syms,
                "matrix": [[1, 2, 3], [2, 1, 4], [3, 4, 1]],
                "graph": {
                    "nodes": syms,
                    "edges": [
                        {"source": "A1", "target": "C1", "weight": 3},
                        {"source": "A1", "target": "B1", "weight": 2},
                    ],
                },
            }
        ],
        "other": 1,
    }
    out = subset_correlation(values, ["C1", "A1"])
    w = out["windows"][0]
    assert (w["symbols"], w["matrix"], out["other"]) == (["A1", "C1"], [[1, 3], [3, 1]], 1)
    assert w["graph"] == {"nodes": ["A1", "C1"], "edges": [{"source": "A1", "target": "C1", "weight": 3}]}
    assert subset_correlation(values, []) is values
