"""A deterministic order-book market for the reconstruction tests: the truth to compare against.

It produces Binance-shaped ``depthUpdate`` events (``U``, ``u``, ``pu`` chained, absolute
quantities, 0 removes) and records the true book after every event, so a test can ask
for a REST snapshot at any event and for the true top N at any time. The true book is
never crossed: bids stay below the mid, asks above; when the mid moves, the levels on
the wrong side are removed in the same event.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from bson.decimal128 import Decimal128

from dm_assets.orderbook.book import Diff, Snapshot

TICK = Decimal("0.10")


@dataclass
class Event:
    diff: Diff
    bids: dict[Decimal, Decimal]  # the true book after this event
    asks: dict[Decimal, Decimal]


class BookMarket:
    def __init__(self, seed: int = 7, start_ms: int = 1_773_100_800_000, first_id: int = 1_000_000) -> None:
        self.rng = random.Random(seed)
        self.t = start_ms
        self.u = first_id
        self.mid = Decimal("100.00")
        self.bids: dict[Decimal, Decimal] = {}
        self.asks: dict[Decimal, Decimal] = {}
        for i in range(1, 41):
            self.bids[self.mid - TICK * i + TICK / 2] = self._qty()
            self.asks[self.mid + TICK * i - TICK / 2] = self._qty()
        self.initial_u = self.u
        self.events: list[Event] = []

    def _qty(self) -> Decimal:
        return Decimal(self.rng.randint(1, 5000)) / 1000

    def step(self, dt_ms: tuple[int, int] = (100, 900)) -> Event:
        self.t += self.rng.randint(*dt_ms)
        first = self.u + 1
        self.u += self.rng.randint(1, 6)
        bids: dict[Decimal, Decimal] = {}
        asks: dict[Decimal, Decimal] = {}
        if self.rng.random() < 0.2:
            self.mid += TICK * self.rng.choice((-2, -1, 1, 2))
            for p in [p for p in self.bids if p >= self.mid]:
                bids[p] = Decimal(0)
            for p in [p for p in self.asks if p <= self.mid]:
                asks[p] = Decimal(0)
        for _ in range(self.rng.randint(1, 6)):
            k = self.rng.randint(1, 45)
            side, price = (
                (bids, self.mid - TICK * k + TICK / 2)
                if self.rng.random() < 0.5
                else (
                    asks,
                    self.mid + TICK * k - TICK / 2,
                )
            )
            side[price] = Decimal(0) if self.rng.random() < 0.25 else self._qty()
        for side, book in ((bids, self.bids), (asks, self.asks)):
            for p, q in side.items():
                if q == 0:
                    book.pop(p, None)
                else:
                    book[p] = q
        prev = self.events[-1].diff.final_id if self.events else self.initial_u
        diff = Diff(first, self.u, prev, self.t, tuple(sorted(bids.items())), tuple(sorted(asks.items())))
        ev = Event(diff, dict(self.bids), dict(self.asks))
        self.events.append(ev)
        return ev

    def run(self, n: int) -> list[Event]:
        for _ in range(n):
            self.step()
        return self.events

    def snapshot_after(self, i: int, taken_ms: int | None = None) -> Snapshot:
        """The REST snapshot the exchange would have served right after event ``i``."""
        ev = self.events[i]
        return Snapshot(
            ev.diff.final_id,
            taken_ms if taken_ms is not None else ev.diff.event_time,
            tuple(sorted(ev.bids.items(), reverse=True)),
            tuple(sorted(ev.asks.items())),
        )

    def truth_at(self, t: int, depth: int = 20) -> tuple[list[tuple[Decimal, Decimal]], list[tuple[Decimal, Decimal]]]:
        """The true top ``depth`` after every event with event_time <= t."""
        last = None
        for ev in self.events:
            if ev.diff.event_time <= t:
                last = ev
            else:
                break
        assert last is not None, "no event at or before t"
        bids = sorted(last.bids.items(), reverse=True)[:depth]
        asks = sorted(last.asks.items())[:depth]
        return bids, asks


def diff_document(symbol: str, d: Diff) -> dict[str, Any]:
    """The ``depth_updates`` document the ingest service stores for ``d``."""
    return {
        "_id": f"{symbol}:{d.final_id}",
        "symbol": symbol,
        "event_time": d.event_time,
        "transaction_time": d.event_time - 2,
        "first_update_id": d.first_id,
        "final_update_id": d.final_id,
        "prev_final_update_id": d.prev_final_id,
        "bids": [[Decimal128(p), Decimal128(q)] for p, q in d.bids],
        "asks": [[Decimal128(p), Decimal128(q)] for p, q in d.asks],
    }


def snapshot_document(symbol: str, snap: Snapshot) -> dict[str, Any]:
    """The ``depth_snapshots`` document the asset stores for ``snap`` (``_id`` = ``SYM:lastUpdateId``)."""
    return {
        "_id": f"{symbol}:{snap.last_update_id}",
        "symbol": symbol,
        "snapshot_time": snap.time,
        "transaction_time": snap.time - 3,
        "last_update_id": snap.last_update_id,
        "limit": 1000,
        "fetched_at": snap.time,
        "bids": [[Decimal128(p), Decimal128(q)] for p, q in snap.bids],
        "asks": [[Decimal128(p), Decimal128(q)] for p, q in snap.asks],
    }


def depth_body(snap: Snapshot) -> dict[str, Any]:
    """``GET /fapi/v1/depth`` body for ``snap`` (decimal strings, like Binance)."""
    return {
        "lastUpdateId": snap.last_update_id,
        "E": snap.time,
        "T": snap.time - 3,
        "bids": [[str(p), str(q)] for p, q in snap.bids],
        "asks": [[str(p), str(q)] for p, q in snap.asks],
    }
