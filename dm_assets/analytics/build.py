"""Reading the stores for the analytics assets and shaping their ``analytics`` documents.

Plain functions over :class:`MongoStore` (no Dagster), so the glue is tested against a
real server and the asset bodies stay a loop over symbols.

Every result is computed *as of* a time ``as_of`` (the schedule passes its tick, an
operator may pass any past time) over a trailing window of closed data:

* candle kinds (volatility, volume, trend, correlation) read the candles of each interval
  in :data:`CANDLE_SPECS` whose bars closed by ``as_of`` — ``[end − lookback, end)`` with
  ``end = as_of`` floored to the interval — and store ``window_end = end``;
* spread reads the book tickers of the trailing :data:`SPREAD_LOOKBACK_MS` (and depth of
  the trailing :data:`DEPTH_LOOKBACK_MS`), funding the settled rates of the trailing
  :data:`FUNDING_LOOKBACK_MS` plus the latest mark prices; both store ``window_end`` =
  ``as_of`` floored to the minute and name their lookback in ``interval`` ("1h", "30d").

Why ``as_of`` and not the data's own end as the key: every kind of one run shares the
same ``window_end``, so a reader can join them, a re-run of a tick rewrites the same
documents (idempotent ``upsert`` by ``_id``), and stale input shows in the values
(``bars``, ``values.window_end``) instead of silently moving the key. A symbol with no
input at all for a kind gets no document (``latest`` then still shows the last real one,
whose ``window_end`` tells how old it is).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd

from dm_assets.analytics.correlation import compute_correlation
from dm_assets.analytics.funding import compute_funding
from dm_assets.analytics.spread import compute_spread
from dm_assets.analytics.trend import compute_trend
from dm_assets.analytics.volatility import compute_volatility
from dm_assets.analytics.volume import compute_volume
from dm_assets.candles import compute
from dm_assets.candles.build import read_candles
from dm_assets.candles.integrity import FINDING_FLAGS
from dm_resources.contracts import CORRELATION_SYMBOL
from dm_resources.intervals import DAY_MS, HOUR_MS, MINUTE_MS

if TYPE_CHECKING:
    from dm_resources.mongo import MongoStore


# Crossover lists grow with the lookback; the newest ones are what a reader acts on.
MAX_CROSSOVERS = 20

SPREAD_LOOKBACK_MS = HOUR_MS
SPREAD_LABEL = "1h"
# Depth diff updates are the heaviest raw documents (lists of levels, several per second):
# the imbalance of the last five minutes is what the spread figure is read next to.
DEPTH_LOOKBACK_MS = 5 * MINUTE_MS
DEPTH_LEVELS = 10
FUNDING_LOOKBACK_MS = 30 * DAY_MS
FUNDING_LABEL = "30d"
# Mark prices arrive every 1–3 s; the last hour is plenty for the predicted rate and the
# next funding time (the interval fallback only matters with < 2 settled events).
MARK_LOOKBACK_MS = HOUR_MS


# Candles the integrity checks flagged; analytics read them as missing bars.
SUSPECT_FLAGS = frozenset(FINDING_FLAGS)


@dataclass(frozen=True)
class CandleSpec:
    """What the candle-based analytics use for one interval: how far back and which windows (in bars)."""

    interval: str
    lookback_ms: int
    volatility_window: int
    volume_window: int
    trend_fast: int
    trend_slow: int
    correlation_windows: tuple[int, ...]


# Every candle interval the API serves (api.params.CANDLE_PERIODS) is computed, each over a
# lookback of a few hundred to ~1,400 bars (a few ms per read on the (symbol, interval,
# open_time) index): 1m over the last day (1h volatility, 1h/4h/1d correlation), 5m over 3
# days, 15m over 7 days, 1h over 30 days (1d volatility, 1d/7d/30d correlation), 4h over 90
# days and 1d over a year. Windows are in bars and read as wall-clock spans in the comments.
CANDLE_SPECS: tuple[CandleSpec, ...] = (
    CandleSpec(
        "1m",
        DAY_MS,
        volatility_window=60,
        volume_window=20,
        trend_fast=20,
        trend_slow=50,
        correlation_windows=(60, 240, 1440),
    ),
    # 4h volatility; 4h/1d/3d correlation
    CandleSpec(
        "5m",
        3 * DAY_MS,
        volatility_window=48,
        volume_window=24,
        trend_fast=20,
        trend_slow=50,
        correlation_windows=(48, 288, 864),
    ),
    # 8h volatility; 8h/1d/7d correlation
    CandleSpec(
        "15m",
        7 * DAY_MS,
        volatility_window=32,
        volume_window=24,
        trend_fast=20,
        trend_slow=50,
        correlation_windows=(32, 96, 672),
    ),
    CandleSpec(
        "1h",
        30 * DAY_MS,
        volatility_window=24,
        volume_window=24,
        trend_fast=20,
        trend_slow=50,
        correlation_windows=(24, 168, 720),
    ),
    # 7d volatility; 7d/30d/90d correlation
    CandleSpec(
        "4h",
        90 * DAY_MS,
        volatility_window=42,
        volume_window=30,
        trend_fast=20,
        trend_slow=50,
        correlation_windows=(42, 180, 540),
    ),
    # 30d volatility; 30d/90d/365d correlation
    CandleSpec(
        "1d",
        365 * DAY_MS,
        volatility_window=30,
        volume_window=20,
        trend_fast=20,
        trend_slow=50,
        correlation_windows=(30, 90, 365),
    ),
)
CANDLE_INTERVALS: tuple[str, ...] = tuple(s.interval for s in CANDLE_SPECS)

CANDLE_KINDS = ("volatility", "volume", "trend")
SYMBOL_KINDS = (*CANDLE_KINDS, "spread", "funding")
ALL_KINDS = (*SYMBOL_KINDS, "correlation")

# (kind, interval label) of every dataset this module writes: the catalog probes these.
DATASETS: tuple[tuple[str, str], ...] = (
    *((k, iv) for k in (*CANDLE_KINDS, "correlation") for iv in CANDLE_INTERVALS),
    ("spread", SPREAD_LABEL),
    ("funding", FUNDING_LABEL),
)


def floor_ms(t: int, step: int) -> int:
    return int(t) - int(t) % step


def doc_id(symbol: str, kind: str, interval: str, window_end: int) -> str:
    return f"{symbol}:{kind}:{interval}:{window_end}"


def analytics_document(
    symbol: str,
    kind: str,
    interval: str,
    window_end: int,
    values: Mapping[str, Any],
    computed_at: dt.datetime | None = None,
) -> dict[str, Any]:
    """One ``analytics`` document (docs/DATA_MODEL.md); ``computed_at`` is a UTC datetime (BSON date)."""
    return {
        "_id": doc_id(symbol, kind, interval, window_end),
        "symbol": symbol,
        "kind": kind,
        "interval": interval,
        "window_end": int(window_end),
        "values": dict(values),
        "computed_at": computed_at or dt.datetime.now(dt.UTC),
    }


def trim_trend(values: dict[str, Any], keep: int = MAX_CROSSOVERS) -> dict[str, Any]:
    """Keep the newest ``keep`` crossovers of each list and record how many there were in all."""
    out = dict(values)
    for name in ("sma_crossovers", "ema_crossovers"):
        crosses = list(out.get(name) or [])
        out[f"{name}_total"] = len(crosses)
        out[name] = crosses[-keep:]
    return out


# --------------------------------------------------------------------------- reads


def candle_window(spec: CandleSpec, as_of: int) -> tuple[int, int]:
    """[start, end) of the closed bars of ``spec`` as of ``as_of``."""
    end = floor_ms(as_of, compute.interval_ms(spec.interval))
    return end - spec.lookback_ms, end


def read_candle_window(store: MongoStore, symbol: str, spec: CandleSpec, as_of: int) -> pd.DataFrame:
    """The window's candles without the suspect ones: analytics must not build on a bad print.

    A candle flagged by the integrity checks (bad print, impossible OHLC, sources disagreeing),
    whether awaiting repair or kept because the exchange had nothing better, counts as a missing
    bar here; the estimators already treat missing bars as gaps (no return across them).
    """
    start, end = candle_window(spec, as_of)
    frame = read_candles(store, symbol, spec.interval, start, end)
    if frame.empty or "flags" not in frame:
        return frame
    suspect = frame["flags"].map(lambda f: bool(set(f or ()) & SUSPECT_FLAGS))
    return frame[~suspect].reset_index(drop=True) if suspect.any() else frame


def _floats(docs: Sequence[Mapping[str, Any]], name: str) -> Any:
    return compute.decimals_to_float([d.get(name) for d in docs])


def book_tickers_frame(docs: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """``book_tickers`` documents (Decimal128 prices) → event_time, bid/ask price and qty as float64."""
    return pd.DataFrame(
        {
            "event_time": [int(d["event_time"]) for d in docs],
            **{c: _floats(docs, c) for c in ("bid_price", "bid_qty", "ask_price", "ask_qty")},
        },
        columns=["event_time", "bid_price", "bid_qty", "ask_price", "ask_qty"],
    )


def depth_frame(docs: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """``depth_updates`` documents → event_time, bids, asks (level lists left as stored; spread converts them)."""
    return pd.DataFrame(
        {
            "event_time": [int(d["event_time"]) for d in docs],
            "bids": [d.get("bids") or [] for d in docs],
            "asks": [d.get("asks") or [] for d in docs],
        },
        columns=["event_time", "bids", "asks"],
    )


def funding_frame(docs: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "funding_time": [int(d["funding_time"]) for d in docs],
            "funding_rate": _floats(docs, "funding_rate"),
        },
        columns=["funding_time", "funding_rate"],
    )


def mark_prices_frame(docs: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "event_time": [int(d["event_time"]) for d in docs],
            "funding_rate": _floats(docs, "funding_rate"),
            "next_funding_time": pd.array([d.get("next_funding_time") for d in docs], dtype="Int64"),
        },
        columns=["event_time", "funding_rate", "next_funding_time"],
    )


def orderbook_frame(docs: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """``orderbook_snapshots`` documents → snapshot_time, bids, asks (exact levels, best first)."""
    return pd.DataFrame(
        {
            "snapshot_time": [int(d["snapshot_time"]) for d in docs],
            "bids": [d.get("bids") or [] for d in docs],
            "asks": [d.get("asks") or [] for d in docs],
        },
        columns=["snapshot_time", "bids", "asks"],
    )


def read_book_input(store: MongoStore, symbol: str, end: int) -> pd.DataFrame:
    """The rebuilt book (every 10 s) over the spread's trailing hour."""
    rows = store.read_range(
        "orderbook_snapshots",
        symbol,
        end - SPREAD_LOOKBACK_MS,
        end,
        projection={"_id": 0, "snapshot_time": 1, "bids": 1, "asks": 1},
    )
    return orderbook_frame(rows)


