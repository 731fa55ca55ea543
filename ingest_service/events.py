"""Binance futures events: decode the combined-stream envelope, validate, map to DATA_MODEL.md documents.

Pure functions, no I/O, so every rule here is tested without a server.

* Validation is strict (pydantic ``strict=True``): a price sent as a JSON number or a
  time sent as a string is a *mistyped field*, not something to coerce. A price that
  reached us as a float may already have lost digits, so it must not be stored as if exact.
* Prices and quantities become ``Decimal128`` built from the exchange's decimal
  string: 34 significant digits, nothing lost.
* Unknown keys are ignored: Binance adds keys to payloads over time.
* ``_id``s are deterministic (see DATA_MODEL.md) so a redelivered or replayed event
  is written once.
* Integers must fit BSON's int64: a larger one would make the store's encoder raise for the
  whole batch (a poison message), so it is refused here and dead-lettered.

Two paths, one set of rules. The **fast path** decodes a combined-stream envelope straight
into ``msgspec`` structs (strict types, required fields, tagged by ``e``) and builds the
documents from them; per message it costs a few microseconds where the pydantic models
cost ~30 (measured: ``bench/bench_ingest.py --phases cpu``). Anything the fast path does not
accept, for whatever reason, goes through the **reference path** (orjson + the pydantic
models below), which either accepts it (a bare payload without envelope, a decimal in
exponent notation) or names precisely what is wrong for the dead letter. A test checks that
both paths agree on generated sessions and on mutated messages.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Annotated, Any

import msgspec
import orjson
from bson.binary import Binary
from bson.decimal128 import Decimal128
from pydantic import BaseModel, ConfigDict, Field, PlainValidator, ValidationError

from dm_resources.contracts import validate_symbol

# Linear (no digit can be matched two ways): ``\d+\.?\d*`` backtracked quadratically on "1111…1x".
_DECIMAL_RE = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,6})?")
_MAX_DECIMAL_CHARS = 64


# A plain decimal (no exponent) short enough that its coefficient has at most 34 digits is
# packed into BID bits directly; everything else takes bson's exact (and ~10x slower) route.
_MAX_COEFFICIENT = 10**34
_LOW_64 = (1 << 64) - 1
_SIGN_BIT = 1 << 63
_EXPONENT_BIAS = 6176
# Prices and quantities repeat (tick and lot sizes), and a Decimal128 is immutable: reuse them.
_DECIMALS: dict[str, Decimal128] = {}
_DECIMALS_MAX = 100_000


def to_decimal128(value: object) -> Decimal128:
    """A Binance decimal string as Decimal128; anything else (a float, NaN, 40 digits) is refused.

    Bit for bit what ``Decimal128(value)`` gives (a test compares them), just faster.
    """
    if type(value) is str:
        hit = _DECIMALS.get(value)
        if hit is not None:
            return hit
        if len(value) <= 40 and value.isascii():
            sign = value[:1]
            whole, _, frac = (value[1:] if sign in ("-", "+") else value).partition(".")
            digits = whole + frac
            # ASCII isdigit() is [0-9]+: a plain decimal with at least one digit, one dot at most.
            if digits.isdigit():
                coefficient = int(digits)
                if coefficient < _MAX_COEFFICIENT:
                    high = ((_EXPONENT_BIAS - len(frac)) << 49) | (coefficient >> 64)
                    if sign == "-":
                        high |= _SIGN_BIT
                    # bson builds a Decimal128 from its (high, low) bit words; its stubs list only the decimal tuple.
                    dec = Decimal128((high, coefficient & _LOW_64))  # type: ignore[arg-type]
                    if len(_DECIMALS) >= _DECIMALS_MAX:
                        _DECIMALS.clear()
                    _DECIMALS[value] = dec
                    return dec
    return _to_decimal128_exact(value)


def _to_decimal128_exact(value: object) -> Decimal128:
    if not isinstance(value, str):
        raise ValueError(f"expected a decimal string, got {type(value).__name__}")
    if len(value) > _MAX_DECIMAL_CHARS or not _DECIMAL_RE.fullmatch(value):
        raise ValueError(f"{value[:40]!r} is not a decimal number of at most {_MAX_DECIMAL_CHARS} characters")
    try:
        return Decimal128(value)
    except Exception as exc:  # decimal.Inexact / Overflow from bson's strict context
        raise ValueError(f"{value[:40]!r} does not fit Decimal128 exactly") from exc


def _symbol(value: object) -> str:
    """The one symbol rule (``dm_resources.contracts``), the same the API and ``DM_SYMBOLS`` apply."""
    return validate_symbol(value)


def _optional_decimal(value: object) -> Decimal128 | None:
    """Funding fields are ``""`` for contracts without funding (delivery futures)."""
    if value == "" or value is None:
        return None
    return to_decimal128(value)


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
I64 = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)]
Dec = Annotated[Decimal128, PlainValidator(to_decimal128)]
OptDec = Annotated[Decimal128 | None, PlainValidator(_optional_decimal)]
Sym = Annotated[str, PlainValidator(_symbol)]
# JSON arrays are lists; strict mode would refuse them as tuples.
Level = Annotated[list[Dec], Field(min_length=2, max_length=2)]


class _Event(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True, arbitrary_types_allowed=True, frozen=True)

    event_time: I64 = Field(alias="E")
    symbol: Sym = Field(alias="s")


class AggTrade(_Event):
    agg_id: I64 = Field(alias="a")
    price: Dec = Field(alias="p")
    qty: Dec = Field(alias="q")
    first_trade_id: I64 = Field(alias="f")
    last_trade_id: I64 = Field(alias="l")
    trade_time: I64 = Field(alias="T")
    buyer_is_maker: bool = Field(alias="m")


class KlineBody(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True, arbitrary_types_allowed=True, frozen=True)

    open_time: I64 = Field(alias="t")
    close_time: I64 = Field(alias="T")
    interval: str = Field(alias="i")
    open: Dec = Field(alias="o")
    close: Dec = Field(alias="c")
    high: Dec = Field(alias="h")
    low: Dec = Field(alias="l")
    volume: Dec = Field(alias="v")
    trades: I64 = Field(alias="n")
    closed: bool = Field(alias="x")
    quote_volume: Dec = Field(alias="q")
    taker_buy_volume: Dec = Field(alias="V")
    taker_buy_quote_volume: Dec = Field(alias="Q")


class Kline(_Event):
    k: KlineBody


class DepthUpdate(_Event):
    transaction_time: I64 = Field(alias="T")
    first_update_id: I64 = Field(alias="U")
    final_update_id: I64 = Field(alias="u")
    prev_final_update_id: I64 = Field(alias="pu")
    bids: list[Level] = Field(alias="b")
    asks: list[Level] = Field(alias="a")


class Ticker24h(_Event):
    price_change: Dec = Field(alias="p")
    price_change_percent: Dec = Field(alias="P")
    weighted_avg_price: Dec = Field(alias="w")
    last_price: Dec = Field(alias="c")
    last_qty: Dec = Field(alias="Q")
    open_price: Dec = Field(alias="o")
    high_price: Dec = Field(alias="h")
    low_price: Dec = Field(alias="l")
    volume: Dec = Field(alias="v")
    quote_volume: Dec = Field(alias="q")
    open_time: I64 = Field(alias="O")
    close_time: I64 = Field(alias="C")
    first_trade_id: I64 = Field(alias="F")
    last_trade_id: I64 = Field(alias="L")
    trade_count: I64 = Field(alias="n")


class BookTicker(_Event):
    update_id: I64 = Field(alias="u")
    transaction_time: I64 = Field(alias="T")
    bid_price: Dec = Field(alias="b")
    bid_qty: Dec = Field(alias="B")
    ask_price: Dec = Field(alias="a")
    ask_qty: Dec = Field(alias="A")


class MarkPriceUpdate(_Event):
    mark_price: Dec = Field(alias="p")
    index_price: Dec = Field(alias="i")
    estimated_settle_price: Dec = Field(alias="P")
    funding_rate: OptDec = Field(alias="r")
    next_funding_time: I64 = Field(alias="T")


EVENT_MODELS: dict[str, type[_Event]] = {
    "aggTrade": AggTrade,
    "kline": Kline,
    "depthUpdate": DepthUpdate,
    "24hrTicker": Ticker24h,
    "bookTicker": BookTicker,
    "markPriceUpdate": MarkPriceUpdate,
}
EVENT_TYPES = tuple(EVENT_MODELS)


@dataclass(slots=True)
class Decoded:
    """What one message became: documents per collection, or the reason it is a dead letter.

    ``docs`` is empty and ``error`` None for a valid message that stores nothing
    (an open kline): it is acked like any other.
    """

    event_type: str | None = None
    symbol: str | None = None
    docs: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    error: str | None = None


def _validation_reason(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        loc = ".".join(str(p) for p in err["loc"]) or "payload"
        if err["type"] == "missing":
            parts.append(f"missing field {loc!r}")
        else:
            parts.append(f"field {loc!r}: {err['msg'].removeprefix('Value error, ')}")
    more = exc.error_count() - 3
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


# -- fast path: msgspec structs, one per event type, tagged by "e" --------------------------
_I64 = Annotated[int, msgspec.Meta(ge=INT64_MIN, le=INT64_MAX)]
_Level = tuple[str, str]


class _FastEvent(msgspec.Struct, tag_field="e"):
    event_time: _I64 = msgspec.field(name="E")
    symbol: str = msgspec.field(name="s")


class _FAggTrade(_FastEvent, tag="aggTrade"):
    agg_id: _I64 = msgspec.field(name="a")
    price: str = msgspec.field(name="p")
    qty: str = msgspec.field(name="q")
    first_trade_id: _I64 = msgspec.field(name="f")
    last_trade_id: _I64 = msgspec.field(name="l")
    trade_time: _I64 = msgspec.field(name="T")
    buyer_is_maker: bool = msgspec.field(name="m")


class _FKlineBody(msgspec.Struct):
    open_time: _I64 = msgspec.field(name="t")
    close_time: _I64 = msgspec.field(name="T")
    interval: str = msgspec.field(name="i")
    open: str = msgspec.field(name="o")
    close: str = msgspec.field(name="c")
    high: str = msgspec.field(name="h")
    low: str = msgspec.field(name="l")
    volume: str = msgspec.field(name="v")
    trades: _I64 = msgspec.field(name="n")
    closed: bool = msgspec.field(name="x")
    quote_volume: str = msgspec.field(name="q")
    taker_buy_volume: str = msgspec.field(name="V")
    taker_buy_quote_volume: str = msgspec.field(name="Q")


class _FKline(_FastEvent, tag="kline"):
    k: _FKlineBody


class _FDepthUpdate(_FastEvent, tag="depthUpdate"):
    transaction_time: _I64 = msgspec.field(name="T")
    first_update_id: _I64 = msgspec.field(name="U")
    final_update_id: _I64 = msgspec.field(name="u")
    prev_final_update_id: _I64 = msgspec.field(name="pu")
    bids: list[_Level] = msgspec.field(name="b")
    asks: list[_Level] = msgspec.field(name="a")


class _FTicker24h(_FastEvent, tag="24hrTicker"):
    price_change: str = msgspec.field(name="p")
    price_change_percent: str = msgspec.field(name="P")
    weighted_avg_price: str = msgspec.field(name="w")
    last_price: str = msgspec.field(name="c")
    last_qty: str = msgspec.field(name="Q")
    open_price: str = msgspec.field(name="o")
    high_price: str = msgspec.field(name="h")
    low_price: str = msgspec.field(name="l")
    volume: str = msgspec.field(name="v")
    quote_volume: str = msgspec.field(name="q")
    open_time: _I64 = msgspec.field(name="O")
    close_time: _I64 = msgspec.field(name="C")
    first_trade_id: _I64 = msgspec.field(name="F")
    last_trade_id: _I64 = msgspec.field(name="L")
    trade_count: _I64 = msgspec.field(name="n")


class _FBookTicker(_FastEvent, tag="bookTicker"):
    update_id: _I64 = msgspec.field(name="u")
    transaction_time: _I64 = msgspec.field(name="T")
    bid_price: str = msgspec.field(name="b")
    bid_qty: str = msgspec.field(name="B")
    ask_price: str = msgspec.field(name="a")
    ask_qty: str = msgspec.field(name="A")


class _FMarkPriceUpdate(_FastEvent, tag="markPriceUpdate"):
    mark_price: str = msgspec.field(name="p")
    index_price: str = msgspec.field(name="i")
    estimated_settle_price: str = msgspec.field(name="P")
    funding_rate: str | None = msgspec.field(name="r")
    next_funding_time: _I64 = msgspec.field(name="T")


_FastAny = _FAggTrade | _FKline | _FDepthUpdate | _FTicker24h | _FBookTicker | _FMarkPriceUpdate


class _FastEnvelope(msgspec.Struct):
    data: _FastAny


_ENVELOPE_DECODER = msgspec.json.Decoder(_FastEnvelope)
_FAST_ERRORS = (msgspec.ValidationError, msgspec.DecodeError)


# -- documents (DATA_MODEL.md), built from the fast structs by both paths ----------------
def _checked_symbol(ev: _FastEvent) -> str:
    return _symbol(ev.symbol)


def agg_trade_doc(ev: _FAggTrade) -> list[tuple[str, dict[str, Any]]]:
    sym = _checked_symbol(ev)
    return [
        (
            "agg_trades",
            {
                "_id": f"{sym}:{ev.agg_id}",
                "symbol": sym,
                "agg_id": ev.agg_id,
                "price": to_decimal128(ev.price),
                "qty": to_decimal128(ev.qty),
                "first_trade_id": ev.first_trade_id,
                "last_trade_id": ev.last_trade_id,
                "trade_time": ev.trade_time,
                "event_time": ev.event_time,
                "buyer_is_maker": ev.buyer_is_maker,
            },
        )
    ]


def kline_doc(ev: _FKline, source: str = "ws") -> list[tuple[str, dict[str, Any]]]:
    """Closed klines only; an open one is still validated (decimals included) and stores nothing."""
    sym = _checked_symbol(ev)
    k = ev.k
    doc = {
        "_id": f"{sym}:{k.interval}:{k.open_time}",
        "symbol": sym,
        "interval": k.interval,
        "open_time": k.open_time,
        "close_time": k.close_time,
        "open": to_decimal128(k.open),
        "high": to_decimal128(k.high),
        "low": to_decimal128(k.low),
        "close": to_decimal128(k.close),
        "volume": to_decimal128(k.volume),
        "quote_volume": to_decimal128(k.quote_volume),
        "trades": k.trades,
        "taker_buy_volume": to_decimal128(k.taker_buy_volume),
        "taker_buy_quote_volume": to_decimal128(k.taker_buy_quote_volume),
        "event_time": ev.event_time,
        "source": source,
    }
    return [("klines", doc)] if k.closed else []


def depth_doc(ev: _FDepthUpdate) -> list[tuple[str, dict[str, Any]]]:
    sym = _checked_symbol(ev)
    dec = to_decimal128
    return [
        (
            "depth_updates",
            {
                "_id": f"{sym}:{ev.final_update_id}",
                "symbol": sym,
                "event_time": ev.event_time,
                "transaction_time": ev.transaction_time,
                "first_update_id": ev.first_update_id,
                "final_update_id": ev.final_update_id,
                "prev_final_update_id": ev.prev_final_update_id,
                "bids": [[dec(p), dec(q)] for p, q in ev.bids],
                "asks": [[dec(p), dec(q)] for p, q in ev.asks],
            },
        )
    ]


def ticker_doc(ev: _FTicker24h) -> list[tuple[str, dict[str, Any]]]:
    sym = _checked_symbol(ev)
    return [
        (
            "tickers",
            {
                "_id": f"{sym}:{ev.event_time}",
                "symbol": sym,
                "event_time": ev.event_time,
                "price_change": to_decimal128(ev.price_change),
                "price_change_percent": to_decimal128(ev.price_change_percent),
                "weighted_avg_price": to_decimal128(ev.weighted_avg_price),
                "last_price": to_decimal128(ev.last_price),
                "last_qty": to_decimal128(ev.last_qty),
                "open_price": to_decimal128(ev.open_price),
                "high_price": to_decimal128(ev.high_price),
                "low_price": to_decimal128(ev.low_price),
                "volume": to_decimal128(ev.volume),
                "quote_volume": to_decimal128(ev.quote_volume),
                "open_time": ev.open_time,
                "close_time": ev.close_time,
                "first_trade_id": ev.first_trade_id,
                "last_trade_id": ev.last_trade_id,
                "trade_count": ev.trade_count,
            },
        )
    ]


def book_ticker_doc(ev: _FBookTicker) -> list[tuple[str, dict[str, Any]]]:
    sym = _checked_symbol(ev)
    return [
        (
            "book_tickers",
            {
                "_id": f"{sym}:{ev.update_id}",
                "symbol": sym,
                "update_id": ev.update_id,
                "event_time": ev.event_time,
                "transaction_time": ev.transaction_time,
                "bid_price": to_decimal128(ev.bid_price),
                "bid_qty": to_decimal128(ev.bid_qty),
                "ask_price": to_decimal128(ev.ask_price),
                "ask_qty": to_decimal128(ev.ask_qty),
            },
        )
    ]


def mark_price_docs(ev: _FMarkPriceUpdate) -> list[tuple[str, dict[str, Any]]]:
    """``mark_prices`` always; ``funding_rates`` when the update proposes a funding record.

    Funding rule: one record per symbol per funding time; of all updates that announce the
    same ``T``, the one with the largest event time wins (it is the last rate seen before
    ``T``, the one that settles). The writer enforces "largest wins" in the store, so the
    outcome does not depend on delivery order or replicas. Contracts without funding
    (``r`` empty or ``T`` 0) propose nothing; their ``r`` is ``""``.
    """
    sym = _checked_symbol(ev)
    rate = None if ev.funding_rate is None or ev.funding_rate == "" else to_decimal128(ev.funding_rate)
    mark = to_decimal128(ev.mark_price)
    out: list[tuple[str, dict[str, Any]]] = [
        (
            "mark_prices",
            {
                "_id": f"{sym}:{ev.event_time}",
                "symbol": sym,
                "event_time": ev.event_time,
                "mark_price": mark,
                "index_price": to_decimal128(ev.index_price),
                "estimated_settle_price": to_decimal128(ev.estimated_settle_price),
                "funding_rate": rate,
                "next_funding_time": ev.next_funding_time,
            },
        )
    ]
    if rate is not None and ev.next_funding_time > 0:
        out.append(
            (
                "funding_rates",
                {
                    "_id": f"{sym}:{ev.next_funding_time}",
                    "symbol": sym,
                    "funding_time": ev.next_funding_time,
                    "funding_rate": rate,
                    "mark_price": mark,
                    "event_time": ev.event_time,
                },
            )
        )
    return out


_DOCUMENTS: dict[type[_FastEvent], tuple[str, Callable[[Any], list[tuple[str, dict[str, Any]]]]]] = {
    _FAggTrade: ("aggTrade", agg_trade_doc),
    _FKline: ("kline", kline_doc),
    _FDepthUpdate: ("depthUpdate", depth_doc),
    _FTicker24h: ("24hrTicker", ticker_doc),
    _FBookTicker: ("bookTicker", book_ticker_doc),
    _FMarkPriceUpdate: ("markPriceUpdate", mark_price_docs),
}


def decode(raw: bytes) -> Decoded:
    """One NATS message payload → documents, or a dead-letter reason. Never raises.

    Fast path first; whatever it does not take (an error, a bare payload, a decimal in
    exponent notation) is decided by :func:`decode_reference`.
    """
    try:
        ev = _ENVELOPE_DECODER.decode(raw).data
        event_type, build = _DOCUMENTS[type(ev)]
        return Decoded(event_type=event_type, symbol=ev.symbol, docs=build(ev))
    except (*_FAST_ERRORS, ValueError):
        return decode_reference(raw)


def decode_reference(raw: bytes) -> Decoded:
    """The reference path: orjson + the pydantic models; names the first problems precisely."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return Decoded(error=f"invalid JSON: {exc}")
    if not isinstance(obj, dict):
        return Decoded(error=f"envelope is a JSON {type(obj).__name__}, not an object")
    # Combined-stream envelope {"stream": ..., "data": {...}}; a bare payload (a
    # single-stream connection) is accepted too, it carries the same fields.
    data = obj.get("data", obj)
    if not isinstance(data, dict):
        return Decoded(error="envelope 'data' is not an object")
    event_type = data.get("e")
    sym = data.get("s")
    symbol = sym if isinstance(sym, str) else None
    if not isinstance(event_type, str):
        return Decoded(symbol=symbol, error="missing field 'e' (event type)")
    model = EVENT_MODELS.get(event_type)
    if model is None:
        return Decoded(event_type=event_type[:64], symbol=symbol, error=f"unknown event type {event_type[:64]!r}")
    try:
        model.model_validate(data)
    except ValidationError as exc:
        return Decoded(event_type=event_type, symbol=symbol, error=_validation_reason(exc))
    # Valid by the reference rules: the documents come from the same builders as the fast path.
    try:
        ev = msgspec.convert(data, _FastAny, strict=True)
        _, build = _DOCUMENTS[type(ev)]
        return Decoded(event_type=event_type, symbol=ev.symbol, docs=build(ev))
    except (*_FAST_ERRORS, ValueError) as exc:  # pragma: no cover - the two rule sets disagree: a bug
        return Decoded(
            event_type=event_type, symbol=symbol, error=f"internal: fast and reference rules disagree: {exc}"
        )


def dead_letter_doc(
    stream_seq: int,
    subject: str,
    raw: bytes,
    reason: str,
    received_at_ms: int,
    event_type: str | None = None,
    symbol: str | None = None,
) -> dict[str, Any]:
    """``_id`` is the JetStream stream sequence, so a redelivered bad message is recorded once."""
    return {
        "_id": f"dl:{stream_seq}",
        "symbol": symbol,
        "received_at": received_at_ms,
        "subject": subject,
        "raw": Binary(raw),
        "reason": reason,
        "event_type": event_type,
        "stream_seq": stream_seq,
    }


def newest_funding(docs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep, per ``_id``, the proposal with the largest event time (the funding rule, within a batch)."""
    best: dict[str, dict[str, Any]] = {}
    for d in docs:
        cur = best.get(d["_id"])
        if cur is None or d["event_time"] > cur["event_time"]:
            best[d["_id"]] = d
    return list(best.values())
