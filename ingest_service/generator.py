"""Realistic recorded sessions: Binance USD-M futures combined-stream envelopes, JSON lines.

Random-walk prices per symbol, Binance's exact payload shapes and key order for all six
event types, and internal consistency a consumer can check:

* every closed 1m kline (``x=true``) is the exact aggregate of the session's aggTrades
  whose trade time falls in ``[open, open + 60 s)`` (o/h/l/c, volumes, trade count,
  first/last trade id), computed with ``Decimal`` so no digit is invented or lost;
* depth updates chain (``pu`` = previous ``u``, ``U`` = previous ``u`` + 1) and every
  bookTicker ``u`` is a fresh order-book update id inside that chain (``market`` path: the
  book's own id at that tick, with its best levels);
* mark price updates announce the next funding time of the symbol's own interval
  (8h, 4h or 1h — never assumed to be 8h).

Prices come from one of two paths. ``market`` (the CLI default, what ``make demo`` uses):
each minute's trades are :func:`ingest_service.pricepath.minute_trades` of the shared
:class:`~ingest_service.pricepath.Market`'s kline for that minute, so the closed websocket
klines equal, value for value, what the simulated REST exchange serves for the same
minutes, and the demo's candles tell one story wherever the sources meet; its depth diffs and
book tickers are :class:`~ingest_service.bookpath.BookPath`'s, whose book the simulated exchange
serves as its REST depth snapshot, so a book rebuilt from the session syncs. ``walk``: an
independent per-trade random walk (the class default; tests of the event shapes use it).

    python -m ingest_service.generator session.jsonl --symbols BTCUSDT,ETHUSDT --minutes 5
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from dm_resources.intervals import DAY_MS, MINUTE_MS
from ingest_service.bookpath import TICK_MS, BookPath
from ingest_service.pricepath import PRICE_DECIMALS, Market, PlannedTrade, minute_trades

DEFAULT_START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
BASE_PRICES = {"BTCUSDT": 87_000.0, "ETHUSDT": 2_950.0, "SOLUSDT": 125.0, "BNBUSDT": 860.0, "XRPUSDT": 1.9}
FUNDING_HOURS = (8, 4, 1)


@dataclass(frozen=True)
class Rates:
    """Events per second per symbol (periodic streams as their push interval)."""

    trades_per_s: float = 8.0
    book_tickers_per_s: float = 4.0
    depth_interval_ms: int = 250
    kline_interval_ms: int = 2000  # open-kline pushes (x=false); Binance pushes every 250 ms
    ticker_interval_ms: int = 1000
    mark_interval_ms: int = 1000


def _fmt(d: Decimal, places: int) -> str:
    return f"{d:.{places}f}"


@dataclass
class _Bucket:
    open_time: int
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal = Decimal(0)
    quote_volume: Decimal = Decimal(0)
    taker_buy_volume: Decimal = Decimal(0)
    taker_buy_quote_volume: Decimal = Decimal(0)
    trades: int = 0
    first_trade_id: int = -1
    last_trade_id: int = -1


@dataclass
class _Symbol:
    name: str
    tick: Decimal  # price step
    price_places: int
    ticks: int  # current price in ticks
    funding_ms: int
    agg_id: int
    trade_id: int
    book_id: int
    last_depth_u: int
    rng: random.Random
    bucket: _Bucket | None = None
    day_open: Decimal = Decimal(0)
    day_high: Decimal = Decimal(0)
    day_low: Decimal = Decimal(0)
    day_volume: Decimal = Decimal(0)
    day_quote: Decimal = Decimal(0)
    day_first_trade: int = 0
    last_qty: Decimal = Decimal(0)
    funding_rate: float = 0.0001
    sigma_ticks: float = 1.0
    events: list[dict[str, Any]] = field(default_factory=list)
    plan: list[tuple[int, PlannedTrade]] = field(default_factory=list)  # market path: this minute's trades
    np_rng: np.random.Generator | None = None

    @property
    def price(self) -> Decimal:
        return self.tick * self.ticks


def _new_symbol(name: str, rng: random.Random) -> _Symbol:
    base = BASE_PRICES.get(name, math.exp(rng.uniform(math.log(0.05), math.log(500))))
    places = max(1, min(6, 5 - math.floor(math.log10(base))))
    tick = Decimal(1).scaleb(-places)
    ticks = round(base / float(tick))
    funding_h = 8 if name == "BTCUSDT" else rng.choice(FUNDING_HOURS)
    sym = _Symbol(
        name=name,
        tick=tick,
        price_places=places,
        ticks=ticks,
        funding_ms=funding_h * 3_600_000,
        agg_id=rng.randrange(10**8, 10**9),
        trade_id=rng.randrange(10**9, 5 * 10**9),
        book_id=rng.randrange(10**11, 10**12),
        last_depth_u=0,
        rng=rng,
        funding_rate=rng.uniform(-0.0002, 0.0004),
        # ≈ 0.003 % of price per trade, at least one tick
        sigma_ticks=max(1.0, ticks * 3e-5),
    )
    sym.last_depth_u = sym.book_id
    sym.day_open = sym.price * Decimal(str(round(rng.uniform(0.97, 1.03), 4)))
    sym.day_open = sym.day_open.quantize(tick)
    sym.day_high = max(sym.day_open, sym.price)
    sym.day_low = min(sym.day_open, sym.price)
    sym.day_volume = Decimal(rng.randrange(10_000, 1_000_000))
    sym.day_quote = (sym.day_volume * sym.price).quantize(Decimal("0.01"))
    sym.day_first_trade = sym.trade_id - rng.randrange(100_000, 2_000_000)
    return sym


def _env(stream: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"stream": stream, "data": data}


class SessionGenerator:
    """Deterministic (by seed) generator of a multi-symbol session, in event-time order."""

    TICK_MS = 50

    def __init__(
        self,
        symbols: Sequence[str],
        minutes: float,
        *,
        start_ms: int = DEFAULT_START_MS,
        seed: int = 1,
        rates: Rates | None = None,
        market: Market | None = None,
    ) -> None:
        self.rng = random.Random(seed)
        self.symbols = [_new_symbol(s.upper(), random.Random(f"{seed}:{s.upper()}")) for s in symbols]
        self.start_ms = start_ms
        self.end_ms = start_ms + int(minutes * MINUTE_MS)
        self.rates = rates or Rates()
        self.market = market
        self.book = BookPath(market) if market is not None else None
        if market is not None and self.rates.depth_interval_ms != TICK_MS:
            raise ValueError(f"the market path's book ticks every {TICK_MS} ms; depth_interval_ms must match")
        if market is not None:
            for sym in self.symbols:
                _, cols = market.minutes(sym.name, start_ms, start_ms + MINUTE_MS)
                sym.price_places = PRICE_DECIMALS
                sym.tick = Decimal(1).scaleb(-PRICE_DECIMALS)
                sym.ticks = int(cols["open"][0]) if cols["open"].size else sym.ticks
                sym.np_rng = np.random.default_rng([seed, sum(sym.name.encode())])

    def __iter__(self) -> Iterator[dict[str, Any]]:
        r = self.rates
        for t in range(self.start_ms, self.end_ms, self.TICK_MS):
            rel = t - self.start_ms
            for sym in self.symbols:
                if t % MINUTE_MS == 0 and sym.bucket is not None:
                    yield self._kline(sym, t + sym.rng.randint(0, 5), closed=True)
                    sym.bucket = None
                yield from self._tick(sym, t, rel, r)
        for sym in self.symbols:  # the session's last minute closes at its end
            if sym.bucket is not None and self.end_ms % MINUTE_MS == 0:
                yield self._kline(sym, self.end_ms + 1, closed=True)

    # -- per tick ------------------------------------------------------------------------
    def _tick(self, sym: _Symbol, t: int, rel: int, r: Rates) -> Iterator[dict[str, Any]]:
        rng = sym.rng
        dt = self.TICK_MS / 1000
        if sym.bucket is None:
            minute = t - t % MINUTE_MS
            p = sym.price
            sym.bucket = _Bucket(open_time=minute, open=p, high=p, low=p, close=p)
            if self.market is not None:
                sym.plan = self._plan_minute(sym, minute, r)
        if self.market is not None:
            while sym.plan and sym.plan[0][0] < t + self.TICK_MS:
                at, planned = sym.plan.pop(0)
                yield self._trade(sym, max(at, t), planned)
        else:
            n_trades = _poisson(rng, r.trades_per_s * dt)
            for i in range(n_trades):
                yield self._trade(sym, t + (i * self.TICK_MS) // max(1, n_trades))
        if self.book is not None:  # the book path: a diff and the book's best levels every tick
            if rel % r.depth_interval_ms == 0:
                k = t // TICK_MS
                yield _env(f"{sym.name.lower()}@depth@250ms", self.book.depth_update(sym.name, k))
                yield _env(f"{sym.name.lower()}@bookTicker", self.book.book_ticker(sym.name, k))
        else:
            for _ in range(_poisson(rng, r.book_tickers_per_s * dt)):
                yield self._book_ticker(sym, t + rng.randint(0, self.TICK_MS - 1))
            if rel % r.depth_interval_ms == 0:
                yield self._depth(sym, t + rng.randint(0, 3))
        if rel % r.kline_interval_ms == 0 and rel % MINUTE_MS != 0:
            yield self._kline(sym, t + rng.randint(0, 3), closed=False)
        if rel % r.ticker_interval_ms == 0:
            yield self._ticker(sym, t + rng.randint(0, 9))
        if rel % r.mark_interval_ms == 0:
            yield self._mark(sym, t + rng.randint(0, 9))

    def _plan_minute(self, sym: _Symbol, minute: int, r: Rates) -> list[tuple[int, PlannedTrade]]:
        """The market path's trades of this minute (absolute times), those before the session start dropped."""
        assert self.market is not None and sym.np_rng is not None
        _, cols = self.market.minutes(sym.name, minute, minute + MINUTE_MS)
        if cols["open"].size == 0:
            return []
        row = {c: int(v[0]) for c, v in cols.items()}
        plan = minute_trades(row, sym.np_rng, target=max(6, round(r.trades_per_s * 60)))
        return [(minute + p.offset_ms, p) for p in plan if minute + p.offset_ms >= self.start_ms]

    def _trade(self, sym: _Symbol, t: int, planned: PlannedTrade | None = None) -> dict[str, Any]:
        rng = sym.rng
        if planned is None:
            sym.ticks = max(1, sym.ticks + round(rng.gauss(0, sym.sigma_ticks)))
            qty = Decimal(max(1, int(rng.expovariate(1 / 40)))).scaleb(-3)
            n = rng.choice((1, 1, 1, 2, 3, 5))
            maker = rng.random() < 0.5
        else:
            sym.ticks = planned.price
            qty = Decimal(planned.qty).scaleb(-3)
            n = planned.raw_trades
            maker = planned.buyer_is_maker
        price = sym.price
        first = sym.trade_id + 1
        sym.trade_id += n
        sym.agg_id += 1
        b = sym.bucket
        assert b is not None
        b.high, b.low, b.close = max(b.high, price), min(b.low, price), price
        if b.trades == 0:
            b.open = b.high = b.low = price
            b.first_trade_id = first
        b.last_trade_id = sym.trade_id
        b.trades += n
        b.volume += qty
        b.quote_volume += price * qty
        if not maker:  # buyer is the taker
            b.taker_buy_volume += qty
            b.taker_buy_quote_volume += price * qty
        sym.day_high, sym.day_low = max(sym.day_high, price), min(sym.day_low, price)
        sym.day_volume += qty
        sym.day_quote += price * qty
        sym.last_qty = qty
        trade_time = t
        return _env(
            f"{sym.name.lower()}@aggTrade",
            {
                "e": "aggTrade",
                "E": trade_time + rng.randint(0, 4),
                "s": sym.name,
                "a": sym.agg_id,
                "p": _fmt(price, sym.price_places),
                "q": _fmt(qty, 3),
                "f": first,
                "l": sym.trade_id,
                "T": trade_time,
                "m": maker,
            },
        )

    def _book_ticker(self, sym: _Symbol, t: int) -> dict[str, Any]:
        rng = sym.rng
        sym.book_id += rng.randint(1, 4)
        spread = rng.randint(1, 3)
        bid = sym.tick * (sym.ticks - (spread // 2))
        ask = bid + sym.tick * spread
        return _env(
            f"{sym.name.lower()}@bookTicker",
            {
                "e": "bookTicker",
                "u": sym.book_id,
                "s": sym.name,
                "b": _fmt(bid, sym.price_places),
                "B": _fmt(Decimal(rng.randint(1, 20_000)).scaleb(-3), 3),
                "a": _fmt(ask, sym.price_places),
                "A": _fmt(Decimal(rng.randint(1, 20_000)).scaleb(-3), 3),
                "T": t - rng.randint(0, 3),
                "E": t,
            },
        )

    def _depth(self, sym: _Symbol, t: int) -> dict[str, Any]:
        rng = sym.rng
        sym.book_id += rng.randint(1, 30)
        first, last, prev = sym.last_depth_u + 1, sym.book_id, sym.last_depth_u
        sym.last_depth_u = sym.book_id

        def levels(side: int) -> list[list[str]]:
            out = []
            for k in sorted(rng.sample(range(1, 40), rng.randint(1, 6))):
                p = sym.tick * (sym.ticks + side * k)
                q = Decimal(0) if rng.random() < 0.2 else Decimal(rng.randint(1, 50_000)).scaleb(-3)
                out.append([_fmt(p, sym.price_places), _fmt(q, 3)])
            return out

        return _env(
            f"{sym.name.lower()}@depth@250ms",
            {
                "e": "depthUpdate",
                "E": t,
                "T": t - rng.randint(0, 3),
                "s": sym.name,
                "U": first,
                "u": last,
                "pu": prev,
                "b": levels(-1),
                "a": levels(1),
            },
        )

    def _kline(self, sym: _Symbol, t: int, *, closed: bool) -> dict[str, Any]:
        b = sym.bucket
        assert b is not None
        pp = sym.price_places
        return _env(
            f"{sym.name.lower()}@kline_1m",
            {
                "e": "kline",
                "E": t,
                "s": sym.name,
                "k": {
                    "t": b.open_time,
                    "T": b.open_time + MINUTE_MS - 1,
                    "s": sym.name,
                    "i": "1m",
                    "f": b.first_trade_id,
                    "L": b.last_trade_id,
                    "o": _fmt(b.open, pp),
                    "c": _fmt(b.close, pp),
                    "h": _fmt(b.high, pp),
                    "l": _fmt(b.low, pp),
                    "v": _fmt(b.volume, 3),
                    "n": b.trades,
                    "x": closed,
                    "q": _fmt(b.quote_volume, pp + 3),
                    "V": _fmt(b.taker_buy_volume, 3),
                    "Q": _fmt(b.taker_buy_quote_volume, pp + 3),
                    "B": "0",
                },
            },
        )

    def _ticker(self, sym: _Symbol, t: int) -> dict[str, Any]:
        pp = sym.price_places
        last = sym.price
        change = last - sym.day_open
        pct = (change / sym.day_open * 100).quantize(Decimal("0.001"))
        wavg = (sym.day_quote / sym.day_volume).quantize(sym.tick) if sym.day_volume else last
        return _env(
            f"{sym.name.lower()}@ticker",
            {
                "e": "24hrTicker",
                "E": t,
                "s": sym.name,
                "p": _fmt(change, pp),
                "P": _fmt(pct, 3),
                "w": _fmt(wavg, pp),
                "c": _fmt(last, pp),
                "Q": _fmt(sym.last_qty, 3),
                "o": _fmt(sym.day_open, pp),
                "h": _fmt(sym.day_high, pp),
                "l": _fmt(sym.day_low, pp),
                "v": _fmt(sym.day_volume, 3),
                "q": _fmt(sym.day_quote, 2),
                "O": t - DAY_MS,
                "C": t,
                "F": sym.day_first_trade,
                "L": sym.trade_id,
                "n": sym.trade_id - sym.day_first_trade + 1,
            },
        )

    def _mark(self, sym: _Symbol, t: int) -> dict[str, Any]:
        rng = sym.rng
        sym.funding_rate = min(0.003, max(-0.003, sym.funding_rate + rng.gauss(0, 0.000002)))
        mark = sym.price + sym.tick * Decimal(str(round(rng.uniform(-1.5, 1.5), 2)))
        index = mark + sym.tick * Decimal(str(round(rng.uniform(-2, 2), 2)))
        settle = index + sym.tick * Decimal(str(round(rng.uniform(-0.5, 0.5), 2)))
        next_funding = (t // sym.funding_ms + 1) * sym.funding_ms
        return _env(
            f"{sym.name.lower()}@markPrice@1s",
            {
                "e": "markPriceUpdate",
                "E": t,
                "s": sym.name,
                "p": _fmt(mark, 8),
                "i": _fmt(index, 8),
                "P": _fmt(settle, 8),
                "r": f"{sym.funding_rate:.8f}",
                "T": next_funding,
            },
        )


def _poisson(rng: random.Random, lam: float) -> int:
    """Knuth's method: fine for the small means used per 50 ms tick."""
    limit, k, p = math.exp(-lam), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


def generate_session(
    symbols: Sequence[str],
    minutes: float,
    *,
    start_ms: int = DEFAULT_START_MS,
    seed: int = 1,
    rates: Rates | None = None,
    market: Market | None = None,
) -> Iterator[dict[str, Any]]:
    return iter(SessionGenerator(symbols, minutes, start_ms=start_ms, seed=seed, rates=rates, market=market))


def malformed_messages(n: int, seed: int = 7) -> list[tuple[bytes, str]]:
    """``n`` bad messages of varied kinds, each with the kind of reason expected for it."""
    rng = random.Random(seed)
    good = {"e": "aggTrade", "E": 1, "s": "BTCUSDT", "a": 1, "p": "1.0", "q": "1", "f": 1, "l": 1, "T": 1, "m": False}
    out: list[tuple[bytes, str]] = []
    for i in range(n):
        kind = i % 6
        if kind == 0:
            out.append((b'{"stream":"btcusdt@aggTrade","data":{"e":"aggTr' + str(i).encode(), "invalid JSON"))
        elif kind == 1:
            out.append(
                (
                    orjson.dumps({"stream": "btcusdt@foo", "data": {"e": f"foo{i}", "E": i, "s": "BTCUSDT"}}),
                    "unknown event type",
                )
            )
        elif kind == 2:
            data = dict(good, a=10**9 + i, E=i)
            del data[rng.choice(["p", "q", "T", "a", "m"])]
            out.append((orjson.dumps({"stream": "btcusdt@aggTrade", "data": data}), "missing field"))
        elif kind == 3:
            data = dict(good, a=10**9 + i, E=i, p=12345.678)  # a float price: digits may be lost already
            out.append((orjson.dumps({"stream": "btcusdt@aggTrade", "data": data}), "field 'p'"))
        elif kind == 4:
            data = dict(good, a=10**9 + i, E=i, T="1767225600000")
            out.append((orjson.dumps({"stream": "btcusdt@aggTrade", "data": data}), "field 'T'"))
        else:
            out.append((orjson.dumps([i, "not an envelope"]), "not an object"))
    return out


def write_session(
    path: Path,
    symbols: Sequence[str],
    minutes: float,
    *,
    seed: int = 1,
    start_ms: int = DEFAULT_START_MS,
    rates: Rates | None = None,
    bad: int = 0,
    market: Market | None = None,
) -> int:
    """Write a session as JSON lines; ``bad`` malformed lines are spread through it. Returns the line count."""
    rng = random.Random(seed + 1)
    events = generate_session(symbols, minutes, start_ms=start_ms, seed=seed, rates=rates, market=market)
    lines = [orjson.dumps(env) for env in events]
    for raw, _ in malformed_messages(bad, seed):
        lines.insert(rng.randrange(len(lines) + 1), raw.replace(b"\n", b" "))
    with open(path, "wb") as fh:
        for line in lines:
            fh.write(line + b"\n")
    return len(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ingest_service.generator", description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="output file (JSON lines of combined-stream envelopes)")
    ap.add_argument("--symbols", default="BTCUSDT,ETHUSDT,SOLUSDT")
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--start-ms", type=int, default=DEFAULT_START_MS)
    ap.add_argument("--trades-per-s", type=float, default=Rates.trades_per_s)
    ap.add_argument("--bad", type=int, default=0, help="malformed lines to mix in (dead-letter demo)")
    ap.add_argument(
        "--path",
        choices=("market", "walk"),
        default="market",
        help="market: follow the simulated exchange's price path (its klines equal ours); walk: a free random walk",
    )
    ap.add_argument("--market-seed", type=int, default=20260101, help="seed of the shared market (the fake's default)")
    args = ap.parse_args(argv)
    symbols = [s.strip().upper() for s in args.symbols.split(",") if s.strip()]
    n = write_session(
        args.out,
        symbols,
        args.minutes,
        seed=args.seed,
        start_ms=args.start_ms,
        rates=Rates(trades_per_s=args.trades_per_s),
        bad=args.bad,
        market=Market(args.market_seed) if args.path == "market" else None,
    )
    print(f"wrote {n} messages for {len(symbols)} symbols over {args.minutes:g} min to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
