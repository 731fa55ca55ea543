"""The candle bucket layer against a real SecantusDB: round trips, partial days, year buckets, migration."""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest

from dm_resources.candle_store import (
    BUCKETS,
    ENCODING,
    LEGACY,
    ROW_FIELDS,
    Bucket,
    CandleStore,
    bucket_bounds,
    bucket_id,
    decode_bucket,
    encode_bucket,
    main,
    migrate,
    reencode,
)
from dm_resources.candle_store.codec import encode_bucket_v1
from dm_resources.mongo import MongoStore

MIN = 60_000
DAY = 86_400_000
D0 = int(dt.datetime(2026, 3, 10, tzinfo=dt.UTC).timestamp() * 1000)  # a Tuesday, 00:00 UTC


def candle(t: int, interval: str = "1m", *, symbol: str = "BTCUSDT", px: float = 100.0, **kw: Any) -> dict[str, Any]:
    step = {"1m": MIN, "1h": 3_600_000, "1d": DAY}[interval]
    doc = {
        "symbol": symbol,
        "interval": interval,
        "open_time": t,
        "close_time": t + step - 1,
        "open": px,
        "high": px + 2.5,
        "low": px - 1.25,
        "close": px + 0.1,
        "volume": 1.5,
        "quote_volume": 150.123456789,
        "taker_buy_volume": 0.75,
        "taker_buy_quote_volume": 75.0,
        "trades": 7,
        "source": "kline",
        "flags": [],
    }
    doc.update(kw)
    return doc


def minutes(start: int, n: int, **kw: Any) -> list[dict[str, Any]]:
    return [candle(start + i * MIN, px=100.0 + i, **kw) for i in range(n)]


def test_bucket_bounds_and_ids_are_utc_days_and_years() -> None:
    assert bucket_bounds("1m", D0 + 5 * MIN) == (D0, D0 + DAY)
    assert bucket_bounds("1m", D0 - 1) == (D0 - DAY, D0)
    y0 = int(dt.datetime(2026, 1, 1, tzinfo=dt.UTC).timestamp() * 1000)
    y1 = int(dt.datetime(2027, 1, 1, tzinfo=dt.UTC).timestamp() * 1000)
    assert bucket_bounds("1d", D0) == (y0, y1)
    assert bucket_bounds("1d", y1 - DAY) == (y0, y1)
    assert bucket_id("BTCUSDT", "1m", D0) == "BTCUSDT:1m:2026-03-10"
    assert bucket_id("BTCUSDT", "1d", y0) == "BTCUSDT:1d:2026"


def test_round_trip_rows_frame_flags_and_sources(mongo_store: MongoStore) -> None:
    cs = CandleStore(mongo_store)
    rows = minutes(D0, 1440)
    rows[5]["flags"] = ["bad_print", "ohlc"]
    rows[6]["source"] = "rest"
    rows[7]["source"] = "agg_trades"
    res = cs.sync_range("BTCUSDT", "1m", D0, D0 + DAY, rows)
    assert (res.upserted, res.modified) == (1440, 0)
    assert mongo_store.db[BUCKETS].count_documents({}) == 1  # one day, one document
    got = cs.read_range("BTCUSDT", "1m", D0, D0 + DAY)
    assert got == [{k: r[k] for k in ROW_FIELDS} for r in rows]
    frame = cs.read_frame("BTCUSDT", "1m", D0, D0 + DAY)
    assert frame["open_time"].tolist() == [r["open_time"] for r in rows]
    assert frame["flags"].iloc[5] == ["bad_print", "ohlc"]
    assert frame["close_time"].iloc[0] == D0 + MIN - 1
    # projections as the per-candle reads used them
    assert cs.read_range("BTCUSDT", "1m", D0, D0 + 2 * MIN, projection={"_id": 0, "open_time": 1, "source": 1}) == [
        {"open_time": D0, "source": "kline"},
        {"open_time": D0 + MIN, "source": "kline"},
    ]
    # the bucket is written once: an identical re-write changes nothing and writes nothing
    v = mongo_store.db[BUCKETS].find_one({})["v"]
    assert cs.sync_range("BTCUSDT", "1m", D0, D0 + DAY, rows).upserted == 0
    assert mongo_store.db[BUCKETS].find_one({})["v"] == v


