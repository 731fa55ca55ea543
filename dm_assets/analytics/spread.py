"""Bid–ask spread statistics from book tickers, and order-book imbalance from depth.

spread_bps = (ask − bid) / mid × 10⁴,  mid = (ask + bid) / 2.

Quotes with a missing or non-positive bid/ask are dropped (counted as ``invalid``);
crossed quotes (ask < bid, negative spread) are kept and counted as ``crossed``, since
hiding them would hide a data problem. Prices may be floats, decimal strings or
Decimal128 (raw documents).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from dm_assets.analytics.volatility import ResultMixin, json_float, numeric, to_float

__all__ = [
    "SpreadResult",
    "compute_spread",
    "imbalance_series",
    "order_book_imbalance",
    "spread_bps",
    "time_weighted_mean",
]


def spread_bps(bid: pd.Series | np.ndarray, ask: pd.Series | np.ndarray) -> Any:
    """(ask − bid) / mid × 1e4, element-wise."""
    return (ask - bid) / ((ask + bid) / 2.0) * 1e4


def time_weighted_mean(times: np.ndarray, values: np.ndarray, window_end: int | None) -> float | None:
    """Mean of a step function: each value weighted by how long it stood.

    A quote stands from its event_time until the next quote's event_time; the last one
    until ``window_end`` (or for 0 ms when no window end is given). ``times`` must be
    ascending. None when the total duration is 0 (e.g. one quote and no window end).
    """
    if len(times) == 0:
        return None
    t = np.asarray(times, dtype="int64")
    end = int(t[-1]) if window_end is None else int(window_end)
    if end < t[-1]:
        raise ValueError("window_end is before the last quote")
    durations = np.diff(np.append(t, end)).astype("float64")
    total = durations.sum()
    if total <= 0:
        return None
    return json_float(float(np.dot(durations, np.asarray(values, dtype="float64")) / total))


# --------------------------------------------------------------------------- order-book imbalance


def order_book_imbalance(
    bids: Sequence[Sequence[Any]], asks: Sequence[Sequence[Any]], levels: int = 10
) -> float | None:
    """(Σ bid qty − Σ ask qty) / (Σ bid qty + Σ ask qty) over the best ``levels`` of each side.

    Best bids are the highest prices, best asks the lowest; levels with qty ≤ 0 (a
    removal in a diff update) are not liquidity and are ignored. +1 = only bids, −1 =
    only asks; None when neither side has any quantity.
    """
    if levels < 1:
        raise ValueError("levels must be >= 1")
    b = _side(bids, descending=True)[:levels]
    a = _side(asks, descending=False)[:levels]
    sb, sa = float(sum(q for _, q in b)), float(sum(q for _, q in a))
    if sb + sa <= 0:
        return None
    return (sb - sa) / (sb + sa)


def _side(levels: Sequence[Sequence[Any]] | None, descending: bool) -> list[tuple[float, float]]:
    pairs = [(to_float(p), to_float(q)) for p, q in (levels or [])]
    pairs = [(p, q) for p, q in pairs if q > 0 and np.isfinite(p)]
    return sorted(pairs, key=lambda pq: pq[0], reverse=descending)


def imbalance_series(depth: pd.DataFrame, levels: int = 10, time_field: str = "event_time") -> pd.Series:
    """Imbalance of every depth message (top ``levels`` per side), indexed by ``time_field``.

    Each message is taken as the book it shows: exact for partial-depth snapshots
    (``@depth5/10/20`` streams, REST snapshots). On *diff* updates (the ``depth_updates``
    collection) it is the imbalance of the liquidity added at the levels touched — an
    order-flow measure, not the resting book. Vectorized: levels are exploded to long
    form, ranked per message and side, then summed.
    """
    if levels < 1:
        raise ValueError("levels must be >= 1")
    if depth is None or len(depth) == 0:
        return pd.Series(dtype="float64", name="imbalance")
    msg = np.arange(len(depth))
    parts = []
    for side in ("bids", "asks"):
        long = pd.DataFrame({"msg": msg, "lvl": depth[side].to_numpy()}).explode("lvl").dropna(subset=["lvl"])
        if long.empty:
            continue
        pq = pd.DataFrame(long["lvl"].tolist(), index=long.index, columns=["p", "q"])
        long = long.assign(p=numeric(pq["p"]), q=numeric(pq["q"]), side=side)
        long = long[(long["q"] > 0) & np.isfinite(long["p"])]
        long = long.sort_values(["msg", "p"], ascending=[True, side == "asks"])
        long = long[long.groupby("msg").cumcount() < levels]
        parts.append(long.groupby("msg")["q"].sum().rename(side))
    sums = pd.concat(parts, axis=1) if parts else pd.DataFrame()
    sums = sums.reindex(msg).reindex(columns=["bids", "asks"]).fillna(0.0)
    total = sums["bids"] + sums["asks"]
    imb = ((sums["bids"] - sums["asks"]) / total).where(total > 0)
    index = pd.Index(depth[time_field].to_numpy(), name=time_field)
    return pd.Series(imb.to_numpy(), index=index, name="imbalance")


# --------------------------------------------------------------------------- result


@dataclass
class SpreadResult(ResultMixin):
    """Spread statistics (basis points) over a set of book-ticker quotes, plus depth imbalance.

    ``p95_bps`` uses linear interpolation between order statistics (numpy's default).
    ``time_weighted_mean_bps`` weights each quote by how long it stood (see
    :func:`time_weighted_mean`). ``imbalance_*`` are present when depth is given.
    """

    count: int
    invalid: int
    crossed: int
    window_start: int | None
    window_end: int | None
    insufficient_data: bool
    mean_bps: float | None = None
    median_bps: float | None = None
    p95_bps: float | None = None
    min_bps: float | None = None
    max_bps: float | None = None
    last_bps: float | None = None
    time_weighted_mean_bps: float | None = None
    levels: int | None = None
    imbalance_mean: float | None = None
    imbalance_last: float | None = None
    imbalance_count: int = 0
    # Where the imbalance came from: "orderbook" (the rebuilt book, orderbook_snapshots) or
    # "depth_updates" (liquidity changed by diffs: order flow, not the resting book).
    imbalance_source: str | None = None
    book_snapshots: int = 0
    book_spread_mean_bps: float | None = None
    book_spread_last_bps: float | None = None


def compute_spread(
    book_tickers: pd.DataFrame,
    window_end: int | None = None,
    depth: pd.DataFrame | None = None,
    levels: int = 10,
    book: pd.DataFrame | None = None,
) -> SpreadResult:
    """Spread stats of one symbol's quotes; ``window_end`` (ms) bounds the last quote's weight.

    ``book`` (``snapshot_time``, ``bids``, ``asks``: the rebuilt top-N book) gives the
    imbalance of the resting book and the book's own spread; without it the imbalance
    falls back to ``depth`` diffs.
    """
    res = SpreadResult(0, 0, 0, None, window_end, True)
    if book_tickers is not None and len(book_tickers):
        q = book_tickers.sort_values("event_time", kind="stable")
        bid, ask = numeric(q["bid_price"]), numeric(q["ask_price"])
        ok = (bid > 0) & (ask > 0)
        times = q["event_time"].to_numpy(dtype="int64")[ok.to_numpy()]
        s = spread_bps(bid[ok], ask[ok]).to_numpy(dtype="float64")
        res.invalid = int((~ok).sum())
        res.count = len(s)
        if len(s):
            res.crossed = int((s < 0).sum())
            res.window_start = int(times[0])
            res.window_end = int(window_end) if window_end is not None else int(times[-1])
            res.mean_bps = json_float(s.mean())
            res.median_bps = json_float(np.median(s))
            res.p95_bps = json_float(np.percentile(s, 95))
            res.min_bps = json_float(s.min())
            res.max_bps = json_float(s.max())
            res.last_bps = json_float(s[-1])
            res.time_weighted_mean_bps = time_weighted_mean(times, s, window_end)
            res.insufficient_data = False
    if book is not None and len(book):
        b = book.sort_values("snapshot_time", kind="stable")
        imb = imbalance_series(b, levels, time_field="snapshot_time").dropna()
        res.imbalance_source = "orderbook"
        res.book_snapshots = len(b)
        best_bid = numeric(pd.Series([lv[0][0] if len(lv) else None for lv in b["bids"]], dtype="object"))
        best_ask = numeric(pd.Series([lv[0][0] if len(lv) else None for lv in b["asks"]], dtype="object"))
        ok = (best_bid > 0) & (best_ask > 0)
        bs = spread_bps(best_bid[ok], best_ask[ok]).to_numpy(dtype="float64")
        if len(bs):
            res.book_spread_mean_bps = json_float(bs.mean())
            res.book_spread_last_bps = json_float(bs[-1])
    elif depth is not None and len(depth):
        imb = imbalance_series(depth.sort_values("event_time", kind="stable"), levels).dropna()
        res.imbalance_source = "depth_updates"
    else:
        return res
    res.levels = levels
    res.imbalance_count = len(imb)
    if len(imb):
        res.imbalance_mean = json_float(imb.mean())
        res.imbalance_last = json_float(imb.iloc[-1])
    return res
