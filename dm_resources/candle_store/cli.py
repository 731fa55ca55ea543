"""``python -m dm_resources.candle_store``: the operator's commands for the candle buckets."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence

from dm_resources.candle_store.migrate import migrate
from dm_resources.mongo import MongoStore
from dm_resources.settings import get_settings


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m dm_resources.candle_store migrate [--drop-legacy]``: convert a store, print a JSON report."""
    parser = argparse.ArgumentParser(prog="python -m dm_resources.candle_store", description=main.__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    mig = sub.add_parser("migrate", help="per-candle `candles` documents → day buckets (idempotent)")
    mig.add_argument("--mongo-url", default=None)
    mig.add_argument("--db", default=None)
    mig.add_argument("--symbol", action="append", help="only these symbols (repeatable); default: all")
    mig.add_argument("--drop-legacy", action="store_true", help="drop the per-candle `candles` collection afterwards")
    args = parser.parse_args(argv)
    settings = get_settings()
    store = MongoStore(args.mongo_url or settings.mongo_url, args.db or settings.mongo_db)
    try:
        t0 = time.perf_counter()
        rep = migrate(store, symbols=args.symbol, drop_legacy=args.drop_legacy)
        out = {**rep.__dict__, "seconds": round(time.perf_counter() - t0, 2)}
        print(json.dumps(out, indent=2))
    finally:
        store.close()
    return 0
