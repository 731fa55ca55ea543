"""The anchor for ``bench_ingest.py --phases cpu``: the ingest loop anyone would write first.

Fetch 500 from the durable pull consumer, build documents, ``insert_many(ordered=False)``
per collection, ack each message. No validation, no dead letters, no metrics, no
pipelining: aggTrades get the same documents as the service (Decimal128 prices), every
other event is stored as its payload plus an ``_id``. Run as its own process so its CPU
time can be read from /proc:

    python bench/naive_ingest.py NATS_URL STREAM DURABLE MONGO_URL DB
"""

import asyncio
import contextlib
import signal
import sys
from collections import defaultdict

import nats
import orjson
from bson.decimal128 import Decimal128
from pymongo import MongoClient
from pymongo.errors import BulkWriteError


def document(data: dict) -> tuple[str, dict]:
    if data["e"] == "aggTrade":
        return "agg_trades", {
            "_id": f"{data['s']}:{data['a']}",
            "symbol": data["s"],
            "agg_id": data["a"],
            "price": Decimal128(data["p"]),
            "qty": Decimal128(data["q"]),
            "first_trade_id": data["f"],
            "last_trade_id": data["l"],
            "trade_time": data["T"],
            "event_time": data["E"],
            "buyer_is_maker": data["m"],
        }
    return data["e"], {"_id": f"{data['s']}:{data['E']}:{data.get('u', data.get('a', 0))}", **data}


async def main(nats_url: str, stream: str, durable: str, mongo_url: str, db: str) -> None:
    store = MongoClient(mongo_url)[db]
    nc = await nats.connect(nats_url)
    psub = await nc.jetstream().pull_subscribe_bind(durable=durable, stream=stream)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    while not stop.is_set():
        try:
            msgs = await psub.fetch(500, timeout=0.1)
        except TimeoutError:
            continue
        batches: dict[str, list[dict]] = defaultdict(list)
        for m in msgs:
            coll, doc = document(orjson.loads(m.data).get("data"))
            batches[coll].append(doc)
        for coll, docs in batches.items():
            with contextlib.suppress(BulkWriteError):  # duplicates on redelivery
                await asyncio.to_thread(store[coll].insert_many, docs, ordered=False)
        for m in msgs:
            await m.ack()
    await nc.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:6]))