def test_partial_day_rewritten_as_minutes_arrive(mongo_store: MongoStore) -> None:
    cs = CandleStore(mongo_store)
    first = cs.sync_range("ETHUSDT", "1m", D0, D0 + 10 * MIN, minutes(D0, 10, symbol="ETHUSDT"))
    assert first.upserted == 10
    # ten more minutes arrive; minute 3 is revised (a repair)
    more = minutes(D0, 20, symbol="ETHUSDT")
    more[3]["close"] = 999.0
    second = cs.sync_range("ETHUSDT", "1m", D0, D0 + 20 * MIN, more)
    assert (second.upserted, second.modified) == (10, 1)
    doc = mongo_store.db[BUCKETS].find_one({"_id": "ETHUSDT:1m:2026-03-10"})
    assert (doc["n"], doc["first"], doc["last"], doc["v"]) == (20, D0, D0 + 19 * MIN, 2)
    got = cs.read_range("ETHUSDT", "1m", D0, D0 + DAY)
    assert [r["open_time"] for r in got] == [D0 + i * MIN for i in range(20)]
    assert got[3]["close"] == 999.0
    # a merge keeps stored candles absent from the new rows; a partition rewrite (write_day) drops them
    cs.sync_range("ETHUSDT", "1m", D0, D0 + DAY, minutes(D0 + 5 * MIN, 2, symbol="ETHUSDT"))
    assert cs.count("ETHUSDT", "1m") == 20
    res = cs.write_day("ETHUSDT", "1m", "2026-03-10", minutes(D0, 15, symbol="ETHUSDT"))
    assert res.modified >= 5
    assert cs.count("ETHUSDT", "1m") == 15
    assert cs.last_time("ETHUSDT", "1m") == D0 + 14 * MIN


def test_reads_across_day_boundaries_and_utc_edges(mongo_store: MongoStore) -> None:
    cs = CandleStore(mongo_store)
    rows = minutes(D0 - 3 * MIN, 6)  # 23:57 … 00:02, across midnight UTC
    cs.sync_range("BTCUSDT", "1m", D0 - 3 * MIN, D0 + 3 * MIN, rows)
    assert mongo_store.db[BUCKETS].count_documents({"symbol": "BTCUSDT"}) == 2
    got = cs.read_range("BTCUSDT", "1m", D0 - 2 * MIN, D0 + 2 * MIN)
    assert [r["open_time"] for r in got] == [D0 - 2 * MIN, D0 - MIN, D0, D0 + MIN]
    assert cs.read_range("BTCUSDT", "1m", D0, D0 + 1) == [{k: rows[3][k] for k in ROW_FIELDS}]
    assert cs.read_range("BTCUSDT", "1m", D0 - 1, D0) == []  # [start, end): 23:59:59.999 holds no open time
    assert cs.count("BTCUSDT", "1m") == 6
    assert cs.count("BTCUSDT", "1m", D0 - 2 * MIN, D0 + MIN) == 3
    assert cs.first_time("BTCUSDT", "1m") == D0 - 3 * MIN
    assert cs.last_time("BTCUSDT", "1m") == D0 + 2 * MIN
    assert cs.last_time("BTCUSDT", "1m", before=D0) == D0 - MIN
    latest = cs.latest("BTCUSDT", "1m", 4, end=D0 + 10 * DAY)
    assert [r["open_time"] for r in latest] == [D0 - MIN, D0, D0 + MIN, D0 + 2 * MIN]
    assert cs.read_range("BTCUSDT", "1m", D0 - 3 * MIN, None, limit=2)[-1]["open_time"] == D0 - 2 * MIN
    assert cs.has("BTCUSDT", "1m", D0) and not cs.has("BTCUSDT", "1m", D0 + 3 * MIN)
    # rows outside the range given to a write are refused, not silently misfiled
    with pytest.raises(ValueError, match="not aligned"):
        cs.sync_range("BTCUSDT", "1m", D0, D0 + DAY, [candle(D0 + 1)])
    # ... nor silently dropped (a row past the range's last bucket was) or written outside the range
    for start, end, frame in ((D0, D0 + MIN, False), (D0 + 10 * MIN, D0 + 11 * MIN, True)):
        rows = [candle(D0 + 10 * MIN), candle(D0 + DAY)] if not frame else [candle(D0 + 5 * MIN)]
        docs = pd.DataFrame(rows) if frame else rows
        with pytest.raises(ValueError, match="outside"):
            cs.sync_range("BTCUSDT", "1m", start, end, docs)
    assert cs.count("BTCUSDT", "1m") == 6


