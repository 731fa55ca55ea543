"""``python -m dm_resources.candle_store``: the operator's commands for the candle buckets.

* ``migrate`` — per-candle ``candles`` documents of the first layout → buckets;
* ``reencode`` — buckets in an older encoding → the current one (compressed columns).

Both print a JSON report, are idempotent, and can be stopped and run again at any point.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence

from dm_resources.candle_store.layout import INTERVAL_MS
from dm_resources.candle_store.migrations import migrate, reencode
from dm_resources.mongo import MongoStore
from dm_resources.settings import get_settings


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m dm_resources.candle_store {migrate,reencode}``: convert a store, print a JSON report."""
    parser = argparse.ArgumentParser(prog="python -m dm_resources.candle_store", description=main.__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    mig = sub.add_parser("migrate", help="per-candle `candles` documents → day buckets (idempotent)")
    mig.add_argument("--drop-legacy", action="store_true", help="drop the per-candle `candles` collection afterwards")
    enc = sub.add_parser("reencode", help="buckets in an older encoding → the current one (idempotent, resumable)")
    enc.add_argument("--interval", action="append", choices=list(INTERVAL_MS), help="only these (repeatable)")
    enc.add_argument("--limit", type=int, default=None, help="convert at most this many buckets, then stop")
    for p in (mig, enc):
        p.add_argument("--mongo-url", default=None)
        p.add_argument("--db", default=None)
        p.add_argument("--symbol", action="append", help="only these symbols (repeatable); default: all")
    args = parser.parse_args(argv)
    settings = get_settings()
    store = MongoStore(args.mongo_url or settings.mongo_url, args.db or settings.mongo_db)
    try:
        t0 = time.perf_counter()
        if args.cmd == "migrate":
            report: object = migrate(store, symbols=args.symbol, drop_legacy=args.drop_legacy)
        else:
            report = reencode(
                store, symbols=args.symbol, intervals=args.interval or tuple(INTERVAL_MS), limit=args.limit
            )
        print(json.dumps({**vars(report), "seconds": round(time.perf_counter() - t0, 2)}, indent=2))
    finally:
        store.close()
    return 0