def read_spread_inputs(store: MongoStore, symbol: str, as_of: int) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """(book tickers of the trailing hour, depth of the trailing 5 minutes, window end)."""
    end = floor_ms(as_of, MINUTE_MS)
    quotes = store.read_range(
        "book_tickers",
        symbol,
        end - SPREAD_LOOKBACK_MS,
        end,
        projection={"_id": 0, "event_time": 1, "bid_price": 1, "bid_qty": 1, "ask_price": 1, "ask_qty": 1},
    )
    depth = store.read_range(
        "depth_updates",
        symbol,
        end - DEPTH_LOOKBACK_MS,
        end,
        projection={"_id": 0, "event_time": 1, "bids": 1, "asks": 1},
    )
    return book_tickers_frame(quotes), depth_frame(depth), end


def read_funding_inputs(store: MongoStore, symbol: str, as_of: int) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """(settled funding of the trailing 30 days, mark prices of the trailing hour, window end)."""
    end = floor_ms(as_of, MINUTE_MS)
    rates = store.read_range(
        "funding_rates",
        symbol,
        end - FUNDING_LOOKBACK_MS,
        end,
        projection={"_id": 0, "funding_time": 1, "funding_rate": 1},
    )
    marks = store.read_range(
        "mark_prices",
        symbol,
        end - MARK_LOOKBACK_MS,
        end,
        projection={"_id": 0, "event_time": 1, "funding_rate": 1, "next_funding_time": 1},
    )
    return funding_frame(rates), mark_prices_frame(marks), end


