"""Building one (day, symbol) partition of candles from the stores: the asset bodies' logic.

Plain functions over the plain store classes, so they are tested without Dagster
against real servers and the fake exchange. ``build_1m_day`` is the one 1m assembly path.

Where a 1m candle comes from (``compute.SOURCE_PRECEDENCE``, lower wins):

0. ``kline`` — the exchange's own closed kline from the websocket (``klines``, source ws);
1. ``rest`` — the exchange's closed kline from ``GET /fapi/v1/klines``, stored in the raw
   ``klines`` collection with source ``rest`` (a re-run reads it back instead of asking
   again); klines an extractor job wrote through ``/api/v1`` (source ``extractor``) count as
   REST rows, so their minutes need no request. REST is the exchange's settled record, so
   once it has been asked about a minute it overrules the other sources there (a repair
   replaces the raw websocket kline with it);
2. ``agg_trades`` — built from aggregated trades, only for minutes the trades are
   *provably complete* for: Binance's aggregate trade ids are consecutive per symbol, so a
   minute is complete when the ids inside it are consecutive and join up with the last
   trade before it and the first trade after it. This also proves a minute with no trades
   at all (ids ``a`` and ``a+1`` straddle it): its candle is flat at the previous close
   with zero volume, as Binance reports it. Such a minute needs no REST call at all;
3. still missing: an attempt is counted in the metadata store (only when the exchange
   *answered*; an error is not evidence); after ``confirm_after`` attempts the minute is
   *confirmed missing* (an exchange outage) and never asked for again.

Integrity (``integrity.py``): where a websocket kline and complete trades both have a
minute they are reconciled; every assembled minute is screened for impossible OHLC and
bad prints. A finding flags the stored candle (``flags``) and writes an ``audit_logs`` row
(``detected``); the checks fail (blocking) and the gap sensor asks for a repair run. That
run re-fetches each flagged minute from REST: a clean REST row replaces the suspect version
(raw kline replaced too; ``repaired``); a REST row that is itself suspect, or none at all,
leaves the minute flagged ``verified`` (``kept``: no better source exists; the checks then
WARN instead of blocking). The still-open minute (the one containing ``now``) and later
ones are not built.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from dm_assets.candles import checks, compute, integrity
from dm_assets.candles.integrity import FINDING_FLAGS, FLAG_BAD_PRINT, FLAG_OHLC
from dm_assets.partitions import day_bounds_ms
from dm_resources.candle_store import CandleStore
from dm_resources.intervals import MINUTE_MS
from dm_resources.metadata.schemas import AuditLogIn

if TYPE_CHECKING:
    from dm_resources.binance import BinanceClient
    from dm_resources.metadata.store import MetadataStore
    from dm_resources.mongo import MongoStore

log = logging.getLogger(__name__)

CONFIRM_AFTER_ATTEMPTS = 3
MAX_REPAIR_MINUTES = 120  # REST re-fetches per partition and run; the rest wait for the next run


@dataclass
class DayBuild:
    """What a partition's materialization did; becomes asset metadata."""

    symbol: str
    day: str
    interval: str = "1m"
    expected: int = 0
    by_source: dict[str, int] = field(default_factory=dict)
    missing: list[int] = field(default_factory=list)
    confirmed_missing: list[int] = field(default_factory=list)
    rest_requests: int = 0
    rest_rows: int = 0
    upserted: int = 0
    modified: int = 0
    rows: int = 0
    rest_error: str | None = None
    flagged: dict[str, int] = field(default_factory=dict)  # flag → candles carrying it
    detected: list[int] = field(default_factory=list)  # minutes newly found suspect this run
    repaired: list[int] = field(default_factory=list)
    kept: list[int] = field(default_factory=list)
    disagreements: list[dict[str, Any]] = field(default_factory=list)
    provisional: int = 0  # derived buckets over exchange holes not yet confirmed
    as_of: int | None = None  # the build's "now": its checks judge the data as of the same instant
    archive_files: list[dict[str, Any]] = field(default_factory=list)  # provenance: name, sha256, fetched_at
    archive_refused: list[dict[str, Any]] = field(default_factory=list)  # file, reason
    archive_missing: list[str] = field(default_factory=list)  # 404s

    @property
    def complete(self) -> bool:
        return not self.missing

    def as_metadata(self) -> dict[str, Any]:
        return {
            "symbol": self.symbol,
            "day": self.day,
            "interval": self.interval,
            "rows": self.rows,
            "expected": self.expected,
            "by_source": dict(self.by_source),
            "missing": len(self.missing),
            "confirmed_missing": len(self.confirmed_missing),
            "rest_requests": self.rest_requests,
            "rest_rows": self.rest_rows,
            "upserted": self.upserted,
            "modified": self.modified,
            "rest_error": self.rest_error or "",
            "flagged": dict(self.flagged),
            "detected": len(self.detected),
            "repaired": len(self.repaired),
            "kept": len(self.kept),
            "provisional": self.provisional,
            **({"archive_files": [f["file"] for f in self.archive_files]} if self.archive_files else {}),
            **({"archive_refused": self.archive_refused} if self.archive_refused else {}),
        }