def test_daily_candles_share_a_year_bucket_and_merge(mongo_store: MongoStore) -> None:
    cs = CandleStore(mongo_store)
    # two day partitions write their one 1d candle each, through separate store objects
    a = CandleStore(MongoStore(mongo_store.url, mongo_store.db_name))
    b = CandleStore(MongoStore(mongo_store.url, mongo_store.db_name))
    a.sync_range("BTCUSDT", "1d", D0, D0 + DAY, [candle(D0, "1d")])
    b.sync_range("BTCUSDT", "1d", D0 + DAY, D0 + 2 * DAY, [candle(D0 + DAY, "1d", px=200.0)])
    docs = list(mongo_store.db[BUCKETS].find({"interval": "1d"}))
    assert [d["_id"] for d in docs] == ["BTCUSDT:1d:2026"] and docs[0]["n"] == 2
    assert [r["open"] for r in cs.read_range("BTCUSDT", "1d")] == [100.0, 200.0]
    a.store.close()
    b.store.close()


def test_lost_race_is_retried_not_lost(mongo_store: MongoStore) -> None:
    """A writer whose bucket changed between its read and its replace re-reads and merges."""
    cs = CandleStore(mongo_store)
    cs.sync_range("BTCUSDT", "1m", D0, D0 + MIN, [candle(D0)])
    stale = decode_bucket(mongo_store.db[BUCKETS].find_one({}))
    cs.sync_range("BTCUSDT", "1m", D0 + MIN, D0 + 2 * MIN, [candle(D0 + MIN)])  # another writer, v → 2
    # the stale writer's replace (v=1 filter) matches nothing ...
    merged, _, _ = stale.merge(Bucket.from_rows("BTCUSDT", "1m", D0, D0 + DAY, [candle(D0 + 2 * MIN)]))
    res = mongo_store.db[BUCKETS].replace_one({"_id": merged.id, "v": stale.v}, encode_bucket(merged, stale.v + 1))
    assert res.matched_count == 0
    # ... and the store's own write path retries on top of the current bucket
    cs.sync_range("BTCUSDT", "1m", D0 + 2 * MIN, D0 + 3 * MIN, [candle(D0 + 2 * MIN)])
    assert [r["open_time"] for r in cs.read_range("BTCUSDT", "1m")] == [D0, D0 + MIN, D0 + 2 * MIN]


def test_frames_write_like_rows(mongo_store: MongoStore) -> None:
    cs = CandleStore(mongo_store)
    rows = minutes(D0, 30)
    frame = pd.DataFrame(rows).drop(columns=["symbol", "interval"])
    assert cs.sync_range("BTCUSDT", "1m", D0, D0 + DAY, frame).upserted == 30
    assert cs.read_range("BTCUSDT", "1m") == [{k: r[k] for k in ROW_FIELDS} for r in rows]
    assert np.isclose(cs.read_frame("BTCUSDT", "1m")["quote_volume"].sum(), 30 * 150.123456789)