# --------------------------------------------------------------------------- per-kind results


def candle_kind_values(kind: str, candles: pd.DataFrame, spec: CandleSpec) -> dict[str, Any]:
    """The stored ``values`` of one candle kind: the pure function's ``to_dict()`` (trend trimmed)."""
    if kind == "volatility":
        return compute_volatility(candles, spec.interval, spec.volatility_window).to_dict()
    if kind == "volume":
        return compute_volume(candles, spec.interval, spec.volume_window).to_dict()
    if kind == "trend":
        return trim_trend(compute_trend(candles, spec.interval, spec.trend_fast, spec.trend_slow).to_dict())
    raise ValueError(f"not a candle kind: {kind!r}")


def correlation_values(candles_by_symbol: Mapping[str, pd.DataFrame], spec: CandleSpec) -> dict[str, Any]:
    """All windows of one interval in one document: ``{"windows": [result per window, shortest first]}``."""
    results = compute_correlation(candles_by_symbol, spec.interval, spec.correlation_windows)
    return {"windows": [r.to_dict() for r in results]}


def symbol_documents(
    store: MongoStore,
    symbol: str,
    as_of: int,
    kinds: Iterable[str] = SYMBOL_KINDS,
    computed_at: dt.datetime | None = None,
) -> list[dict[str, Any]]:
    """Every requested per-symbol kind as of ``as_of``; candles are read once per interval for all kinds."""
    wanted = set(kinds)
    unknown = wanted - set(SYMBOL_KINDS)
    if unknown:
        raise ValueError(f"unknown analytics kinds {sorted(unknown)}; known: {SYMBOL_KINDS}")
    computed_at = computed_at or dt.datetime.now(dt.UTC)
    docs: list[dict[str, Any]] = []
    candle_kinds = [k for k in CANDLE_KINDS if k in wanted]
    if candle_kinds:
        for spec in CANDLE_SPECS:
            candles = read_candle_window(store, symbol, spec, as_of)
            if candles.empty:
                continue
            end = candle_window(spec, as_of)[1]
            for kind in candle_kinds:
                docs.append(
                    analytics_document(
                        symbol, kind, spec.interval, end, candle_kind_values(kind, candles, spec), computed_at
                    )
                )
    if "spread" in wanted:
        quotes, depth, end = read_spread_inputs(store, symbol, as_of)
        book = read_book_input(store, symbol, end)
        if len(quotes) or len(depth) or len(book):
            # The rebuilt book when there is one (the resting book); diffs only as a fallback.
            values = compute_spread(
                quotes, window_end=end, depth=depth, levels=DEPTH_LEVELS, book=book if len(book) else None
            ).to_dict()
            docs.append(analytics_document(symbol, "spread", SPREAD_LABEL, end, values, computed_at))
    if "funding" in wanted:
        rates, marks, end = read_funding_inputs(store, symbol, as_of)
        if len(rates) or len(marks):
            values = compute_funding(rates, marks).to_dict()
            docs.append(analytics_document(symbol, "funding", FUNDING_LABEL, end, values, computed_at))
    return docs


