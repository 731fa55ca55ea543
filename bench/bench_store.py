"""Embedded store rates: bulk idempotent writes and ascending range reads.

Prints JSON. Starts its own SecantusDB on a free port (or uses --mongo-url), writes
``--docs`` agg_trade documents in batches of ``--batch`` through
``MongoStore.insert_idempotent`` (unique compound index in place, as in production),
then reads them back by (symbol, time) range.

    .venv/bin/python bench/bench_store.py --docs 50000
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bson.decimal128 import Decimal128

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dm_resources.embedded import free_port, start_secantus
from dm_resources.mongo import MongoStore


def make_docs(n: int, symbol: str, start_ms: int) -> list[dict]:
    return [
        {
            "_id": f"{symbol}:{i}",
            "symbol": symbol,
            "agg_id": i,
            "price": Decimal128(f"{27000 + (i % 1000) / 100:.2f}"),
            "qty": Decimal128("0.015"),
            "first_trade_id": i * 3,
            "last_trade_id": i * 3 + 2,
            "trade_time": start_ms + i * 10,
            "event_time": start_ms + i * 10 + 5,
            "buyer_is_maker": bool(i % 2),
        }
        for i in range(n)
    ]


def run(store: MongoStore, n_docs: int, batch: int) -> dict:
    store.ensure_indexes()
    start_ms = 1_767_225_600_000
    docs = make_docs(n_docs, "BTCUSDT", start_ms)
    t0 = time.perf_counter()
    inserted = 0
    for i in range(0, n_docs, batch):
        inserted += store.insert_idempotent("agg_trades", docs[i : i + batch]).inserted
    write_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    dup = 0
    for i in range(0, min(n_docs, 10 * batch), batch):
        dup += store.insert_idempotent("agg_trades", docs[i : i + batch]).duplicates
    dup_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    rows = sum(1 for _ in store.iter_range("agg_trades", "BTCUSDT", start_ms, start_ms + n_docs * 10))
    read_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    window = store.read_range("agg_trades", "BTCUSDT", start_ms + n_docs * 5, start_ms + n_docs * 5 + 10_000)
    window_s = time.perf_counter() - t0
    return {
        "docs": n_docs,
        "batch": batch,
        "bulk_write_docs_per_s": round(inserted / write_s, 1),
        "duplicate_rewrite_docs_per_s": round(dup / dup_s, 1) if dup_s else None,
        "range_read_rows_per_s": round(rows / read_s, 1),
        "range_read_rows": rows,
        "small_window_read_ms": round(window_s * 1000, 2),
        "small_window_rows": len(window),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--docs", type=int, default=50_000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--mongo-url", default=None, help="use this server instead of starting SecantusDB")
    args = ap.parse_args()
    proc = None
    url = args.mongo_url
    if url is None:
        port = free_port()
        proc = start_secantus(port, Path(tempfile.mkdtemp(prefix="bench-store-")))
        url = f"mongodb://127.0.0.1:{port}/?directConnection=true"
    db = f"bench_{uuid.uuid4().hex[:8]}"
    store = MongoStore(url, db)
    try:
        result = run(store, args.docs, args.batch)
        result["server"] = "SecantusDB (embedded)" if proc else url
        print(json.dumps(result, indent=2))
    finally:
        store.client.drop_database(db)
        store.close()
        if proc:
            proc.stop()


if __name__ == "__main__":
    main()
