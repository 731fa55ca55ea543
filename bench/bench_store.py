"""Embedded store rates: bulk idempotent writes and ascending range reads.

Prints JSON. Starts its own SecantusDB on a free port (or uses --mongo-url), writes
``--docs`` agg_trade documents in batches of ``--batch`` through
``MongoStore.insert_idempotent`` (unique compound index in place, as in production),
then reads them back by (symbol, time) range.

    .venv/bin/python bench/bench_store.py --docs 50000
    .venv/bin/python bench/bench_store.py --modes standalone,replica-set --rounds 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bson.decimal128 import Decimal128

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dm_resources.embedded import ManagedProcess, free_port, start_secantus
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


def _start(mode: str) -> tuple[ManagedProcess, str]:
    port = free_port()
    proc = start_secantus(port, Path(tempfile.mkdtemp(prefix=f"bench-store-{mode}-")), standalone=mode == "standalone")
    return proc, f"mongodb://127.0.0.1:{port}/?directConnection=true"


def _one(url: str, docs: int, batch: int) -> dict:
    db = f"bench_{uuid.uuid4().hex[:8]}"
    store = MongoStore(url, db)
    try:
        return run(store, docs, batch)
    finally:
        store.client.drop_database(db)
        store.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--docs", type=int, default=50_000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--mongo-url", default=None, help="use this server instead of starting SecantusDB")
    ap.add_argument(
        "--modes",
        default="standalone",
        help="SecantusDB launch modes to run side by side, e.g. 'standalone,replica-set' "
        "(each gets its own server; rounds alternate so machine load hits both alike)",
    )
    ap.add_argument("--rounds", type=int, default=1, help="alternating rounds per mode (with several modes)")
    args = ap.parse_args()
    if args.mongo_url is not None:
        result = _one(args.mongo_url, args.docs, args.batch)
        result["server"] = args.mongo_url
        print(json.dumps(result, indent=2))
        return
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = set(modes) - {"standalone", "replica-set"}
    if unknown:
        ap.error(f"unknown mode(s) {sorted(unknown)}: use standalone and/or replica-set")
    servers = {m: _start(m) for m in modes}
    try:
        runs: dict[str, list[dict]] = {m: [] for m in modes}
        for _ in range(args.rounds if len(modes) > 1 else 1):
            for m in modes:
                runs[m].append(_one(servers[m][1], args.docs, args.batch))
    finally:
        for proc, _ in servers.values():
            proc.stop()
    if len(modes) == 1:
        result = runs[modes[0]][0]
        result["server"] = f"SecantusDB (embedded, {modes[0]})"
        print(json.dumps(result, indent=2))
        return
    best = {m: max(r["bulk_write_docs_per_s"] for r in rs) for m, rs in runs.items()}
    median = {m: statistics.median(r["bulk_write_docs_per_s"] for r in rs) for m, rs in runs.items()}
    out: dict = {
        "server": "SecantusDB (embedded)",
        "modes": runs,
        "best_bulk_write_docs_per_s": best,
        "median_bulk_write_docs_per_s": median,
    }
    if set(modes) == {"standalone", "replica-set"}:
        out["standalone_over_replica_set_writes"] = round(best["standalone"] / best["replica-set"], 3)
        out["standalone_over_replica_set_writes_median"] = round(median["standalone"] / median["replica-set"], 3)
        out["standalone_over_replica_set_reads"] = round(
            max(r["range_read_rows_per_s"] for r in runs["standalone"])
            / max(r["range_read_rows_per_s"] for r in runs["replica-set"]),
            3,
        )
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
