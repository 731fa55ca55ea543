"""Progress read on the bus: what tests, benches and the demo wait on instead of store counts."""

from __future__ import annotations

import asyncio
import uuid

import nats
import pytest
from nats.js.api import AckPolicy, ConsumerConfig

from ingest_service.progress import (
    ConsumerProgress,
    NotDrainedError,
    drain_budget_s,
    read_progress,
    wait_drained,
)
from ingest_service.replay import publish_lines


def test_drained_needs_consumer_nothing_pending_and_ack_floor_at_the_end() -> None:
    done = ConsumerProgress(10, 10, True, delivered_seq=10, ack_floor_seq=10)
    assert done.drained(10)
    assert not done.drained(11)  # fewer messages in the stream than were published
    assert not ConsumerProgress(10, 10, False).drained(10)
    assert not ConsumerProgress(10, 10, True, 10, 9, num_ack_pending=1).drained(10)
    assert not ConsumerProgress(10, 10, True, 5, 5, num_pending=5).drained(10)
    assert not ConsumerProgress(10, 10, True, 10, 9).drained(10)  # a gap below the floor


def test_budget_grows_with_the_work() -> None:
    assert drain_budget_s(0) == 60
    assert drain_budget_s(100_000) > drain_budget_s(10_000) > drain_budget_s(0)


def _setup(nats_url: str, tag: str, messages: int, acked: int) -> None:
    """A stream with ``messages`` and a durable consumer that acked the first ``acked``."""

    async def run() -> None:
        await publish_lines(nats_url, f"p{tag}.data", f"P{tag}", [b"{}"] * messages, progress=False)
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        await js.add_consumer(f"P{tag}", ConsumerConfig(durable_name=f"d{tag}", ack_policy=AckPolicy.EXPLICIT))
        sub = await js.pull_subscribe_bind(durable=f"d{tag}", stream=f"P{tag}")
        if acked:
            for msg in await sub.fetch(acked, timeout=5):
                await msg.ack_sync()
        await nc.close()

    asyncio.run(run())


def test_wait_fails_with_the_consumer_state_when_messages_stay_pending(nats_server: str) -> None:
    tag = uuid.uuid4().hex[:8]
    _setup(nats_server, tag, messages=20, acked=5)
    state = read_progress(nats_server, f"P{tag}", f"d{tag}")
    assert state is not None and state.ack_floor_seq == 5 and state.num_pending == 15
    with pytest.raises(NotDrainedError) as err:
        wait_drained(
            nats_server, f"P{tag}", f"d{tag}", min_last_seq=20, timeout=1, poll_s=0.2, context=lambda: "stored: 5"
        )
    msg = str(err.value)
    assert "timed out after 1s" in msg and "ack_floor=5" in msg and "pending=15" in msg and "stored: 5" in msg


def test_wait_stops_at_once_when_the_worker_died(nats_server: str) -> None:
    tag = uuid.uuid4().hex[:8]
    _setup(nats_server, tag, messages=3, acked=0)
    with pytest.raises(NotDrainedError, match="ingest exited"):
        wait_drained(nats_server, f"P{tag}", f"d{tag}", min_last_seq=3, timeout=60, alive=lambda: "ingest exited (1)")


def test_wait_returns_once_everything_is_acked(nats_server: str) -> None:
    tag = uuid.uuid4().hex[:8]
    _setup(nats_server, tag, messages=4, acked=4)
    state = wait_drained(nats_server, f"P{tag}", f"d{tag}", min_last_seq=4, timeout=10)
    assert state.ack_floor_seq == 4 and state.num_pending == 0


def test_unknown_stream_reads_as_not_created(nats_server: str) -> None:
    state = read_progress(nats_server, "NOPE" + uuid.uuid4().hex[:6], "none")
    assert state is not None and not state.consumer_exists and not state.drained(0)
