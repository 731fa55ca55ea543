"""Bridge: Binance combined websocket streams → NATS JetStream, envelopes published byte for byte.

* One websocket per at most ``MAX_STREAMS_PER_CONNECTION`` streams (Binance futures
  refuses longer combined-stream URLs).
* Ping/pong: the exchange pings every few minutes and drops a client that does not
  answer; the ``websockets`` client answers pings itself and sends its own, so a dead
  TCP path is noticed within ``ping_interval + ping_timeout``.
* Reconnect with capped, jittered exponential backoff, reset once a connection has
  delivered data. Binance closes every connection after 24 h; that is just a reconnect.
  What the exchange sent while we were away is lost here; the candle assets fill such
  gaps from REST.
* Publishes are JetStream-confirmed (async, bounded window): a message counts as
  forwarded only once it is in the stream.

    python -m ingest_service.feed --symbols btcusdt,ethusdt
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import websockets
from nats.js import JetStreamContext
from websockets.asyncio.client import connect

from dm_resources.settings import SettingsError, load_settings
from ingest_service.config import IngestSettings
from ingest_service.metrics import setup_logging
from ingest_service.service import connect_nats, ensure_stream

log = logging.getLogger("ingest_service.feed")

DEFAULT_URL = "wss://fstream.binance.com"
DEFAULT_STREAMS = ("aggTrade", "kline_1m", "depth@100ms", "ticker", "bookTicker", "markPrice@1s")
MAX_STREAMS_PER_CONNECTION = 200


def stream_names(symbols: Sequence[str], streams: Sequence[str]) -> list[str]:
    """Binance stream names are lower case: ``btcusdt@aggTrade``."""
    return [f"{s.lower()}@{st}" for s in symbols for st in streams]


def combined_urls(base_url: str, names: Sequence[str], per_connection: int = MAX_STREAMS_PER_CONNECTION) -> list[str]:
    base = base_url.rstrip("/")
    return [
        f"{base}/stream?streams=" + "/".join(names[i : i + per_connection])
        for i in range(0, len(names), per_connection)
    ]


def backoff_delay(attempt: int, base: float = 0.5, cap: float = 30.0, rng: random.Random | None = None) -> float:
    """Full-jitter exponential backoff: many bridges restarting together do not reconnect in lockstep."""
    r = rng or random
    return r.uniform(0, min(cap, base * 2 ** min(attempt, 16)))


@dataclass
class FeedStats:
    received: int = 0
    published: int = 0
    connections: int = 0
    errors: list[str] = field(default_factory=list)


class Feed:
    def __init__(
        self,
        js: JetStreamContext,
        subject: str,
        urls: Sequence[str],
        *,
        ping_interval: float = 20.0,
        ping_timeout: float = 20.0,
        window: int = 1000,
        backoff_cap: float = 30.0,
    ) -> None:
        self.js = js
        self.subject = subject
        self.urls = list(urls)
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.window = window
        self.backoff_cap = backoff_cap
        self.stats = FeedStats()
        self._stop = asyncio.Event()
        self._pending: set[asyncio.Future] = set()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> FeedStats:
        tasks = [asyncio.create_task(self._connection(url)) for url in self.urls]
        await self._stop.wait()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._drain()
        return self.stats

    async def _connection(self, url: str) -> None:
        attempt = 0
        while not self._stop.is_set():
            try:
                async with connect(
                    url,
                    ping_interval=self.ping_interval,
                    ping_timeout=self.ping_timeout,
                    max_size=2**23,
                    open_timeout=10,
                    close_timeout=2,
                ) as ws:
                    self.stats.connections += 1
                    log.info("connected to %s", url.split("?")[0], extra={"event": "ws_connected"})
                    async for message in ws:
                        attempt = 0  # the connection works: the next failure starts backoff afresh
                        data = message.encode() if isinstance(message, str) else message
                        self.stats.received += 1
                        await self._publish(data)
            except asyncio.CancelledError:
                raise
            except (websockets.exceptions.WebSocketException, OSError, TimeoutError) as exc:
                self.stats.errors.append(repr(exc))
                log.warning("websocket lost (%r)", exc, extra={"event": "ws_lost"})
            if self._stop.is_set():
                return
            delay = backoff_delay(attempt, cap=self.backoff_cap)
            attempt += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)

    async def _publish(self, data: bytes) -> None:
        fut = await self.js.publish_async(self.subject, data, wait_stall=30)
        self._pending.add(fut)
        fut.add_done_callback(self._done)
        if len(self._pending) >= self.window:
            await self._drain()

    def _done(self, fut: asyncio.Future) -> None:
        self._pending.discard(fut)
        if fut.cancelled():
            return
        if fut.exception() is not None:
            self.stats.errors.append(repr(fut.exception()))
            log.error("publish not confirmed: %r", fut.exception())
        else:
            self.stats.published += 1

    async def _drain(self) -> None:
        if self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)


async def run_feed(
    nats_url: str, subject: str, stream: str, urls: Sequence[str], stop: asyncio.Event | None = None, **kw: Any
) -> FeedStats:
    nc = await connect_nats(nats_url, "dm-feed")
    try:
        js = nc.jetstream(timeout=10)
        await ensure_stream(js, stream, subject, IngestSettings())
        feed = Feed(js, subject, urls, **kw)
        relay = asyncio.create_task(_relay(stop, feed)) if stop is not None else None
        try:
            return await feed.run()
        finally:
            if relay is not None:
                relay.cancel()
    finally:
        with contextlib.suppress(Exception):
            await nc.close()


async def _relay(stop: asyncio.Event, feed: Feed) -> None:
    await stop.wait()
    feed.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ingest_service.feed", description=__doc__.split("\n\n")[0])
    ap.add_argument("--symbols", default=None, help="comma-separated (default: DM_SYMBOLS)")
    ap.add_argument("--streams", default=",".join(DEFAULT_STREAMS), help="per-symbol stream suffixes")
    ap.add_argument("--url", default=DEFAULT_URL, help="websocket base URL")
    args = ap.parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"feed: {exc}", file=sys.stderr)
        return 2
    ingest = IngestSettings()
    setup_logging(ingest.log_level, ingest.log_json)
    symbols = [s.strip() for s in args.symbols.split(",")] if args.symbols else settings.symbols
    urls = combined_urls(args.url, stream_names(symbols, [s.strip() for s in args.streams.split(",") if s.strip()]))

    async def _run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        stats = await run_feed(settings.nats_url, settings.nats_subject, settings.nats_stream, urls, stop)
        log.info(
            "feed stopped: %d received, %d published, %d connections",
            stats.received,
            stats.published,
            stats.connections,
        )

    asyncio.run(_run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
