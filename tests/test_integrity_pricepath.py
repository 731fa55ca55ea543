"""One price path: the generated session's closed klines are the simulated exchange's klines."""

from __future__ import annotations

from decimal import Decimal

import numpy as np

from ingest_service.generator import Rates, generate_session
from ingest_service.pricepath import Market, minute_trades
from tests.fake_exchange import FakeExchange

START = 1_767_225_600_000 + 37 * 86_400_000 + 600 * 60_000  # a minute-aligned time in 2026


def test_minute_trades_aggregate_to_the_market_kline_exactly() -> None:
    times, cols = Market().minutes("ETHUSDT", START, START + 30 * 60_000)
    rng = np.random.default_rng(1)
    for j in range(times.size):
        row = {c: int(v[j]) for c, v in cols.items()}
        trades = minute_trades(row, rng, target=40)
        prices = [t.price for t in trades]
        assert (prices[0], max(prices), min(prices), prices[-1]) == (row["open"], row["high"], row["low"], row["close"])
        assert sum(t.qty for t in trades) == row["volume"]
        assert sum(t.qty * t.price for t in trades) == row["quote_volume"]
        assert sum(t.qty for t in trades if not t.buyer_is_maker) == row["taker_buy_volume"]
        assert sum(t.qty * t.price for t in trades if not t.buyer_is_maker) == row["taker_buy_quote_volume"]
        assert sum(t.raw_trades for t in trades) == row["trades"]
        assert [t.offset_ms for t in trades] == sorted(t.offset_ms for t in trades)


def test_generated_session_klines_equal_the_exchange_rows() -> None:
    symbols = ["BTCUSDT", "SOLUSDT"]
    events = generate_session(symbols, 3, start_ms=START, seed=3, rates=Rates(trades_per_s=2), market=Market())
    closed = [e["data"]["k"] for e in events if e["data"].get("e") == "kline" and e["data"]["k"]["x"]]
    assert len(closed) == 3 * len(symbols)
    ex = FakeExchange()
    for k in closed:
        (row,) = ex.klines(k["s"], "1m", k["t"], k["t"] + 60_000, now_ms=START + 10 * 60_000)
        ours = [k["o"], k["h"], k["l"], k["c"], k["v"], k["q"], k["n"], k["V"], k["Q"]]
        theirs = [row[1], row[2], row[3], row[4], row[5], row[7], row[8], row[9], row[10]]
        for a, b in zip(ours, theirs, strict=True):
            assert Decimal(str(a)) == Decimal(str(b)), (k["s"], k["t"], ours, theirs)
    # BTC trades at a BTC-like price, not at an unrelated level.
    btc = next(k for k in closed if k["s"] == "BTCUSDT")
    assert 20_000 < float(btc["c"]) < 500_000
