"""Analytics compute time on synthetic data.

Prints JSON: seconds to compute every analytics family for one symbol over 30 days
of 1m candles (43,200 rows, geometric random walk, a few missing candles; plus 43,200
book tickers, 5,000 ten-level depth snapshots, 90 funding events), and the
cross-symbol correlation over 20 such symbols. Targets: < 1 s and < 2 s.

    .venv/bin/python bench/bench_analytics.py [--days 30] [--symbols 20] [--repeat 3] [--depth-messages 5000]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dm_assets.analytics import (
    compute_correlation,
    compute_funding,
    compute_spread,
    compute_trend,
    compute_volatility,
    compute_volume,
)

MIN = 60_000
START = 1_700_000_000_000 - 1_700_000_000_000 % 86_400_000
VOL_WINDOWS = (60, 240, 1440)
CORR_WINDOWS = (60, 240, 1440, 10_080)


def synthetic_candles(n: int, rng: np.random.Generator, factor: np.ndarray | None = None) -> pd.DataFrame:
    """Random-walk OHLCV; ``factor`` adds a common market return so correlations are non-trivial."""
    r = rng.normal(0, 8e-4, n) + (factor if factor is not None else 0.0)
    close = 30_000 * np.exp(np.cumsum(r))
    open_ = np.concatenate([[30_000.0], close[:-1]]) * np.exp(rng.normal(0, 1e-5, n))
    spread = np.abs(rng.normal(0, 4e-4, n))
    high = np.maximum(open_, close) * (1 + spread)
    low = np.minimum(open_, close) * (1 - spread)
    volume = rng.lognormal(2, 0.7, n)
    buy = volume * rng.uniform(0.3, 0.7, n)
    df = pd.DataFrame(
        {
            "open_time": START + np.arange(n, dtype="int64") * MIN,
            "open": open_,
            "high": high,
            "low": low,
            "close": close,
            "volume": volume,
            "quote_volume": volume * (high + low + close) / 3,
            "taker_buy_volume": buy,
            "taker_buy_quote_volume": buy * close,
            "trades": rng.integers(10, 500, n),
        }
    )
    missing = rng.choice(n - 2, size=5, replace=False) + 1  # a few confirmed-missing candles
    return df.drop(index=missing).reset_index(drop=True)


def synthetic_quotes(n: int, rng: np.random.Generator) -> pd.DataFrame:
    mid = 30_000 * np.exp(np.cumsum(rng.normal(0, 1e-4, n)))
    half = mid * rng.uniform(0.5e-5, 5e-5, n)
    return pd.DataFrame(
        {
            "event_time": START + np.sort(rng.integers(0, 30 * 86_400_000, n)),
            "bid_price": mid - half,
            "bid_qty": rng.uniform(0.1, 5, n),
            "ask_price": mid + half,
            "ask_qty": rng.uniform(0.1, 5, n),
        }
    )


def synthetic_depth(n: int, levels: int, rng: np.random.Generator) -> pd.DataFrame:
    """Partial-depth snapshots: ``levels`` [price, qty] pairs per side."""
    steps = np.arange(1, levels + 1)
    bids = [[[30_000 - 0.1 * k, q] for k, q in zip(steps, rng.uniform(0.1, 5, levels), strict=True)] for _ in range(n)]
    asks = [[[30_000 + 0.1 * k, q] for k, q in zip(steps, rng.uniform(0.1, 5, levels), strict=True)] for _ in range(n)]
    times = START + np.arange(n, dtype="int64") * 500
    return pd.DataFrame({"event_time": times, "bids": bids, "asks": asks})


def one_symbol(candles: pd.DataFrame, quotes: pd.DataFrame, depth: pd.DataFrame, funding: pd.DataFrame) -> int:
    results = [compute_volatility(candles, "1m", w) for w in VOL_WINDOWS]
    results.append(compute_volume(candles, "1m", 20))
    results.append(compute_trend(candles, "1m"))
    results.append(compute_spread(quotes, window_end=int(quotes["event_time"].iloc[-1]) + 1, depth=depth))
    results.append(compute_funding(funding))
    return len(json.dumps([r.to_dict() for r in results], allow_nan=False))


def best_of(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--symbols", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--depth-messages", type=int, default=5_000)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    n = args.days * 1440
    candles = synthetic_candles(n, rng)
    quotes = synthetic_quotes(n, rng)
    depth = synthetic_depth(args.depth_messages, 10, rng)
    funding = pd.DataFrame(
        {
            "funding_time": START + np.arange(args.days * 3, dtype="int64") * 8 * 3_600_000,
            "funding_rate": rng.normal(1e-4, 5e-5, args.days * 3),
        }
    )
    market = rng.normal(0, 6e-4, n)
    universe = {f"SYM{i:02d}USDT": synthetic_candles(n, rng, market) for i in range(args.symbols)}

    t_one = best_of(lambda: one_symbol(candles, quotes, depth, funding), args.repeat)
    t_corr = best_of(lambda: compute_correlation(universe, "1m", CORR_WINDOWS, threshold=0.3), args.repeat)
    corr = compute_correlation(universe, "1m", CORR_WINDOWS, threshold=0.3)
    print(
        json.dumps(
            {
                "candles_per_symbol": len(candles),
                "book_tickers": len(quotes),
                "depth_messages": len(depth),
                "volatility_windows": list(VOL_WINDOWS),
                "one_symbol_all_analytics_s": round(t_one, 4),
                "one_symbol_target_s": 1.0,
                "one_symbol_ok": t_one < 1.0,
                "symbols": args.symbols,
                "correlation_windows": list(CORR_WINDOWS),
                "correlation_s": round(t_corr, 4),
                "correlation_target_s": 2.0,
                "correlation_ok": t_corr < 2.0,
                "correlation_edges_by_window": {r.window: len(r.graph["edges"]) for r in corr},
                "repeat": args.repeat,
                "timing": "best of repeat, perf_counter",
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
