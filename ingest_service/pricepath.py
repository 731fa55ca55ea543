"""One deterministic market: the simulated exchange's klines and the session generator's trades.

Why one module: the demo replays a generated websocket session and fills holes from a
simulated Binance REST exchange; both must tell the same story, or the candles jump between
price levels where the sources meet. :class:`Market` generates every 1m kline as a pure
function of (seed, symbol, open_time) in integer smallest units (price 2 decimals,
quantity 3); :func:`minute_trades` turns one of those klines into aggregated trades whose
aggregate *is* that kline exactly (o/h/l/c, volume, quote volume, taker volumes, trade
count), so a websocket kline built from the session equals the exchange's REST row.

:func:`realistic_day` is a different tool: float 1m candles with the statistics of a
busy BTC day (fat-tailed returns, volatility clustering, intraday seasonality, wicks)
and an optional flash crash, used to measure the bad-print detector's false-positive rate
(``bench/bench_integrity.py``, ``tests/test_integrity_detection.py``).
"""

from __future__ import annotations

import datetime as dt
import zlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from dm_resources.intervals import DAY_MS, MINUTE_MS, bucket_start

PRICE_DECIMALS = 2
QTY_DECIMALS = 3
#: The market starts here (no klines before, like a listing date) and the generated history ends here.
GENESIS_MS = int(dt.datetime(2020, 1, 1, tzinfo=dt.UTC).timestamp()) * 1000
HORIZON_MS = int(dt.datetime(2032, 1, 1, tzinfo=dt.UTC).timestamp()) * 1000
_N_DAYS = (HORIZON_MS - GENESIS_MS) // DAY_MS
_DAILY_SIGMA = 0.03
_REFERENCE_DAY = (int(dt.datetime(2026, 1, 1, tzinfo=dt.UTC).timestamp()) * 1000 - GENESIS_MS) // DAY_MS
MIN_TRADES = 6  # minute_trades() needs 6 aggregated trades, each at least one raw trade
BASE_PRICES = {"BTCUSDT": 87_000.0, "ETHUSDT": 2_950.0, "SOLUSDT": 125.0, "BNBUSDT": 860.0, "XRPUSDT": 1.9}
_COLUMNS = (
    "open",
    "high",
    "low",
    "close",
    "volume",
    "quote_volume",
    "trades",
    "taker_buy_volume",
    "taker_buy_quote_volume",
)