def test_write_bumps_dataset_version(mongo_store: MongoStore) -> None:
    cs = CandleStore(mongo_store)
    cs.sync_range("BTCUSDT", "1m", D0, D0 + DAY, minutes(D0, 3))
    v1 = mongo_store.db["dataset_versions"].find_one({"_id": "candles:BTCUSDT:1m"})
    assert v1["v"] == 1 and v1["newest"] == D0 + 2 * MIN
    cs.sync_range("BTCUSDT", "1m", D0, D0 + DAY, minutes(D0, 3))  # nothing changed: no bump
    assert mongo_store.db["dataset_versions"].find_one({"_id": "candles:BTCUSDT:1m"})["v"] == 1
    cs.sync_range("BTCUSDT", "1m", D0, D0 + DAY, minutes(D0, 4))
    v2 = mongo_store.db["dataset_versions"].find_one({"_id": "candles:BTCUSDT:1m"})
    assert v2["v"] == 2 and v2["newest"] == D0 + 3 * MIN
    assert [d["_id"] for d in cs.versions_since(v2["updated_at"])] == ["candles:BTCUSDT:1m"]


def test_migration_converts_legacy_documents_idempotently(mongo_store: MongoStore) -> None:
    legacy = mongo_store.db[LEGACY]
    docs = [
        {"_id": f"{c['symbol']}:{c['interval']}:{c['open_time']}", **{k: v for k, v in c.items() if k != "flags"}}
        for c in [*minutes(D0 - 2 * MIN, 5), *minutes(D0, 3, symbol="ETHUSDT"), candle(D0, "1d"), candle(D0, "1h")]
    ]
    legacy.insert_many(docs)
    cs = CandleStore(mongo_store)
    # a bucket already written by the new code wins over the legacy copy of the same minute
    cs.sync_range("BTCUSDT", "1m", D0, D0 + MIN, [candle(D0, px=555.0, source="rest")])

    rep = migrate(mongo_store)
    assert rep.datasets == 4 and rep.legacy_candles == 10
    assert rep.candles_added == 9  # BTC 1m 4 (one already bucketed) + ETH 3 + 1d + 1h
    got = cs.read_range("BTCUSDT", "1m")
    assert [r["open_time"] for r in got] == [D0 + (i - 2) * MIN for i in range(5)]
    assert got[2]["open"] == 555.0 and got[2]["source"] == "rest"
    assert got[0] == {**{k: docs[0][k] for k in ROW_FIELDS if k != "flags"}, "flags": []}
    assert [r["open_time"] for r in cs.read_range("BTCUSDT", "1d")] == [D0]
    assert cs.count("ETHUSDT", "1m") == 3
    before = {d["_id"]: d["v"] for d in mongo_store.db[BUCKETS].find({}, {"v": 1})}

    again = migrate(mongo_store)  # idempotent: nothing to add, no bucket rewritten
    assert again.candles_added == 0 and again.buckets_written == 0
    assert {d["_id"]: d["v"] for d in mongo_store.db[BUCKETS].find({}, {"v": 1})} == before

    main(["migrate", "--mongo-url", mongo_store.url, "--db", mongo_store.db_name, "--drop-legacy"])
    assert LEGACY not in mongo_store.db.list_collection_names()
    assert cs.count("BTCUSDT", "1m") == 5


def test_drop_legacy_after_a_partial_migration_keeps_what_was_not_migrated(mongo_store: MongoStore) -> None:
    """``--symbol X --drop-legacy`` (or an interval subset) used to drop every symbol's legacy candles."""
    legacy = mongo_store.db[LEGACY]
    rows = [*minutes(D0, 3), *minutes(D0, 2, symbol="ETHUSDT"), candle(D0, "1h")]
    legacy.insert_many([{"_id": f"{c['symbol']}:{c['interval']}:{c['open_time']}", **c} for c in rows])
    cs = CandleStore(mongo_store)

    rep = migrate(mongo_store, symbols=["BTCUSDT"], intervals=["1m"], drop_legacy=True)
    assert rep.candles_added == 3 and not rep.dropped_legacy
    left = sorted((d["symbol"], d["interval"]) for d in legacy.find({}, {"symbol": 1, "interval": 1}))
    assert left == [("BTCUSDT", "1h"), ("ETHUSDT", "1m"), ("ETHUSDT", "1m")]  # not migrated: kept
    assert cs.count("BTCUSDT", "1m") == 3

    main(["migrate", "--mongo-url", mongo_store.url, "--db", mongo_store.db_name, "--drop-legacy"])
    assert LEGACY not in mongo_store.db.list_collection_names()  # everything migrated now: dropped
    assert cs.count("ETHUSDT", "1m") == 2 and cs.count("BTCUSDT", "1h") == 1


