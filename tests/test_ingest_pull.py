"""The lean pull consumer (ingest_service/pull.py) against a real nats-server."""

from __future__ import annotations

import asyncio
import uuid

import nats
from nats.js.api import AckPolicy, ConsumerConfig

from ingest_service.pull import PullConsumer


async def _setup(url: str, n: int) -> tuple[nats.NATS, str, str]:
    tag = uuid.uuid4().hex[:8]
    stream, durable, subject = f"P{tag}", f"d{tag}", f"p{tag}.data"
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(name=stream, subjects=[subject])
    futs = [await js.publish_async(subject, f"m{i}".encode()) for i in range(n)]
    await asyncio.gather(*futs)
    await js.add_consumer(stream, ConsumerConfig(durable_name=durable, ack_policy=AckPolicy.EXPLICIT, ack_wait=30))
    return nc, stream, durable


def test_batches_in_order_acks_and_empty_fetches(nats_server: str) -> None:
    async def run() -> None:
        nc, stream, durable = await _setup(nats_server, 2500)
        try:
            pull = await PullConsumer(nc, stream, durable).start()
            sizes, seen = [], []
            for _ in range(3):
                msgs = await pull.fetch(1000, 0.5)
                sizes.append(len(msgs))
                seen += [m.data.decode() for m in msgs]
                for m in msgs:
                    await m.ack()
            assert sizes == [1000, 1000, 500]  # the last one returned at expiry with what there was
            assert seen == [f"m{i}" for i in range(2500)]
            assert await pull.fetch(1000, 0.2) == []  # drained: an empty batch, not an exception
            subject = (await nc.jetstream().stream_info(stream)).config.subjects[0]
            await nc.jetstream().publish(subject, b"late")
            late = await pull.fetch(10, 0.5)
            assert [(m.data, m.metadata.sequence.stream) for m in late] == [(b"late", 2501)]
            await nc.flush()
            info = await nc.jetstream().consumer_info(stream, durable)
            assert (info.ack_floor.stream_seq, info.num_ack_pending) == (2500, 1)
            assert pull.last_status is None
            await pull.stop()
        finally:
            await nc.close()

    asyncio.run(run())


def test_a_missing_consumer_ends_the_request_with_its_status(nats_server: str) -> None:
    async def run() -> None:
        nc, stream, durable = await _setup(nats_server, 1)
        try:
            await nc.jetstream().delete_consumer(stream, durable)
            pull = await PullConsumer(nc, stream, durable, grace_s=30).start()
            # Ends on the server's answer, not on the 30 s grace: the test would hang otherwise.
            assert await asyncio.wait_for(pull.fetch(10, 0.2), 10) == []
            assert pull.last_status is not None
        finally:
            await nc.close()

    asyncio.run(run())
