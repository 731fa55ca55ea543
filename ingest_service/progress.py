"""How far the ingest service got, read from the bus rather than from the store.

The ingest service acks a message only after every document it produced is written, so
"the durable consumer has nothing pending and nothing awaiting an ack, and its ack floor
reached the stream's last sequence" means "everything published is stored". Asking NATS
that costs the store nothing. Polling ``count_documents`` instead stalls SecantusDB (it is
single-threaded and counts by scanning): one count every 0.2 s halved an ingest's
throughput here. Tests, benches and the demo wait with :func:`wait_drained`, then look at
the store once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import nats
from nats.js.errors import NotFoundError


@dataclass(frozen=True)
class ConsumerProgress:
    """One reading of a stream and its durable consumer."""

    stream_last_seq: int
    stream_messages: int
    consumer_exists: bool
    delivered_seq: int = 0
    ack_floor_seq: int = 0
    num_pending: int = 0
    num_ack_pending: int = 0
    num_redelivered: int = 0

    def drained(self, min_last_seq: int = 0) -> bool:
        """Every message up to the stream's end (and at least ``min_last_seq``) is acked."""
        return (
            self.consumer_exists
            and self.stream_last_seq >= min_last_seq
            and self.num_pending == 0
            and self.num_ack_pending == 0
            and self.ack_floor_seq >= self.stream_last_seq
        )

    def describe(self) -> str:
        if not self.consumer_exists:
            return f"stream last_seq={self.stream_last_seq}, durable consumer not created yet"
        return (
            f"stream last_seq={self.stream_last_seq} messages={self.stream_messages}; consumer "
            f"delivered={self.delivered_seq} ack_floor={self.ack_floor_seq} pending={self.num_pending} "
            f"ack_pending={self.num_ack_pending} redelivered={self.num_redelivered}"
        )


async def consumer_progress(nats_url: str, stream: str, durable: str) -> ConsumerProgress:
    """Read the stream's and the durable consumer's state (one short connection)."""
    nc = await nats.connect(nats_url, connect_timeout=5, allow_reconnect=False, max_reconnect_attempts=0)
    try:
        js = nc.jetstream(timeout=5)
        try:
            sinfo = await js.stream_info(stream)
        except NotFoundError:
            return ConsumerProgress(stream_last_seq=0, stream_messages=0, consumer_exists=False)
        last_seq = sinfo.state.last_seq or 0
        messages = sinfo.state.messages or 0
        try:
            cinfo = await js.consumer_info(stream, durable)
        except NotFoundError:
            return ConsumerProgress(stream_last_seq=last_seq, stream_messages=messages, consumer_exists=False)
        return ConsumerProgress(
            stream_last_seq=last_seq,
            stream_messages=messages,
            consumer_exists=True,
            delivered_seq=cinfo.delivered.stream_seq if cinfo.delivered else 0,
            ack_floor_seq=cinfo.ack_floor.stream_seq if cinfo.ack_floor else 0,
            num_pending=cinfo.num_pending or 0,
            num_ack_pending=cinfo.num_ack_pending or 0,
            num_redelivered=cinfo.num_redelivered or 0,
        )
    finally:
        await nc.close()


def read_progress(nats_url: str, stream: str, durable: str) -> ConsumerProgress | None:
    """:func:`consumer_progress` from synchronous code; ``None`` while NATS is unreachable."""
    try:
        return asyncio.run(consumer_progress(nats_url, stream, durable))
    except (OSError, TimeoutError, nats.errors.Error):
        return None


def drain_budget_s(messages: int, *, floor_msg_per_s: float = 400.0, base_s: float = 60.0) -> float:
    """A timeout that grows with the work: ``base_s`` plus ``messages`` at a pessimistic rate.

    400 msg/s is ~10× below what one ingest process sustains on SecantusDB here, so the
    budget is only exhausted by a real stall, not by a loaded machine.
    """
    return base_s + messages / floor_msg_per_s


class NotDrainedError(AssertionError):
    """Raised by :func:`wait_drained` with the last consumer state (and caller's context)."""


def wait_drained(
    nats_url: str,
    stream: str,
    durable: str,
    *,
    min_last_seq: int,
    timeout: float,
    poll_s: float = 0.5,
    alive: Callable[[], str | None] | None = None,
    context: Callable[[], str] | None = None,
) -> ConsumerProgress:
    """Wait until the consumer acked every message up to ``min_last_seq`` (or the stream's end).

    ``alive`` returns a reason when the process doing the work died (stop waiting at once);
    ``context`` adds what the caller can tell on failure (store counts, logs): it is called
    once, only when the wait failed.
    """
    deadline = time.monotonic() + timeout
    last: ConsumerProgress | None = None
    while True:
        last = read_progress(nats_url, stream, durable) or last
        if last is not None and last.drained(min_last_seq):
            return last
        dead = alive() if alive else None
        if dead or time.monotonic() >= deadline:
            state = last.describe() if last else "NATS unreachable"
            why = dead or f"timed out after {timeout:.0f}s"
            extra = f"\n{context()}" if context else ""
            raise NotDrainedError(f"{why} waiting for {min_last_seq} messages to be acked: {state}{extra}")
        time.sleep(poll_s)