def test_unknown_layouts_intervals_and_fields_are_refused(mongo_store: MongoStore) -> None:
    cs = CandleStore(mongo_store)
    cs.sync_range("BTCUSDT", "1m", D0, D0 + MIN, [candle(D0)])
    mongo_store.db[BUCKETS].update_one({}, {"$set": {"enc": 99}})  # a layout from a newer writer
    with pytest.raises(ValueError, match="encoding 99"):
        cs.read_range("BTCUSDT", "1m")
    with pytest.raises(ValueError, match="unsupported candle interval '1w'"):
        cs.sync_range("BTCUSDT", "1w", D0, D0 + DAY, [{**candle(D0), "interval": "1w"}])
    with pytest.raises(KeyError, match="unknown candle fields"):
        cs.read_range("BTCUSDT", "1m", projection=["open_time", "password"])


def test_ndjson_rendering_is_one_line_per_candle_even_with_braces_in_strings(mongo_store: MongoStore) -> None:
    import json

    from api.candle_reads import iter_ndjson

    cs = CandleStore(mongo_store)
    rows = minutes(D0, 4)
    rows[1]["source"] = "odd},{source"
    cs.sync_range("BTCUSDT", "1m", D0, D0 + DAY, rows)
    cs.sync_range("ETHUSDT", "1m", D0, D0 + DAY, minutes(D0, 4, symbol="ETHUSDT", flags=["bad_print"]))
    for sym, expect in (("BTCUSDT", rows), ("ETHUSDT", minutes(D0, 4, symbol="ETHUSDT", flags=["bad_print"]))):
        body = b"".join(iter_ndjson(cs, sym, "1m", ROW_FIELDS, D0, D0 + DAY))
        lines = [json.loads(line) for line in body.splitlines()]
        assert lines == [{k: r[k] for k in ROW_FIELDS} for r in expect]
        # byte for byte what orjson renders for each row dict
        assert body == b"".join(orjson.dumps({k: r[k] for k in ROW_FIELDS}) + b"\n" for r in expect)


@pytest.mark.parametrize("fmt", ["arrow", "csv"])
def test_columnar_streams_span_days_with_every_mix_of_sources_and_flags(mongo_store: MongoStore, fmt: str) -> None:
    """Spans join days whose value tables differ: one source, many, clean, flagged, empty flag lists."""
    import io

    import pyarrow.csv as pacsv
    import pyarrow.ipc as ipc

    from api.candle_reads import iter_arrow, iter_csv

    cs = CandleStore(mongo_store)
    days = [minutes(D0 + d * DAY, 30) for d in range(4)]
    days[1][3]["source"], days[1][4]["source"] = "rest", "archive"
    days[2][7]["flags"], days[2][8]["flags"] = ["bad_print"], ["ohlc", "verified"]
    days[3] = minutes(D0 + 3 * DAY, 30, flags=["provisional"])  # one value, not the empty list
    for d, rows in enumerate(days):
        cs.sync_range("BTCUSDT", "1m", D0 + d * DAY, D0 + (d + 1) * DAY, rows)
    expect = [{k: r[k] for k in ROW_FIELDS if k not in ("symbol", "interval")} for rows in days for r in rows]
    fields = [f for f in ROW_FIELDS if f not in ("symbol", "interval")]
    render = iter_arrow if fmt == "arrow" else iter_csv
    body = b"".join(bytes(c) for c in render(cs, "BTCUSDT", "1m", fields, D0 + 2 * MIN, D0 + 4 * DAY))
    if fmt == "arrow":
        got = ipc.open_stream(io.BytesIO(body)).read_all().to_pylist()
    else:
        got = pacsv.read_csv(io.BytesIO(body)).to_pylist()
        for r in got:
            r["flags"] = r["flags"].split("|") if r.get("flags") else []
    assert got == expect[2:]
    one_a_day = b"".join(bytes(c) for c in iter_arrow(cs, "BTCUSDT", "1m", fields, None, None, limit=31))
    assert [r["open_time"] for r in ipc.open_stream(io.BytesIO(one_a_day)).read_all().to_pylist()][-2:] == [
        D0 + 29 * MIN,
        D0 + DAY,
    ]


