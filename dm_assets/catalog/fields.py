"""Declared field meanings per collection (docs/DATA_MODEL.md), merged into the sampled catalog schemas.

Types come from a sampled document (what is really stored); meanings cannot be sampled,
so they are declared here once. A field the sample lacks but the model declares is still
listed, with type ``unknown`` — an optional field (e.g. ``event_time`` of a REST kline).
"""

from __future__ import annotations

_COMMON = {
    "_id": "deterministic id (a replayed or redelivered record is written once)",
    "symbol": "instrument, upper case (e.g. BTCUSDT)",
}

_OHLC = {
    "open": "first trade price of the bucket",
    "high": "highest trade price",
    "low": "lowest trade price",
    "close": "last trade price",
    "volume": "base-asset volume",
    "quote_volume": "quote-asset volume (Σ price × qty)",
    "trades": "number of trades",
    "taker_buy_volume": "base volume bought by takers",
    "taker_buy_quote_volume": "quote volume bought by takers",
}

FIELD_DESCRIPTIONS: dict[str, dict[str, str]] = {
    "agg_trades": {
        "agg_id": "aggregate trade id (a), consecutive per symbol",
        "price": "price (p), Decimal128",
        "qty": "quantity (q), Decimal128",
        "first_trade_id": "first trade id (f)",
        "last_trade_id": "last trade id (l)",
        "trade_time": "trade time (T), epoch ms UTC",
        "event_time": "event time (E), epoch ms UTC",
        "buyer_is_maker": "buyer is the maker (m)",
    },
    "klines": {
        "interval": "kline interval (k.i)",
        "open_time": "bucket open time (k.t), epoch ms UTC",
        "close_time": "open + interval − 1 ms (k.T)",
        **{k: f"{v}, Decimal128" for k, v in _OHLC.items() if k != "trades"},
        "trades": "number of trades (k.n)",
        "event_time": "event time (E), epoch ms UTC",
        "source": "ws (websocket) or rest (gap fill)",
    },
    "depth_updates": {
        "event_time": "event time (E), epoch ms UTC",
        "transaction_time": "transaction time (T), epoch ms UTC",
        "first_update_id": "first update id (U)",
        "final_update_id": "final update id (u)",
        "prev_final_update_id": "previous final update id (pu)",
        "bids": "bid levels [price, qty] (Decimal128 pairs)",
        "asks": "ask levels [price, qty] (Decimal128 pairs)",
    },
    "book_tickers": {
        "update_id": "order book update id (u)",
        "event_time": "event time (E), epoch ms UTC",
        "transaction_time": "transaction time (T), epoch ms UTC",
        "bid_price": "best bid price (b)",
        "bid_qty": "best bid quantity (B)",
        "ask_price": "best ask price (a)",
        "ask_qty": "best ask quantity (A)",
    },
    "tickers": {
        "event_time": "event time (E), epoch ms UTC",
        "price_change": "24h price change (p)",
        "price_change_percent": "24h price change percent (P)",
        "weighted_avg_price": "24h weighted average price (w)",
        "last_price": "last price (c)",
        "last_qty": "last quantity (Q)",
        "open_price": "24h open price (o)",
        "high_price": "24h high (h)",
        "low_price": "24h low (l)",
        "volume": "24h base volume (v)",
        "quote_volume": "24h quote volume (q)",
        "open_time": "statistics open time (O)",
        "close_time": "statistics close time (C)",
        "first_trade_id": "first trade id (F)",
        "last_trade_id": "last trade id (L)",
        "trade_count": "number of trades (n)",
    },
    "mark_prices": {
        "event_time": "event time (E), epoch ms UTC",
        "mark_price": "mark price (p)",
        "index_price": "index price (i)",
        "estimated_settle_price": "estimated settle price (P)",
        "funding_rate": "predicted funding rate (r)",
        "next_funding_time": "next funding time (T), epoch ms UTC",
    },
    "funding_rates": {
        "funding_time": "funding settlement time (T), epoch ms UTC",
        "funding_rate": "settled rate (REST) or the last predicted rate seen before the settlement (live)",
        "mark_price": "mark price of that update",
        "event_time": "event time of that update, epoch ms UTC (REST: the settlement time)",
        "funding_time_raw": "REST only: fundingTime as Binance sent it (ms jitter kept)",
        "source": "REST only: rest",
    },
    "depth_snapshots": {
        "snapshot_time": "REST depth snapshot message time (E), epoch ms UTC",
        "transaction_time": "transaction time (T), epoch ms UTC",
        "last_update_id": "lastUpdateId: the book includes every update up to this id",
        "limit": "levels requested per side",
        "fetched_at": "when we fetched it (our clock), epoch ms UTC",
        "bids": "[price, qty] Decimal128 pairs, best (highest) first",
        "asks": "[price, qty] Decimal128 pairs, best (lowest) first",
    },
    "orderbook_snapshots": {
        "snapshot_time": "grid time (every 10 s) the book is valid at, epoch ms UTC",
        "last_update_id": "u of the last depth diff applied",
        "last_event_time": "event time of that diff, epoch ms UTC",
        "depth": "levels per side stored",
        "bids": "top bids [price, qty] Decimal128, best first",
        "asks": "top asks [price, qty] Decimal128, best first",
        "mid": "(best bid + best ask) / 2, float64",
        "spread_bps": "(ask − bid) / mid × 10⁴",
        "bid_qty": "Σ bid qty over the stored levels",
        "ask_qty": "Σ ask qty over the stored levels",
        "imbalance": "(bid_qty − ask_qty) / (bid_qty + ask_qty)",
    },
    "candles": {
        "interval": "candle interval",
        "open_time": "bucket open time, epoch ms UTC",
        "close_time": "open + interval − 1 ms",
        **{k: f"{v} (float64)" for k, v in _OHLC.items() if k != "trades"},
        "trades": "number of trades",
        "source": "kline, agg_trades, rest or derived",
        "flags": "empty when clean; bad_print, ohlc_impossible, source_disagreement, verified, provisional",
    },
    "analytics": {
        "kind": "analytics family",
        "interval": "candle interval, or the lookback for spread (1h) and funding (30d)",
        "window_end": "as-of time the trailing window ends at, epoch ms UTC",
        "values": "named results of the computation (None where undefined)",
        "computed_at": "when the document was computed (UTC)",
    },
    "pattern_series": {
        "interval": "candle interval of the series",
        "start": "open time of the chunk's first bar, epoch ms UTC (chunks of 43,200 bars, aligned)",
        "step": "bar length in ms",
        "n": "bars in the chunk",
        "covered_end": "end of the candles the chunk was built from (exclusive, epoch ms UTC)",
        "closes": "little-endian float64 closes, NaN where the bar is missing or flagged",
        "digest": "hash of the closes: unchanged chunks are not rewritten",
        "built_at": "when the chunk was written (UTC)",
    },
}


def describe(collection: str, field: str) -> str:
    return _COMMON.get(field) or FIELD_DESCRIPTIONS.get(collection, {}).get(field, "")
