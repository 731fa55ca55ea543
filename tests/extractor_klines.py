"""Klines as the platform's klines extractor sends them to ``POST /api/v1/data/insert``.

One builder for the tests and the benches that need many distinct, valid, closed extractor rows
(prices cycle over 100 cents so the minutes differ; every value a decimal string, as sent).
"""

from __future__ import annotations

from typing import Any

from api.contract.filters import iso_z

M1 = 60_000
T0 = 1_735_689_600_000  # 2025-01-01: long closed, so every row is accepted


def extractor_kline(i: int, *, extractor_version: str = "1", extracted_at: str | None = None) -> dict[str, Any]:
    """The ``i``-th BTCUSDT 1m kline from :data:`T0`; ``extractor_version`` pads a body in the benches."""
    t = T0 + i * M1
    p = str(27000 + i % 100)
    row: dict[str, Any] = {
        "symbol": "BTCUSDT",
        "interval": "1m",
        "open_time": iso_z(t),
        "close_time": iso_z(t + M1 - 1),
        "open_price": p,
        "high_price": p,
        "low_price": p,
        "close_price": p,
        "volume": "1.5",
        "quote_asset_volume": "40500.25",
        "taker_buy_base_asset_volume": "0.75",
        "taker_buy_quote_asset_volume": "20250.125",
        "number_of_trades": 10,
        "source": "binance_futures",
        "extractor_version": extractor_version,
    }
    if extracted_at is not None:
        row["extracted_at"] = extracted_at
    return row