def test_buckets_written_out_of_order_read_back_ascending(mongo_store: MongoStore) -> None:
    cs = CandleStore(mongo_store)
    days = [5, 1, 9, 0, 3, 7, 2]
    for d in days:
        t = D0 + d * DAY
        cs.sync_range("BTCUSDT", "1m", t, t + DAY, minutes(t + 10 * MIN, 2))
    got = [r["open_time"] for r in cs.read_range("BTCUSDT", "1m", D0, D0 + 10 * DAY)]
    assert got == sorted(got) and len(got) == 2 * len(days)
    assert [b.start for b in cs.iter_buckets("BTCUSDT", "1m")] == [D0 + d * DAY for d in sorted(days)]


# -- encodings, re-encoding, concurrent writers -------------------------------------------------
def _age(mongo_store: MongoStore, *ids: str) -> None:
    """Rewrite buckets in encoding 1, as a store written before the compressed layout holds them."""
    coll = mongo_store.db[BUCKETS]
    for doc in coll.find({"_id": {"$in": list(ids)}} if ids else {}):
        coll.replace_one({"_id": doc["_id"]}, encode_bucket_v1(decode_bucket(doc), doc["v"]))


def _snapshot(mongo_store: MongoStore) -> dict[str, tuple[int, int]]:
    return {d["_id"]: (d["v"], d["updated_at"]) for d in mongo_store.db[BUCKETS].find({}, {"v": 1, "updated_at": 1})}


def test_old_and_new_encodings_read_alike_and_reencode_converts_each_bucket_once(mongo_store: MongoStore) -> None:
    cs = CandleStore(mongo_store)
    for d in range(4):
        cs.sync_range("BTCUSDT", "1m", D0 + d * DAY, D0 + (d + 1) * DAY, minutes(D0 + d * DAY, 300))
    cs.sync_range("BTCUSDT", "1d", D0, D0 + 2 * DAY, [candle(D0, "1d"), candle(D0 + DAY, "1d", px=200.0)])
    expected = cs.read_range("BTCUSDT", "1m")
    frame = cs.read_frame("BTCUSDT", "1m")
    _age(mongo_store, "BTCUSDT:1m:2026-03-11", "BTCUSDT:1m:2026-03-12", "BTCUSDT:1d:2026")
    encs = {d["_id"]: d["enc"] for d in mongo_store.db[BUCKETS].find({}, {"enc": 1})}
    assert sorted(encs.values()) == [1, 1, 1, 2, 2]
    # every reader sees the same candles, whichever layout each bucket is in
    assert cs.read_range("BTCUSDT", "1m") == expected
    assert cs.read_frame("BTCUSDT", "1m").equals(frame)
    assert sum(b.n for b in cs.iter_spans("BTCUSDT", "1m", rows=500)) == 1200
    assert cs.latest("BTCUSDT", "1m", 2, end=D0 + 10 * DAY) == expected[-2:]
    versions = list(mongo_store.db["dataset_versions"].find({}))
    before = _snapshot(mongo_store)

    rep = reencode(mongo_store)
    assert (rep.converted, rep.already_current, rep.complete) == (3, 2, True)
    assert rep.per_dataset == {"BTCUSDT:1m": 2, "BTCUSDT:1d": 1}
    assert rep.bytes_after * 3 < rep.bytes_before
    assert {d["enc"] for d in mongo_store.db[BUCKETS].find({}, {"enc": 1})} == {ENCODING}
    assert cs.read_range("BTCUSDT", "1m") == expected
    assert [r["open"] for r in cs.read_range("BTCUSDT", "1d")] == [100.0, 200.0]
    # the candles did not change: same write counters, same timestamps, no cache invalidated
    assert _snapshot(mongo_store) == before
    assert list(mongo_store.db["dataset_versions"].find({})) == versions

    again = reencode(mongo_store)  # idempotent: nothing left
    assert (again.converted, again.already_current, again.complete) == (0, 5, True)


