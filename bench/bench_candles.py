"""Candle computation rates: trades → 1m, 1m → higher intervals, Decimal128 decoding.

Prints JSON. Synthetic data, no servers:

* ``trades_to_1m`` on ``--trades`` aggregated trades (default 5M over ~2 days), once in
  index order (how reads arrive from the ``(symbol, trade_time, agg_id)`` index) and once
  shuffled (pays for the sort);
* ``resample`` of ``--days`` days of 1m candles (default 365 → 525 600 rows) to 5m…1d;
* ``agg_trades_frame`` on ``--docs`` MongoDB-shaped documents with Decimal128 fields
  (the BID fast path) against ``float(str(d))``.

    .venv/bin/python bench/bench_candles.py
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from bson.decimal128 import Decimal128

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dm_assets.candles import compute

START = 1_704_067_200_000  # 2024-01-01T00:00:00Z


def best_of(fn, repeat: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def synthetic_trades(n: int, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    gaps = rng.exponential(35.0, n).astype(np.int64)  # ~35 ms apart: 5M trades ≈ 2 days
    t = START + np.cumsum(gaps)
    price = np.round(42_000 * np.exp(np.cumsum(rng.normal(0, 2e-5, n))), 1)
    first = np.cumsum(rng.integers(1, 4, n))
    return pd.DataFrame(
        {
            "agg_id": np.arange(n, dtype=np.int64),
            "trade_time": t,
            "price": price,
            "qty": np.round(rng.exponential(0.05, n), 3) + 0.001,
            "buyer_is_maker": rng.random(n) < 0.5,
            "first_trade_id": first,
            "last_trade_id": first + rng.integers(0, 3, n),
        }
    )


def synthetic_1m(days: int, seed: int = 2) -> pd.DataFrame:
    n = days * 1440
    rng = np.random.default_rng(seed)
    close = 42_000 * np.exp(np.cumsum(rng.normal(0, 1e-3, n)))
    open_ = np.r_[42_000.0, close[:-1]]
    vol = rng.exponential(20.0, n)
    ot = START + np.arange(n, dtype=np.int64) * compute.MINUTE_MS
    return pd.DataFrame(
        {
            "open_time": ot,
            "close_time": ot + compute.MINUTE_MS - 1,
            "open": open_,
            "high": np.maximum(open_, close) * 1.0004,
            "low": np.minimum(open_, close) * 0.9996,
            "close": close,
            "volume": vol,
            "quote_volume": vol * close,
            "taker_buy_volume": vol / 2,
            "taker_buy_quote_volume": vol * close / 2,
            "trades": rng.integers(0, 500, n),
            "source": "kline",
        }
    )


def bench_trades(n: int, repeat: int) -> dict[str, object]:
    trades = synthetic_trades(n)
    sec = best_of(lambda: compute.trades_to_1m(trades), repeat)
    minutes = len(compute.trades_to_1m(trades))
    shuffled = trades.sample(frac=1.0, random_state=3).reset_index(drop=True)
    sec_shuffled = best_of(lambda: compute.trades_to_1m(shuffled), repeat)
    return {
        "trades": n,
        "minutes": minutes,
        "sorted_seconds": round(sec, 4),
        "sorted_trades_per_s": round(n / sec),
        "shuffled_seconds": round(sec_shuffled, 4),
        "shuffled_trades_per_s": round(n / sec_shuffled),
    }


def synthetic_docs(n: int) -> list[dict[str, object]]:
    rng = np.random.default_rng(4)
    prices = rng.uniform(40_000, 44_000, n)
    qtys = rng.uniform(0.001, 5, n)
    return [
        {
            "agg_id": i,
            "trade_time": START + i * 10,
            "price": Decimal128(f"{p:.1f}"),
            "qty": Decimal128(f"{q:.3f}"),
            "buyer_is_maker": bool(i & 1),
            "first_trade_id": i,
            "last_trade_id": i,
        }
        for i, (p, q) in enumerate(zip(prices, qtys, strict=True))
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--trades", type=int, default=5_000_000)
    ap.add_argument("--days", type=int, default=365)
    ap.add_argument("--docs", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    out: dict[str, object] = {}

    out["trades_to_1m"] = bench_trades(args.trades, args.repeat)

    one_m = synthetic_1m(args.days)
    res: dict[str, object] = {"rows": len(one_m)}
    for interval in ("5m", "15m", "1h", "4h", "1d"):
        sec = best_of(lambda iv=interval: compute.resample(one_m, iv), args.repeat)  # type: ignore[misc]
        res[interval] = {"seconds": round(sec, 4), "rows_per_s": round(len(one_m) / sec)}
    out["resample_1m"] = res

    docs = synthetic_docs(args.docs)
    sec = best_of(lambda: compute.agg_trades_frame(docs), args.repeat)
    prices = [d["price"] for d in docs]
    sec_fast = best_of(lambda: compute.decimals_to_float(prices), args.repeat)
    sec_str = best_of(lambda: np.array([str(d) for d in prices], dtype=float), 1)
    out["decode"] = {
        "docs": args.docs,
        "agg_trades_frame_docs_per_s": round(args.docs / sec),
        "decimal128_bid_values_per_s": round(args.docs / sec_fast),
        "decimal128_str_values_per_s": round(args.docs / sec_str),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
