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
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from dm_assets.candles import checks, compute, integrity
from dm_assets.candles.integrity import FINDING_FLAGS, FLAG_BAD_PRINT, FLAG_DISAGREE, FLAG_OHLC, FLAG_VERIFIED
from dm_assets.partitions import day_bounds_ms
from dm_resources.candle_store import CandleStore
from dm_resources.contracts import now_ms
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
    allv = pd.concat(parts, ignore_index=True)
    allv["_rank"] = [compute.source_rank(s) for s in allv["source"].tolist()]
    allv = allv.sort_values(["open_time", "_rank"], kind="stable").drop_duplicates("open_time", keep="first")
    return allv.drop(columns="_rank").reset_index(drop=True)


def screen(candles: pd.DataFrame, th: integrity.Thresholds) -> dict[int, set[str]]:
    """Findings per open time on an assembled day: impossible OHLC and bad prints."""
    found: dict[int, set[str]] = {}
    if candles.empty:
        return found
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
    return found


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
    """Materialize ``candles`` (1m) for one UTC day of one symbol; idempotent (see the module doc)."""
    now = now if now is not None else now_ms()
    th = th if th is not None else integrity.thresholds_for(symbol)
    start = day_bounds_ms(day)[0]
    out = DayBuild(symbol=symbol, day=day, as_of=now)
    minutes = expected_minutes(day, now)
    out.expected = int(minutes.size)
    if minutes.size == 0:
        return out
    last = int(minutes[-1]) + MINUTE_MS
    confirmed = meta.confirmed_missing(symbol, "1m", start, last - 1)
    stored = read_candles(store, symbol, "1m", start, last)
    prior: dict[int, set[str]] = (
        {int(t): set(f) for t, f in zip(stored["open_time"].tolist(), stored["flags"].tolist(), strict=True) if f}
        if not stored.empty and "flags" in stored
        else {}
    )

    # 1. Exchange klines (websocket, or REST fetched earlier).
    kdocs = store.read_range("klines", symbol, start, last, extra={"interval": "1m"})
    klines = compute.klines_frame(kdocs)
    if not klines.empty:
        klines = klines[klines["open_time"].isin(minutes)].drop_duplicates("open_time")
    kline_times = set(klines["open_time"].tolist()) if not klines.empty else set()

    # 2. Aggregated trades: minutes they prove complete (needed where no kline exists, and
    #    compared with the kline where one does).
    trades = _read_trades(store, symbol, start, last)
    trade_parts: list[pd.DataFrame] = []
    if not trades.empty:
        trades = trades.drop_duplicates("agg_id")
        complete, empty = complete_trade_minutes(trades, minutes)
        with_trades = np.setdiff1d(complete, empty)
        if with_trades.size:
            built = compute.trades_to_1m(trades)
            trade_parts.append(built[built["open_time"].isin(with_trades)].assign(source=compute.SOURCE_TRADES))
        if empty.size:
            trade_parts.append(_flat_candles(empty, trades).assign(source=compute.SOURCE_TRADES))
    from_trades = pd.concat(trade_parts, ignore_index=True) if trade_parts else pd.DataFrame()
    trade_times = set(from_trades["open_time"].tolist()) if not from_trades.empty else set()

    # 3. REST for what is still missing.
    todo = np.array(
        [m for m in minutes.tolist() if m not in kline_times and m not in trade_times and m not in confirmed],
        dtype=np.int64,
    )
    rest_new = pd.DataFrame()
    if todo.size and client is not None:
        try:
            rest_new, docs = _fetch_rest(client, symbol, todo, out)
            if docs:
                store.insert_idempotent("klines", docs)
        except Exception as exc:  # an exchange error must not lose what was built from local data
            out.rest_error = f"{type(exc).__name__}: {exc}"
            log.warning("REST fill for %s %s failed: %s", symbol, day, out.rest_error)
        if not rest_new.empty:
            out.rest_rows = len(rest_new)
            todo = np.setdiff1d(todo, rest_new["open_time"].to_numpy(dtype=np.int64))

    # 4. Still missing: count an attempt (only when the exchange answered).
    newly_confirmed: set[int] = set()
    if todo.size and client is not None and out.rest_error is None:
        newly_confirmed = meta.mark_missing(
            symbol, "1m", todo.tolist(), "exchange returned no kline", confirm_after_attempts=confirm_after
        )
    out.confirmed_missing = sorted(confirmed | newly_confirmed)
    out.missing = sorted(set(todo.tolist()) - newly_confirmed)

    # 5. Assemble by precedence, reconcile websocket klines with complete trades.
    candles = choose_versions([klines, rest_new, from_trades])
    if candles.empty:
        return out
    ws = klines[klines["source"] == compute.SOURCE_KLINE] if not klines.empty else klines
    disagreements = integrity.reconcile(ws, from_trades, (compute.SOURCE_KLINE, compute.SOURCE_TRADES), th)
    found = screen(candles, th)
    for d in disagreements:
        found.setdefault(d.open_time, set()).add(FLAG_DISAGREE)
    out.disagreements = [d.as_dict() for d in disagreements]

    # 6. Repair: minutes found suspect in an earlier run and not yet verified are asked of REST again.
    events: list[AuditLogIn] = []
    idx = {int(t): i for i, t in enumerate(candles["open_time"].tolist())}
    to_verify = sorted(
        t for t, f in prior.items() if (f & set(FINDING_FLAGS)) and FLAG_VERIFIED not in f and t in found
    )[:MAX_REPAIR_MINUTES]
    verified_now: set[int] = set()
    if to_verify and client is not None and out.rest_error is None:
        try:
            rest_fix, fix_docs = _fetch_rest(client, symbol, np.asarray(to_verify, dtype=np.int64), out)
        except Exception as exc:
            out.rest_error = f"{type(exc).__name__}: {exc}"
            rest_fix, fix_docs = pd.DataFrame(), []
        if out.rest_error is None:
            by_time = {int(r["open_time"]): r for _, r in rest_fix.iterrows()} if not rest_fix.empty else {}
            docs_by_time = {d["open_time"]: d for d in fix_docs}
            for t in to_verify:
                before = candles.iloc[idx[t]].copy()
                row = by_time.get(t)
                if row is not None:
                    trial = candles.copy()
                    for c in (*compute.FLOAT_COLUMNS, "trades", "source"):
                        trial.iat[idx[t], trial.columns.get_loc(c)] = row[c]
                    trial_found = screen(trial, th).get(t, set())
                    if not trial_found:
                        candles = trial
                        store.upsert("klines", [docs_by_time[t]])  # the exchange's settled row overrules
                        found.pop(t, None)
                        out.repaired.append(t)
                        events.append(_event(symbol, day, t, "repaired", before, row, prior[t], run_id))
                        continue
                    candles = trial  # REST is the trusted source even when it is suspect too
                    found[t] = trial_found
                verified_now.add(t)
                out.kept.append(t)
                events.append(_event(symbol, day, t, "kept", before, row, prior[t], run_id))

    # 7. Flags: findings, plus "verified" where REST has been asked and had nothing better.
    flags_col: list[list[str]] = []
    for t in candles["open_time"].tolist():
        f = set(found.get(int(t), set()))
        if f and (int(t) in verified_now or FLAG_VERIFIED in prior.get(int(t), set())):
            f.add(FLAG_VERIFIED)
        flags_col.append(sorted(f))
        if f - {FLAG_VERIFIED} and not (prior.get(int(t), set()) & set(FINDING_FLAGS)):
            out.detected.append(int(t))
    candles["flags"] = flags_col
    disagreement_by_time = {d.open_time: d for d in disagreements}
    for t in out.detected:
        row = candles.iloc[idx[t]]
        dis = disagreement_by_time.get(t)
        events.append(
            AuditLogIn(
                check_name=check_for(found[t]),
                severity="ERROR",
                passed=False,
                message=f"detected {', '.join(sorted(found[t]))} at {checks._iso(t)} (source {row['source']})",
                details={
                    "event": "detected",
                    "open_time": t,
                    "flags": sorted(found[t]),
                    "values": _values(row),
                    **({"disagreement": dis.as_dict()} if dis else {}),
                },
                asset_key="candles/candles_1m",
                partition_key=f"{day}|{symbol}",
                symbol=symbol,
                interval="1m",
                run_id=run_id,
            )
        )
    if events:
        meta.record_audit(events)
    for names in flags_col:
        for name in names:
            out.flagged[name] = out.flagged.get(name, 0) + 1

    candles = candles.sort_values("open_time").reset_index(drop=True)
    docs = compute.candles_to_documents(candles, symbol, "1m")
    res = CandleStore(store).sync_range(symbol, "1m", start, last, docs)
    out.upserted, out.modified, out.rows = res.upserted, res.modified, len(docs)
    out.by_source = dict(Counter(candles["source"].tolist()))
    return out


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
    now = now if now is not None else now_ms()
    start, end = day_bounds_ms(day)
    step = compute.interval_ms(interval)
    out = DayBuild(symbol=symbol, day=day, interval=interval, as_of=now)
    one_m = read_candles(store, symbol, "1m", start, end)
    confirmed, pending = exchange_missing(meta, symbol, start, end)
    bars, incomplete = compute.resample(one_m, interval, confirmed_missing=confirmed | pending, now_ms=now)
    out.expected = int(compute.buckets_in_day(interval))
    out.missing = [int(t) for t in incomplete]
    if not bars.empty:
        bucket_flags: dict[int, set[str]] = {}
        if "flags" in one_m:
            for t, f in zip(one_m["open_time"].tolist(), one_m["flags"].tolist(), strict=True):
                if f:
                    bucket_flags.setdefault(int(t) - int(t) % step, set()).update(f)
        for t in pending:
            bucket_flags.setdefault(t - t % step, set()).add(integrity.FLAG_PROVISIONAL)
        flags = [sorted(bucket_flags.get(int(t), set())) for t in bars["open_time"].tolist()]
        out.provisional = sum(1 for f in flags if integrity.FLAG_PROVISIONAL in f)
        docs = compute.candles_to_documents(bars.assign(source="derived", flags=flags), symbol, interval)
        res = CandleStore(store).sync_range(symbol, interval, start, end, docs)
        out.upserted, out.modified, out.rows = res.upserted, res.modified, len(docs)
        out.by_source = {"derived": len(docs)}
        for f in flags:
            for name in f:
                out.flagged[name] = out.flagged.get(name, 0) + 1
    return out