def expected_minutes(day: str, now: int) -> np.ndarray:
    """Open times of the day's closed minutes: the full day in the past, up to the open minute today."""
    start, end = day_bounds_ms(day)
    end = min(end, now - now % MINUTE_MS)
    if end <= start:
        return np.empty(0, dtype=np.int64)
    return np.arange(start, end, MINUTE_MS, dtype=np.int64)


def complete_trade_minutes(trades: pd.DataFrame, minutes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split ``minutes`` into (minutes the trades prove complete, of which those with no trades at all).

    ``trades`` holds ``agg_id`` and ``trade_time`` for a window wider than ``minutes`` by at
    least one trade on each side. A minute is complete when the agg ids from the last trade
    before it to the first trade after it run without a hole.
    """
    if trades.empty or minutes.size == 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    t = trades.sort_values(["agg_id"])
    ids = t["agg_id"].to_numpy(dtype=np.int64)
    times = t["trade_time"].to_numpy(dtype=np.int64)
    if np.any(np.diff(times) < 0):  # ids and times disagree: do not trust contiguity
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    # For each minute: index of the first trade at/after its start and at/after its end.
    lo = np.searchsorted(times, minutes, side="left")
    hi = np.searchsorted(times, minutes + MINUTE_MS, side="left")
    has_before = lo > 0
    has_after = hi < len(times)
    ok = has_before & has_after
    # With a trade on each side, contiguity of ids[lo-1 .. hi] means ids[hi] - ids[lo-1] == hi - lo + 1.
    before_id = np.where(has_before, ids[np.maximum(lo - 1, 0)], 0)
    after_id = np.where(has_after, ids[np.minimum(hi, len(ids) - 1)], 0)
    ok &= (after_id - before_id) == (hi - lo + 1)
    complete = minutes[ok]
    empty = minutes[ok & (hi == lo)]
    return complete, empty


def _flat_candles(minutes: np.ndarray, trades: pd.DataFrame) -> pd.DataFrame:
    """Zero-volume minutes: OHLC at the last traded price before each minute."""
    t = trades.sort_values("trade_time")
    times = t["trade_time"].to_numpy(dtype=np.int64)
    prices = t["price"].to_numpy(dtype=np.float64)
    idx = np.searchsorted(times, minutes, side="left") - 1
    px = prices[idx]
    zeros = np.zeros(len(minutes))
    return pd.DataFrame(
        {
            "open_time": minutes,
            "open": px,
            "high": px,
            "low": px,
            "close": px,
            "volume": zeros,
            "quote_volume": zeros,
            "taker_buy_volume": zeros,
            "taker_buy_quote_volume": zeros,
            "trades": np.zeros(len(minutes), dtype=np.int64),
        }
    )


def _read_trades(store: MongoStore, symbol: str, start: int, end: int) -> pd.DataFrame:
    """Trades in [start, end) plus the nearest trade on each side (needed for the contiguity proof)."""
    proj = {
        "_id": 0,
        "agg_id": 1,
        "trade_time": 1,
        "price": 1,
        "qty": 1,
        "buyer_is_maker": 1,
        "first_trade_id": 1,
        "last_trade_id": 1,
    }
    docs = store.read_range("agg_trades", symbol, start - MINUTE_MS, end + MINUTE_MS, projection=proj)
    return compute.agg_trades_frame(docs)


def choose_versions(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """One row per open_time: the version from the source of lowest ``compute.source_rank``."""
    parts = [f for f in frames if f is not None and not f.empty]
    if not parts:
        return pd.DataFrame()
    if len(parts) == 1:  # one source (a history day): nothing to choose between
        only = parts[0]
        ot = only["open_time"].to_numpy(dtype=np.int64)
        if ot.size < 2 or bool(np.all(np.diff(ot) > 0)):
            return only.reset_index(drop=True)
    allv = pd.concat(parts, ignore_index=True)
    ranks = {s: compute.source_rank(s) for s in pd.unique(allv["source"])}
    allv["_rank"] = allv["source"].map(ranks).to_numpy(dtype=np.int64)
    allv = allv.sort_values(["open_time", "_rank"], kind="stable").drop_duplicates("open_time", keep="first")
    return allv.drop(columns="_rank").reset_index(drop=True)


def screen(candles: pd.DataFrame, th: integrity.Thresholds) -> dict[int, set[str]]:
    """Findings per open time on an assembled day: impossible OHLC and bad prints."""
    return screen_with_prints(candles, th)[0]


def screen_with_prints(
    candles: pd.DataFrame, th: integrity.Thresholds
) -> tuple[dict[int, set[str]], integrity.BadPrints | None]:
    """:func:`screen`, and the bad-print detection it ran (the 1m check reuses it for the same frame)."""
    found: dict[int, set[str]] = {}
    if candles.empty:
        return found, None
    ot = candles["open_time"].to_numpy(dtype=np.int64)
    rules = checks.ohlc_rules(candles)
    bad_ohlc = np.zeros(len(candles), dtype=bool)
    for mask in rules.values():
        bad_ohlc |= mask
    for t in ot[bad_ohlc].tolist():
        found.setdefault(int(t), set()).add(FLAG_OHLC)
    prints = integrity.detect_bad_prints(candles, MINUTE_MS, th)
    for t in prints.flagged_times().tolist():
        found.setdefault(int(t), set()).add(FLAG_BAD_PRINT)
    return found, prints


def _fetch_rest(
    client: BinanceClient, symbol: str, minutes: np.ndarray, out: DayBuild
) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """REST rows for ``minutes`` (contiguous runs, one request each): frame and raw documents."""
    docs: list[dict[str, Any]] = []
    for s, e in compute.group_into_ranges(minutes, MINUTE_MS):
        rows = client.fetch_klines(symbol, "1m", s, e)
        out.rest_requests += 1
        docs.extend(k.to_document(symbol, "1m", source="rest") for k in rows)
    frame = compute.klines_frame(docs)
    if not frame.empty:
        frame = frame[frame["open_time"].isin(minutes)].drop_duplicates("open_time")
        keep = set(frame["open_time"].tolist())
        docs = [d for d in docs if d["open_time"] in keep]
    return frame, docs


def check_for(flags: set[str]) -> str:
    """The check a finding fails (the most severe kind first)."""
    if FLAG_OHLC in flags:
        return "ohlc_sane"
    if FLAG_BAD_PRINT in flags:
        return "no_bad_prints"
    return "sources_agree"


def _values(row: pd.Series | None) -> dict[str, Any] | None:
    if row is None:
        return None
    return {c: float(row[c]) for c in ("open", "high", "low", "close", "volume")} | {"source": row["source"]}


def build_1m_day(
    store: MongoStore,
    meta: MetadataStore,
    client: BinanceClient | None,
    symbol: str,
    day: str,
    *,
    now: int | None = None,
    confirm_after: int = CONFIRM_AFTER_ATTEMPTS,
    th: integrity.Thresholds | None = None,
    run_id: str | None = None,
) -> DayBuild:
    """Materialize ``candles`` (1m) for one UTC day of one symbol; idempotent (see the module doc).

    One partition through :class:`dm_assets.candles.engine.Engine` (no archive, no quality rows):
    the asset builds many partitions, every interval and their checks in one pass with it.
    """
    from dm_assets.candles.engine import Engine

    engine = Engine(
        store,
        meta,
        client,
        intervals=("1m",),
        now=now,
        run_id=run_id,
        confirm_after=confirm_after,
        thresholds=(lambda _s: th) if th is not None else integrity.thresholds_for,
        record_quality=False,
    )
    return engine.run([(day, symbol)]).partitions[0].builds["1m"]


def _event(
    symbol: str,
    day: str,
    t: int,
    outcome: str,
    before: pd.Series,
    rest: pd.Series | None,
    flags: set[str],
    run_id: str | None,
) -> AuditLogIn:
    """An ``audit_logs`` row for a repair decision: what was suspect, what REST said, what was kept."""
    finding = sorted(flags & set(FINDING_FLAGS))
    check = check_for(flags)
    why = (
        "REST row is clean"
        if outcome == "repaired"
        else "REST has no row for this minute"
        if rest is None
        else "REST row is suspect too"
    )
    return AuditLogIn(
        check_name=check,
        severity="INFO" if outcome == "repaired" else "WARN",
        passed=outcome == "repaired",
        message=f"detected → {outcome} at {checks._iso(t)}: {', '.join(finding)}; {why}",
        details={
            "event": outcome,
            "open_time": t,
            "flags": finding,
            "sources": [before["source"], "rest"],
            "values": {"before": _values(before), "rest": _values(rest)},
        },
        asset_key="candles/candles_1m",
        partition_key=f"{day}|{symbol}",
        symbol=symbol,
        interval="1m",
        run_id=run_id,
    )


def read_candles(store: MongoStore, symbol: str, interval: str, start: int, end: int) -> pd.DataFrame:
    docs = CandleStore(store).read_range(symbol, interval, start, end, projection={"_id": 0})
    return compute.candles_frame(docs)


def exchange_missing(meta: MetadataStore, symbol: str, start: int, end: int) -> tuple[set[int], set[int]]:
    """1m minutes the exchange answered "no kline" for: (confirmed, asked at least once but not yet confirmed)."""
    confirmed: set[int] = set()
    pending: set[int] = set()
    for r in meta.missing(symbol, "1m", start, end - 1):
        (confirmed if r.confirmed_at is not None else pending).add(int(r.open_time))
    return confirmed, pending


def build_higher_day(
    store: MongoStore, meta: MetadataStore, symbol: str, day: str, interval: str, *, now: int | None = None
) -> DayBuild:
    """Derive one higher interval for one day from the stored 1m candles; idempotent.

    A bucket is written when each of its minutes is present or is one the exchange has
    *answered* it does not have (one REST answer suffices: an answer is not an error), so
    an hour with a 5-minute exchange outage has its candle after one 1m run, equal to the
    exchange's own kline, which leaves those minutes out too. Such a bucket is
    ``provisional`` (flag) until every one of its holes is confirmed (``confirm_after``
    answers), then confirmed (flag dropped on the next run). A bucket with minutes missing
    only from *our* copy is never written (it would pose as the exchange's kline with wrong
    numbers); those are reported in ``missing``. A derived candle carries the union of its
    minutes' flags, so a kept suspect minute stays visible at every interval.
    """
    from dm_assets.candles.engine import Engine

    engine = Engine(store, meta, None, intervals=(interval,), now=now, record_quality=False)
    return engine.run([(day, symbol)]).partitions[0].builds[interval]