def correlation_documents(
    store: MongoStore, symbols: Iterable[str], as_of: int, computed_at: dt.datetime | None = None
) -> list[dict[str, Any]]:
    """One cross-symbol document per candle interval (symbol ``*``); none when no symbol has candles."""
    computed_at = computed_at or dt.datetime.now(dt.UTC)
    docs = []
    syms = sorted(set(symbols))
    for spec in CANDLE_SPECS:
        frames = {s: read_candle_window(store, s, spec, as_of) for s in syms}
        if all(f.empty for f in frames.values()):
            continue
        end = candle_window(spec, as_of)[1]
        docs.append(
            analytics_document(
                CORRELATION_SYMBOL, "correlation", spec.interval, end, correlation_values(frames, spec), computed_at
            )
        )
    return docs


# --------------------------------------------------------------------------- summaries


def _fmt(v: Any, digits: int = 6) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


HEADLINES: dict[str, tuple[tuple[str, Callable[[Mapping[str, Any]], Any]], ...]] = {
    "volatility": (
        ("bars", lambda v: v.get("bars")),
        ("close_to_close", lambda v: v.get("close_to_close")),
        ("yang_zhang (ann.)", lambda v: (v.get("annualized") or {}).get("yang_zhang")),
    ),
    "volume": (
        ("total_volume", lambda v: v.get("total_volume")),
        ("vwap", lambda v: v.get("vwap")),
        ("spike_ratio", lambda v: v.get("spike_ratio")),
    ),
    "trend": (
        ("last_close", lambda v: v.get("last_close")),
        ("adx", lambda v: v.get("adx")),
        ("slope (ann.)", lambda v: v.get("slope_annualized")),
    ),
    "spread": (
        ("quotes", lambda v: v.get("count")),
        ("mean_bps", lambda v: v.get("mean_bps")),
        ("imbalance_mean", lambda v: v.get("imbalance_mean")),
    ),
    "funding": (
        ("events", lambda v: v.get("count")),
        ("mean", lambda v: v.get("mean")),
        ("annualized", lambda v: v.get("annualized")),
    ),
    "correlation": (
        ("symbols", lambda v: len((v.get("windows") or [{}])[0].get("symbols") or [])),
        ("observations", lambda v: (v.get("windows") or [{}])[-1].get("observations")),
        ("edges", lambda v: len(((v.get("windows") or [{}])[-1].get("graph") or {}).get("edges") or [])),
    ),
}


def summary_markdown(docs: Sequence[Mapping[str, Any]]) -> str:
    """A markdown table of each document's headline numbers, for the materialization's metadata."""
    if not docs:
        return "no input data in the window: nothing written"
    lines = ["| symbol | kind | interval | window_end (UTC) | headline | insufficient |", "|---|---|---|---|---|---|"]
    for d in docs:
        v = d["values"]
        head = ", ".join(f"{name} {_fmt(fn(v))}" for name, fn in HEADLINES[d["kind"]])
        when = dt.datetime.fromtimestamp(d["window_end"] / 1000, tz=dt.UTC).strftime("%Y-%m-%d %H:%M")
        insufficient = v.get("insufficient_data")
        if insufficient is None and "windows" in v:
            insufficient = all(w.get("insufficient_data") for w in v["windows"])
        lines.append(f"| {d['symbol']} | {d['kind']} | {d['interval']} | {when} | {head} | {insufficient} |")
    return "\n".join(lines)
