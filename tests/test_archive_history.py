"""History from Binance's public archive: a local mirror over real HTTP, real SecantusDB and metadata store.

Every guard of point 1 is fed its bad file here (checksum, truncated and corrupt zip, malformed
row, another symbol, another month, a unit that fits neither, 404) and seen refusing the whole file;
the good path is seen in both file formats and both time units, straight into day buckets.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from dm_assets.candles.engine import Engine
from dm_assets.candles.history import ArchiveBatch
from dm_assets.partitions import day_bounds_ms
from dm_resources.binance import BinanceClient, Kline
from dm_resources.binance_archive import (
    ArchiveClient,
    ArchiveKey,
    ArchiveMissing,
    ArchiveRefused,
    candidate_files,
    parse_zip,
)
from dm_resources.candle_store import CandleStore
from dm_resources.metadata.archive import archive_files
from dm_resources.metadata.store import MetadataStore
from dm_resources.mongo import MongoStore
from tests.archive_mirror import ArchiveMirror, kline_csv, zip_bytes
from tests.fake_exchange import FakeExchange

SYMBOL = "BTCUSDT"
DAY = "2026-03-10"  # a month that has ended: its monthly file (no header) is published
RECENT = "2026-04-01"  # a closed day of the current month: only its daily file (with a header)
START, END = day_bounds_ms(DAY)
NOW = day_bounds_ms("2026-04-02")[0] + 12 * 3_600_000 + 30_000  # 12:00:30, the 11:59 minute has closed
M = 60_000
MONTHLY = ArchiveKey.monthly(SYMBOL, dt.date(2026, 3, 1))
DAILY_RECENT = ArchiveKey.daily(SYMBOL, dt.date(2026, 4, 1))


@pytest.fixture
def exchange_now_ms() -> int:
    return NOW


@pytest.fixture
def mirror() -> ArchiveMirror:
    with ArchiveMirror(symbols=[SYMBOL, "ETHUSDT"], now_ms=NOW) as m:
        yield m


def engine(store: MongoStore, meta: MetadataStore, ex: FakeExchange, mirror: ArchiveMirror | None) -> Engine:
    client = BinanceClient(ex.url, now_ms=lambda: NOW, sleep=lambda s: None)
    archive = ArchiveBatch(ArchiveClient(mirror.url), run_id="run-1") if mirror is not None else None
    return Engine(store, meta, client, archive=archive, now=NOW, run_id="run-1")


def exchange_rows(ex: FakeExchange, day: str) -> list[list]:
    lo, hi = day_bounds_ms(day)
    return ex.klines(SYMBOL, "1m", lo, hi)


def assert_equals_exchange(store: MongoStore, ex: FakeExchange, day: str) -> None:
    lo, hi = day_bounds_ms(day)
    stored = CandleStore(store).read_range(SYMBOL, "1m", lo, hi)
    rows = exchange_rows(ex, day)
    assert [c["open_time"] for c in stored] == [r[0] for r in rows]
    for c, r in zip(stored[::97], rows[::97], strict=True):
        k = Kline.from_row(r)
        for f in ("open", "high", "low", "close", "volume", "quote_volume"):
            assert c[f] == float(getattr(k, f)), f
        assert c["trades"] == k.trades


# --------------------------------------------------------------------------- the file guards


def test_candidate_files_follow_binance_publication() -> None:
    today = dt.date(2026, 4, 2)
    assert candidate_files(SYMBOL, dt.date(2026, 3, 10), today) == [
        ArchiveKey.monthly(SYMBOL, dt.date(2026, 3, 10)),
        ArchiveKey.daily(SYMBOL, dt.date(2026, 3, 10)),
    ]
    assert candidate_files(SYMBOL, dt.date(2026, 4, 1), today) == [ArchiveKey.daily(SYMBOL, dt.date(2026, 4, 1))]
    assert candidate_files(SYMBOL, today, today) == []  # not closed: REST and live data only
    assert MONTHLY.path == "data/futures/um/monthly/klines/BTCUSDT/1m/BTCUSDT-1m-2026-03.zip"
    assert DAILY_RECENT.path == "data/futures/um/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2026-04-01.zip"


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ("checksum", "checksum mismatch"),
        ("truncated", "truncated or corrupt zip"),
        ("corrupt", "truncated or corrupt zip"),
        ("malformed", "line 722: high '12x.5' is not a number"),
        ("other_symbol", "expected exactly ['BTCUSDT-1m-2026-04-01.csv']"),
        ("other_month", "outside the file's period 2026-04-01"),
        ("bad_unit", "fits neither milliseconds (13 digits) nor microseconds (16)"),
    ],
)
def test_a_bad_file_is_refused_whole_naming_the_file_and_the_reason(
    mirror: ArchiveMirror, fault: str, reason: str
) -> None:
    mirror.faults[DAILY_RECENT.name] = fault
    with pytest.raises(ArchiveRefused) as err:
        ArchiveClient(mirror.url).fetch(DAILY_RECENT)
    assert err.value.name == "BTCUSDT-1m-2026-04-01.zip" and reason in err.value.reason


def test_missing_file_is_an_answer_not_a_refusal(mirror: ArchiveMirror) -> None:
    mirror.faults[DAILY_RECENT.name] = "missing"
    with pytest.raises(ArchiveMissing):
        ArchiveClient(mirror.url).fetch(DAILY_RECENT)
    with pytest.raises(ArchiveMissing):  # not published yet: the day is not over
        ArchiveClient(mirror.url).fetch(ArchiveKey.daily(SYMBOL, dt.date(2026, 4, 2)))


def test_both_formats_and_both_units_parse_to_the_same_rows(mirror: ArchiveMirror) -> None:
    times, cols = mirror.rows(DAILY_RECENT)
    plain, header_used, unit = parse_zip(
        zip_bytes(DAILY_RECENT.member, kline_csv(times, cols, header=False)), DAILY_RECENT
    )
    assert (header_used, unit, len(plain)) == (False, "ms", 1440)
    with_header, header_used, _ = parse_zip(
        zip_bytes(DAILY_RECENT.member, kline_csv(times, cols, header=True)), DAILY_RECENT
    )
    micros, _, unit = parse_zip(
        zip_bytes(DAILY_RECENT.member, kline_csv(times, cols, header=True, micros=True)), DAILY_RECENT
    )
    assert header_used and unit == "us"
    assert plain.equals(with_header) and plain.equals(micros)
    assert plain["open_time"].tolist() == times.tolist()


def test_a_file_with_a_row_outside_the_csv_shape_is_refused() -> None:
    times = np.arange(day_bounds_ms(RECENT)[0], day_bounds_ms(RECENT)[0] + 3 * M, M, dtype=np.int64)
    cols = {c: np.full(3, 100_00, dtype=np.int64) for c in ("open", "high", "low", "close")}
    cols |= {c: np.full(3, 5, dtype=np.int64) for c in ("volume", "quote_volume", "trades")}
    cols |= {c: np.full(3, 1, dtype=np.int64) for c in ("taker_buy_volume", "taker_buy_quote_volume")}
    csv = kline_csv(times, cols, header=False).replace(b",0\n", b",0,extra\n", 1)
    with pytest.raises(ArchiveRefused, match="malformed row: line 1: 13 fields"):
        parse_zip(zip_bytes(DAILY_RECENT.member, csv), DAILY_RECENT)
    repeated = kline_csv(np.r_[times, times[-1:]], {c: np.r_[v, v[-1:]] for c, v in cols.items()}, header=False)
    with pytest.raises(ArchiveRefused, match="repeats or goes back in time"):
        parse_zip(zip_bytes(DAILY_RECENT.member, repeated), DAILY_RECENT)


# --------------------------------------------------------------------------- history into day buckets


def test_closed_days_come_from_the_archive_into_day_buckets_with_provenance(
    mongo_store: MongoStore, meta: MetadataStore, exchange: FakeExchange, mirror: ArchiveMirror
) -> None:
    result = engine(mongo_store, meta, exchange, mirror).run([(DAY, SYMBOL), ("2026-03-11", SYMBOL), (RECENT, SYMBOL)])
    assert result.banned is None
    for p in result.partitions:
        b = p.builds["1m"]
        assert b.by_source == {"archive": 1440} and b.rest_requests == 0, p.partition_key
        assert all(r.passed for r in p.checks["1m"]), p.partition_key
        assert set(p.builds) == {"1m", "5m", "15m", "1h", "4h", "1d"}
        assert_equals_exchange(mongo_store, exchange, p.day)
    # One monthly file (no header) served both March days; April's day came from its daily file (header).
    assert sorted(mirror.files_requested()) == sorted([f"/{MONTHLY.path}", f"/{DAILY_RECENT.path}"]), (
        mirror.files_requested()
    )
    assert exchange.requests_to("/fapi/v1/klines") == []  # no REST weight spent on closed days
    assert mongo_store.count("klines") == 0  # never per-minute raw documents
    files = {f.name: f for f in archive_files(meta, SYMBOL)}
    march = files[MONTHLY.name]
    assert (march.status, march.rows, march.run_id) == ("accepted", 44_640, "run-1")
    assert march.sha256 and len(march.sha256) == 64 and march.fetches == 1
    prov = result.partitions[0].builds["1m"].archive_files[0]
    assert (prov["file"], prov["sha256"]) == (MONTHLY.name, march.sha256) and prov["fetched_at"].startswith("2026")
    # Quality rows from the same pass: every check outcome once, and a health row per interval.
    health = meta.health(symbol=SYMBOL, day_from=dt.date(2026, 3, 10), day_to=dt.date(2026, 3, 10))
    assert {h.interval for h in health} == {"1m", "5m", "15m", "1h", "4h", "1d"}
    assert all(h.score == 100.0 for h in health)
    logs = meta.audit_logs(partition_key=f"{DAY}|{SYMBOL}", limit=100)
    assert len(logs) == 6 + 5 * 4 and all(r.passed for r in logs)

    # A re-run reads the stored archive candles back: nothing downloaded, nothing written.
    again = engine(mongo_store, meta, exchange, mirror).run([(DAY, SYMBOL)])
    assert (again.partitions[0].builds["1m"].upserted, again.partitions[0].builds["1m"].modified) == (0, 0)
    assert len(mirror.files_requested()) == 2


def test_the_last_day_and_what_the_archive_lacks_come_from_rest_without_raw_documents(
    mongo_store: MongoStore, meta: MetadataStore, exchange: FakeExchange, mirror: ArchiveMirror
) -> None:
    mirror.faults[ArchiveKey.daily(SYMBOL, dt.date(2026, 3, 31)).name] = "missing"
    mirror.faults[ArchiveKey.monthly(SYMBOL, dt.date(2026, 3, 31)).name] = "missing"
    today = "2026-04-02"
    result = engine(mongo_store, meta, exchange, mirror).run([("2026-03-31", SYMBOL), (today, SYMBOL)])
    old, last = result.partitions
    assert old.builds["1m"].by_source == {"rest": 1440} and old.builds["1m"].rest_requests == 3  # 499+499+442
    assert old.archive is not None and sorted(old.archive.missing) == [
        "BTCUSDT-1m-2026-03-31.zip",
        "BTCUSDT-1m-2026-03.zip",
    ]
    assert last.builds["1m"].by_source == {"rest": 720}  # today up to the open minute
    assert {p["limit"] for p in exchange.requests_to("/fapi/v1/klines")} <= {"499", "442", "221"}
    assert mongo_store.count("klines") == 0  # a REST-filled day writes no raw klines any more
    assert_equals_exchange(mongo_store, exchange, "2026-03-31")
    requests = len(exchange.requests_to("/fapi/v1/klines"))
    again = engine(mongo_store, meta, exchange, mirror).run([("2026-03-31", SYMBOL)])
    assert again.partitions[0].builds["1m"].rest_requests == 0  # the stored REST candles are the record
    assert len(exchange.requests_to("/fapi/v1/klines")) == requests


def test_a_refused_file_is_an_audit_row_and_a_failed_check_and_a_later_run_retries_it(
    mongo_store: MongoStore, meta: MetadataStore, exchange: FakeExchange, mirror: ArchiveMirror
) -> None:
    mirror.faults[DAILY_RECENT.name] = "checksum"
    first = engine(mongo_store, meta, exchange, mirror).run([(RECENT, SYMBOL)])
    (p,) = first.partitions
    assert p.builds["1m"].by_source == {"rest": 1440}  # nothing from the refused file; REST filled the day
    check = {r.name: r for r in p.checks["1m"]}["archive_files_accepted"]
    assert (check.passed, check.severity) == (False, "WARN")
    assert check.details["refused"][0]["file"] == DAILY_RECENT.name
    assert "checksum mismatch" in check.details["refused"][0]["reason"]
    assert not p.blocked  # REST data is complete: derived intervals are written
    rows = meta.audit_logs(check_name="archive_files_accepted", passed=False, limit=10)
    assert any(r.details and r.details.get("event") == "archive_refused" for r in rows)
    assert any(DAILY_RECENT.name in (r.message or "") and "checksum mismatch" in (r.message or "") for r in rows)
    (rec,) = archive_files(meta, SYMBOL, status="refused")
    assert rec.name == DAILY_RECENT.name and "checksum mismatch" in (rec.reason or "")

    # The archive fixes the file: the next run fetches it again (the day is complete, but its file was refused),
    # accepts it and reconciles it with the REST candles; the check passes.
    del mirror.faults[DAILY_RECENT.name]
    second = engine(mongo_store, meta, exchange, mirror).run([(RECENT, SYMBOL)])
    (p2,) = second.partitions
    assert {r.name: r for r in p2.checks["1m"]}["archive_files_accepted"].passed
    assert all(r.passed for r in p2.checks["1m"])
    (rec,) = archive_files(meta, SYMBOL)
    assert (rec.status, rec.fetches) == ("accepted", 2)
    assert p2.builds["1m"].by_source == {"rest": 1440}  # REST was asked first and stays; they agree


def test_a_short_day_is_confirmed_missing_where_the_exchange_has_nothing_too(
    mongo_store: MongoStore, meta: MetadataStore, exchange: FakeExchange, mirror: ArchiveMirror
) -> None:
    outage = [START + i * M for i in range(600, 610)]
    exchange.holes.update((SYMBOL, t) for t in outage)
    mirror.holes.update((SYMBOL, t) for t in outage)
    (p,) = engine(mongo_store, meta, exchange, mirror).run([(DAY, SYMBOL)]).partitions
    b = p.builds["1m"]
    assert b.by_source == {"archive": 1430} and b.rest_requests == 1
    assert b.confirmed_missing == outage and b.missing == []  # the archive and REST both lack them
    assert meta.confirmed_missing(SYMBOL, "1m", START, END) == set(outage)
    checks = {r.name: r for r in p.checks["1m"]}
    assert checks["no_gaps"].passed and checks["no_gaps"].details["confirmed_missing"] == 10
    assert p.health["1m"].score < 100  # a reader of the day still sees the hole
    assert "1h" in p.builds and p.builds["1h"].rows == 24  # the hour with the outage equals the exchange's


def test_archive_and_websocket_disagreeing_is_reconciled_with_an_audit_row(
    mongo_store: MongoStore, meta: MetadataStore, exchange: FakeExchange, mirror: ArchiveMirror
) -> None:
    rows = exchange_rows(exchange, DAY)
    docs = [Kline.from_row(r).to_document(SYMBOL, "1m", source="ws") for r in rows[:600]]
    from bson.decimal128 import Decimal128

    docs[300]["volume"] = Decimal128(str(float(docs[300]["volume"].to_decimal()) + 1))  # a websocket kline off
    mongo_store.insert_idempotent("klines", docs)
    (p,) = engine(mongo_store, meta, exchange, mirror).run([(DAY, SYMBOL)]).partitions
    b = p.builds["1m"]
    assert b.by_source == {"kline": 600, "archive": 840}
    (dis,) = b.disagreements
    assert dis["open_time"] == START + 300 * M and dis["sources"] == ["archive", "kline"]
    assert "volume" in dis["values"]
    assert p.blocked and p.blocked_by == ["sources_agree"]  # blocking: the day's derived candles wait
    assert set(p.builds) == {"1m"}
    (event,) = [r for r in meta.audit_logs(check_name="sources_agree", limit=50) if (r.details or {}).get("event")]
    assert "archive and kline disagree" in (event.message or "")
    assert event.details and event.details["disagreement"]["sources"] == ["archive", "kline"]


def test_a_replaced_file_is_fetched_again_and_reconciled_with_the_stored_copy(
    mongo_store: MongoStore, meta: MetadataStore, exchange: FakeExchange, mirror: ArchiveMirror
) -> None:
    engine(mongo_store, meta, exchange, mirror).run([(RECENT, SYMBOL)])
    mirror.faults[DAILY_RECENT.name] = "replaced"  # Binance re-published the day with other closes
    (p,) = engine(mongo_store, meta, exchange, mirror).run([(RECENT, SYMBOL)]).partitions
    assert mirror.files_requested().count(f"/{DAILY_RECENT.path}") == 2
    assert p.builds["1m"].disagreements and p.blocked_by == ["sources_agree"]
    (rec,) = archive_files(meta, SYMBOL)
    assert rec.fetches == 2 and rec.status == "accepted"


def test_the_catalog_serves_the_provenance_of_archive_candles(
    mongo_store: MongoStore, meta: MetadataStore, exchange: FakeExchange, mirror: ArchiveMirror
) -> None:
    from fastapi.testclient import TestClient

    from api.app import create_app
    from dm_resources.settings import load_settings

    mirror.faults[ArchiveKey.daily(SYMBOL, dt.date(2026, 4, 1)).name] = "corrupt"
    engine(mongo_store, meta, exchange, mirror).run([(DAY, SYMBOL), (RECENT, SYMBOL)])
    settings = load_settings(mongo_url=mongo_store.url, mongo_db=mongo_store.db_name, symbols=[SYMBOL])
    with TestClient(create_app(settings, mongo=mongo_store, meta=meta)) as http:
        body = http.get(f"/catalog/provenance/candles:{SYMBOL}:1h").json()
        files = {f["file"]: f for f in body["files"]}
        march = files[MONTHLY.name]
        assert march["status"] == "accepted" and len(march["sha256"]) == 64 and march["rows"] == 44_640
        assert march["url"].endswith(MONTHLY.path) and march["fetched_at"]
        refused = files[DAILY_RECENT.name]
        assert refused["status"] == "refused" and "corrupt zip" in refused["reason"]
        window = http.get(f"/catalog/provenance/candles:{SYMBOL}:1m", params={"start": RECENT, "end": "2026-04-02"})
        assert [f["file"] for f in window.json()["files"]] == [DAILY_RECENT.name]
        assert http.get(f"/catalog/provenance/analytics.volatility:{SYMBOL}:1h").status_code == 404
        bad = http.get(f"/catalog/provenance/candles:{SYMBOL}:1m", params={"start": "2026-04-02", "end": RECENT})
        assert bad.status_code == 422 and "start" in bad.text
