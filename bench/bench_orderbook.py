"""Order-book rebuild cost, each figure beside an anchor measured in the same run.

1. Replay in memory: ``reconstruct`` (continuity checks, proven top-20 every 10 s) over
   ``--events`` simulated diffs, against the anchor of applying the same diffs to two plain
   dicts with no checks and no output (the least work any rebuild must do). Ratio = ours / anchor.
2. A day partition on the store: ``build_orderbook_day`` (read snapshots + diffs, replay, write
   rows) against the anchor of reading the same diffs with ``read_range`` alone. Starts its own
   SecantusDB on a free port unless ``--mongo-url`` is given.

    .venv/bin/python bench/bench_orderbook.py --events 50000
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bson.decimal128 import Decimal128

from dm_assets.orderbook import build
from dm_assets.orderbook.book import reconstruct
from dm_assets.partitions import day_bounds_ms
from dm_resources.embedded import free_port, start_secantus
from dm_resources.mongo import MongoStore
from tests.book_sim import BookMarket, diff_document

DAY = "2026-03-10"
SYMBOL = "BTCUSDT"


def bare_apply(diffs: list) -> int:
    bids: dict = {}
    asks: dict = {}
    for d in diffs:
        for p, q in d.bids:
            if q == 0:
                bids.pop(p, None)
            else:
                bids[p] = q
        for p, q in d.asks:
            if q == 0:
                asks.pop(p, None)
            else:
                asks[p] = q
    return len(bids) + len(asks)


def in_memory(market: BookMarket) -> dict:
    diffs = [e.diff for e in market.events]
    snap = market.snapshot_after(0)
    start, end = diffs[0].event_time, diffs[-1].event_time
    t0 = time.perf_counter()
    bare_apply(diffs)
    anchor = time.perf_counter() - t0
    t0 = time.perf_counter()
    tops, _stats = reconstruct([snap], diffs, start, end)
    ours = time.perf_counter() - t0
    return {
        "events": len(diffs),
        "rows_emitted": len(tops),
        "reconstruct_s": round(ours, 4),
        "reconstruct_events_per_s": round(len(diffs) / ours),
        "anchor_bare_dict_apply_s": round(anchor, 4),
        "anchor_events_per_s": round(len(diffs) / anchor),
        "ratio": round(ours / anchor, 2),
    }


def on_store(store: MongoStore, market: BookMarket) -> dict:
    store.ensure_indexes()
    start, end = day_bounds_ms(DAY)
    store.insert_idempotent("depth_updates", [diff_document(SYMBOL, e.diff) for e in market.events])
    snap = market.snapshot_after(0)
    store.insert_idempotent(
        "depth_snapshots",
        [
            {
                "_id": f"{SYMBOL}:{snap.last_update_id}",
                "symbol": SYMBOL,
                "snapshot_time": snap.time,
                "transaction_time": snap.time,
                "last_update_id": snap.last_update_id,
                "bids": [[Decimal128(p), Decimal128(q)] for p, q in snap.bids],
                "asks": [[Decimal128(p), Decimal128(q)] for p, q in snap.asks],
            }
        ],
    )
    t0 = time.perf_counter()
    rows = store.read_range("depth_updates", SYMBOL, start - 60_000, end + 60_000)
    anchor = time.perf_counter() - t0
    t0 = time.perf_counter()
    day = build.build_orderbook_day(store, SYMBOL, DAY, now=end + 3_600_000)
    ours = time.perf_counter() - t0
    return {
        "diffs_read": len(rows),
        "rows_written": day.documents,
        "build_day_s": round(ours, 3),
        "anchor_read_range_s": round(anchor, 3),
        "ratio": round(ours / anchor, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=50_000)
    ap.add_argument("--store-events", type=int, default=20_000)
    ap.add_argument("--mongo-url", default=None)
    args = ap.parse_args()
    start, _ = day_bounds_ms(DAY)
    market = BookMarket(seed=1, start_ms=start)
    market.run(args.events)
    out = {"in_memory": in_memory(market)}
    proc = None
    url = args.mongo_url
    if url is None:
        port = free_port()
        proc = start_secantus(port, Path(tempfile.mkdtemp(prefix="bench-orderbook-")))
        url = f"mongodb://127.0.0.1:{port}/?directConnection=true"
    store = MongoStore(url, f"bench_{uuid.uuid4().hex[:8]}")
    try:
        small = BookMarket(seed=2, start_ms=start)
        small.run(args.store_events)
        out["store"] = on_store(store, small)
    finally:
        store.client.drop_database(store.db_name)
        store.close()
        if proc is not None:
            proc.stop()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