class Market:
    """The deterministic 1m kline generator (integers in the smallest units)."""

    def __init__(self, seed: int = 20260101) -> None:
        self.seed = seed
        self._day_cache = lru_cache(maxsize=512)(self._make_day)
        self._anchor_cache = lru_cache(maxsize=64)(self._make_anchors)

    @staticmethod
    def _sym_key(symbol: str) -> int:
        return zlib.crc32(symbol.encode())

    def _make_anchors(self, symbol: str) -> np.ndarray:
        """Daily opening prices in cents, one random walk per symbol over the whole horizon."""
        key = self._sym_key(symbol)
        rng = np.random.default_rng([self.seed, key, 0])
        # Known symbols start at their usual price (the session generator's too); others anywhere
        # from a few dollars to ~60k.
        base = BASE_PRICES.get(symbol, 5.0 + (key % 60_000))
        steps = rng.normal(0.0, _DAILY_SIGMA, _N_DAYS + 1)
        steps[0] = 0.0
        walk = np.cumsum(steps)
        walk -= walk[_REFERENCE_DAY]  # the base price holds on the reference day, not at genesis
        return np.round(base * 100 * np.exp(walk)).astype(np.int64)

    def _make_day(self, symbol: str, day: int) -> dict[str, np.ndarray]:
        """The 1440 minutes of day index ``day`` (days since GENESIS)."""
        anchors = self._anchor_cache(symbol)
        rng = np.random.default_rng([self.seed, self._sym_key(symbol), day + 1])
        n = 1440
        l0, l1 = np.log(float(anchors[day])), np.log(float(anchors[day + 1]))
        walk = np.concatenate([[0.0], np.cumsum(rng.normal(0.0, _DAILY_SIGMA / np.sqrt(n), n))])
        frac = np.arange(n + 1) / n
        bridge = walk - frac * walk[-1] + frac * (l1 - l0)
        path = np.round(np.exp(l0 + bridge)).astype(np.int64)
        path[0], path[-1] = anchors[day], anchors[day + 1]  # exact continuity across days
        path = np.maximum(path, 1)
        o, c = path[:-1], path[1:]
        top, bottom = np.maximum(o, c), np.minimum(o, c)
        wick = np.abs(rng.normal(0.0, 1.0, (2, n))) * o * 0.0004
        h = top + np.floor(wick[0]).astype(np.int64)
        lo = np.maximum(bottom - np.floor(wick[1]).astype(np.int64), 1)
        vol = np.clip(np.round(rng.lognormal(np.log(40_000.0), 0.8, n)), 25, 2_000_000).astype(np.int64)
        span = h - lo + 1
        vwap = np.minimum(lo + np.floor(rng.random(n) * span).astype(np.int64), h)
        taker = np.floor(vol * rng.uniform(0.2, 0.8, n)).astype(np.int64)
        trades = np.maximum(MIN_TRADES, vol // 150 + rng.integers(0, 20, n)).astype(np.int64)
        return {
            "open": o,
            "high": h,
            "low": lo,
            "close": c,
            "volume": vol,
            # = the trades of minute_trades(): o, h, l, c at 1 unit each, the rest at vwap
            "quote_volume": vol * vwap + (o + h + lo + c - 4 * vwap),
            "trades": trades,
            "taker_buy_volume": taker,
            "taker_buy_quote_volume": taker * vwap,
        }

    def reference_price(self, symbol: str) -> int:
        """The symbol's price in cents on the reference day (2026-01-01): its usual level, for scales."""
        return int(self._anchor_cache(symbol)[_REFERENCE_DAY])

    def minutes(self, symbol: str, start_ms: int, end_ms: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Open times and columns of the generated minutes in ``[start_ms, end_ms)`` (within the horizon)."""
        start = max(bucket_start(start_ms, "1m"), GENESIS_MS)
        end = min(end_ms, HORIZON_MS)
        if end <= start:
            return np.empty(0, np.int64), {c: np.empty(0, np.int64) for c in _COLUMNS}
        parts: dict[str, list[np.ndarray]] = {c: [] for c in _COLUMNS}
        first_day, last_day = (start - GENESIS_MS) // DAY_MS, (end - 1 - GENESIS_MS) // DAY_MS
        for day in range(first_day, last_day + 1):
            day_start = GENESIS_MS + day * DAY_MS
            lo = max(0, (start - day_start) // MINUTE_MS)
            hi = min(1440, -(-(end - day_start) // MINUTE_MS))
            cols = self._day_cache(symbol, day)
            for c in _COLUMNS:
                parts[c].append(cols[c][lo:hi])
        count = sum(len(p) for p in parts["open"])
        times = np.arange(start, start + MINUTE_MS * count, MINUTE_MS, dtype=np.int64)
        return times, {c: np.concatenate(parts[c]) for c in _COLUMNS}


@dataclass(frozen=True)
class PlannedTrade:
    offset_ms: int  # from the minute's open
    price: int  # smallest price units
    qty: int  # smallest quantity units
    buyer_is_maker: bool
    raw_trades: int  # Binance trades aggregated into this one (l - f + 1)


def minute_trades(row: dict[str, int], rng: np.random.Generator, target: int = 60) -> list[PlannedTrade]:
    """Aggregated trades whose aggregate is exactly ``row`` (one minute of :meth:`Market.minutes`).

    Open first and close last at one unit each, low and high at one unit each in path order
    (low first on an up minute), and the remaining volume in pairs at ``vwap ± d`` with equal
    quantities, so their price-weighted sum is exactly ``qty × vwap``: taker buys
    (``buyer_is_maker`` False) carry ``taker_buy_volume``, maker trades the rest.
    """
    o, h, lo, c = row["open"], row["high"], row["low"], row["close"]
    vol, taker, n_raw = row["volume"], row["taker_buy_volume"], row["trades"]
    vwap = (
        (row["taker_buy_quote_volume"] // taker)
        if taker
        else (row["quote_volume"] - (o + h + lo + c)) // max(1, vol - 4)
    )
    reach = max(0, min(h - vwap, vwap - lo))
    k_bulk = max(2, min(target, n_raw) - 4)

    def pairs(total: int, count: int, maker: bool) -> list[tuple[int, int, bool]]:
        if total <= 0:
            return []
        count = max(1, min(count, total))
        out: list[tuple[int, int, bool]] = []
        n_pairs = min(count // 2, total // 2)
        per = total // (2 * n_pairs) if n_pairs else 0
        for _ in range(n_pairs):
            d = int(rng.integers(0, reach + 1)) if reach else 0
            out += [(vwap + d, per, maker), (vwap - d, per, maker)]
        rest = total - 2 * per * n_pairs
        if rest:
            out.append((vwap, rest, maker))
        return out

    bulk = pairs(taker, k_bulk // 2, False) + pairs(vol - 4 - taker, k_bulk - k_bulk // 2, True)
    order = rng.permutation(len(bulk))
    bulk = [bulk[i] for i in order]
    extremes = [(lo, 1, True), (h, 1, True)] if c >= o else [(h, 1, True), (lo, 1, True)]
    mid = len(bulk) // 2
    seq = [(o, 1, True), *bulk[:mid], extremes[0], *bulk[mid:], extremes[1], (c, 1, True)]
    # raw trade counts: at least one each, the rest spread at random
    counts = np.ones(len(seq), dtype=np.int64)
    extra = n_raw - len(seq)
    if extra > 0:
        counts += np.bincount(rng.integers(0, len(seq), extra), minlength=len(seq))
    offsets = np.linspace(0, MINUTE_MS - 50, len(seq)).astype(np.int64)
    return [PlannedTrade(int(offsets[i]), p, q, m, int(counts[i])) for i, (p, q, m) in enumerate(seq)]


def realistic_day(
    seed: int,
    *,
    price: float = 87_000.0,
    daily_vol: float = 0.06,
    tail_df: float = 3.0,
    crash: float = 0.0,
    crash_minutes: int = 3,
    recovery_minutes: int = 8,
    n: int = 1440,
) -> dict[str, np.ndarray]:
    """Float 1m o/h/l/c of a busy day: a continuous path, so open = previous close.

    Returns are Student-t (``tail_df`` 3: the fat tails of crypto 1m returns), scaled by a
    GARCH(1,1)-like volatility that clusters, times a U-shaped intraday profile peaking at
    the US open (13:30–15:00 UTC); ``daily_vol`` 6 % is a busy BTC day. Each minute's high
    and low extend beyond the body by half-normal wicks of the minute's own volatility.
    ``crash`` > 0 drops the price by that fraction over ``crash_minutes`` somewhere in the
    day's middle and recovers it over ``recovery_minutes`` (a liquidation cascade): a real
    move that must not be flagged.
    """
    rng = np.random.default_rng(seed)
    sig1 = daily_vol / np.sqrt(n)
    t = np.arange(n)
    seasonal = 1.0 + 0.6 * np.exp(-(((t - 14 * 60) / 90.0) ** 2)) + 0.3 * np.cos(2 * np.pi * t / n) ** 2
    seasonal /= np.sqrt(np.mean(seasonal**2))
    z = rng.standard_t(tail_df, n) / np.sqrt(tail_df / (tail_df - 2))
    var = np.empty(n)
    v, omega, alpha, beta = 1.0, 0.05, 0.10, 0.85
    for i in range(n):
        var[i] = v
        v = omega + alpha * v * z[i] ** 2 + beta * v
    sig = sig1 * seasonal * np.sqrt(var / np.mean(var))
    r = sig * z
    if crash > 0:
        start = int(rng.integers(n // 4, n // 2))
        down = np.log1p(-crash) / crash_minutes
        r[start : start + crash_minutes] += down
        r[start + crash_minutes : start + crash_minutes + recovery_minutes] -= down * crash_minutes / recovery_minutes
        sig = sig.copy()
        sig[start : start + crash_minutes + recovery_minutes] *= 4  # crash candles are wide
    path = np.log(price) + np.concatenate([[0.0], np.cumsum(r)])
    o, c = path[:-1], path[1:]
    wick_up = np.abs(rng.normal(0, 1, n)) * sig * 0.8
    wick_dn = np.abs(rng.normal(0, 1, n)) * sig * 0.8
    h = np.maximum(o, c) + wick_up
    lo = np.minimum(o, c) - wick_dn
    return {"open": np.exp(o), "high": np.exp(h), "low": np.exp(lo), "close": np.exp(c)}