def test_reencode_stopped_at_any_point_resumes_where_it_stopped(
    mongo_store: MongoStore, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import dm_resources.candle_store.migrations as migration

    cs = CandleStore(mongo_store)
    for d in range(5):
        cs.sync_range("ETHUSDT", "1m", D0 + d * DAY, D0 + (d + 1) * DAY, minutes(D0 + d * DAY, 20, symbol="ETHUSDT"))
    expected = cs.read_range("ETHUSDT", "1m")
    _age(mongo_store)
    real = migration.encode_bucket
    calls = {"n": 0}

    def dies_on_the_third(b: Bucket, v: int) -> dict[str, Any]:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # the operator's ^C, or the pod killed mid-run
        return real(b, v)

    monkeypatch.setattr(migration, "encode_bucket", dies_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        reencode(mongo_store)
    monkeypatch.setattr(migration, "encode_bucket", real)
    assert sorted(d["enc"] for d in mongo_store.db[BUCKETS].find({}, {"enc": 1})) == [1, 1, 1, 2, 2]
    assert cs.read_range("ETHUSDT", "1m") == expected  # half-converted stores serve every candle

    # the CLI in slices: --limit 1, then the rest
    main(["reencode", "--mongo-url", mongo_store.url, "--db", mongo_store.db_name, "--limit", "1"])
    first = json.loads(capsys.readouterr().out)
    assert (first["converted"], first["complete"]) == (1, False)
    main(["reencode", "--mongo-url", mongo_store.url, "--db", mongo_store.db_name, "--symbol", "ETHUSDT"])
    rest = json.loads(capsys.readouterr().out)
    assert (rest["converted"], rest["already_current"], rest["complete"]) == (2, 3, True)
    assert cs.read_range("ETHUSDT", "1m") == expected


def test_reencode_never_overwrites_a_bucket_a_writer_changed_meanwhile(
    mongo_store: MongoStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dm_resources.candle_store.migrations as migration

    cs = CandleStore(mongo_store)
    cs.sync_range("BTCUSDT", "1m", D0, D0 + DAY, minutes(D0, 10))
    _age(mongo_store)
    real = migration.encode_bucket

    def writer_slips_in(b: Bucket, v: int) -> dict[str, Any]:
        CandleStore(mongo_store).sync_range("BTCUSDT", "1m", D0, D0 + DAY, [candle(D0 + 10 * MIN, px=7.0)])
        return real(b, v)

    monkeypatch.setattr(migration, "encode_bucket", writer_slips_in)
    rep = reencode(mongo_store)
    assert (rep.converted, rep.changed_meanwhile) == (0, 1)
    got = cs.read_range("BTCUSDT", "1m")
    assert len(got) == 11 and got[-1]["open"] == 7.0  # the writer's candle survived
    assert mongo_store.db[BUCKETS].find_one({})["enc"] == ENCODING  # and the writer wrote the new layout


def test_six_writers_of_one_year_bucket_all_land(mongo_store: MongoStore) -> None:
    """Each writer owns different days of one 1d year bucket: every write must end stored."""
    y0 = int(dt.datetime(2026, 1, 1, tzinfo=dt.UTC).timestamp() * 1000)
    writers, days_each = 6, 25

    def write(w: int) -> int:
        cs = CandleStore(MongoStore(mongo_store.url, mongo_store.db_name))
        try:
            for i in range(days_each):
                t = y0 + (i * writers + w) * DAY
                cs.sync_range("BTCUSDT", "1d", t, t + DAY, [candle(t, "1d", px=float(w))])
        finally:
            cs.store.close()
        return days_each

    with ThreadPoolExecutor(writers) as pool:
        assert sum(pool.map(write, range(writers))) == 150  # a ConcurrentWriteError would surface here
    got = CandleStore(mongo_store).read_range("BTCUSDT", "1d")
    assert len(got) == 150
    assert all(r["open"] == float((r["open_time"] - y0) // DAY % writers) for r in got)


def test_a_later_buckets_failure_still_bumps_the_version_for_the_buckets_written(mongo_store: MongoStore) -> None:
    cs = CandleStore(mongo_store)
    cs.sync_range("BTCUSDT", "1m", D0 + DAY, D0 + DAY + MIN, [candle(D0 + DAY)])
    mongo_store.db[BUCKETS].update_one({"_id": "BTCUSDT:1m:2026-03-11"}, {"$set": {"enc": 99}})  # unreadable
    v0 = mongo_store.db["dataset_versions"].find_one({"_id": "candles:BTCUSDT:1m"})["v"]
    rows = [*minutes(D0 + DAY - 3 * MIN, 3), candle(D0 + DAY + MIN)]  # day 1 (written), then day 2 (fails)
    with pytest.raises(ValueError, match="encoding 99"):
        cs.sync_range("BTCUSDT", "1m", D0 + DAY - 3 * MIN, D0 + DAY + 2 * MIN, rows)
    assert cs.count("BTCUSDT", "1m", D0, D0 + DAY) == 3  # day 1 was written ...
    ver = mongo_store.db["dataset_versions"].find_one({"_id": "candles:BTCUSDT:1m"})
    assert ver["v"] == v0 + 1 and ver["newest"] >= D0 + DAY - MIN  # ... and the cache was told


def test_a_write_whose_answer_was_lost_still_counts_as_written(
    mongo_store: MongoStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server stored the bucket but the connection dropped before it answered; the retry finds it done."""
    from pymongo.errors import AutoReconnect

    real = mongo_store.db[BUCKETS]

    class DropsTheFirstAnswer:
        dropped = False

        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        def insert_one(self, doc: dict[str, Any]) -> Any:
            res = real.insert_one(doc)
            if not DropsTheFirstAnswer.dropped:
                DropsTheFirstAnswer.dropped = True
                raise AutoReconnect("connection reset after the write")
            return res

    monkeypatch.setattr(CandleStore, "coll", property(lambda self: DropsTheFirstAnswer()))
    res = CandleStore(mongo_store).sync_range("BTCUSDT", "1m", D0, D0 + DAY, minutes(D0, 3))
    assert DropsTheFirstAnswer.dropped and res.upserted == 0  # the retry found the candles stored
    assert mongo_store.db["dataset_versions"].find_one({"_id": "candles:BTCUSDT:1m"})["v"] == 1  # still told


def test_candles_before_the_read_floor_are_refused_not_stored_unseen(mongo_store: MongoStore) -> None:
    t = int(dt.datetime(2009, 12, 31, tzinfo=dt.UTC).timestamp() * 1000)
    with pytest.raises(ValueError, match=r"before \d+ \(2010-01-01\)"):
        CandleStore(mongo_store).sync_range("BTCUSDT", "1m", t, t + DAY, [candle(t)])
    assert mongo_store.db[BUCKETS].count_documents({}) == 0


def test_read_ahead_stops_its_helper_when_the_reader_stops_and_hands_over_errors() -> None:
    from dm_resources.candle_store.store import read_ahead

    closed = threading.Event()

    def source() -> Iterator[int]:
        try:
            yield from range(1_000_000)
        finally:
            closed.set()

    it = read_ahead(source())
    assert [next(it), next(it)] == [0, 1]
    it.close()  # a client that disconnects mid-stream
    assert closed.is_set() and not any(t.name == "candle-read-ahead" for t in threading.enumerate())

    def fails() -> Iterator[int]:
        yield 1
        raise RuntimeError("server went away")

    with pytest.raises(RuntimeError, match="server went away"):
        list(read_ahead(fails()))
