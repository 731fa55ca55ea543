"""Publish a recorded session (JSON lines of combined-stream envelopes) to NATS JetStream.

Lines are published byte for byte, not parsed: a recording with a broken line is
replayed with the broken line, which the ingest service dead-letters — exactly as
if the exchange bridge had produced it. Every publish is confirmed by JetStream
(async publish acks, a bounded window in flight), so "published" means "in the stream".

    python -m ingest_service.replay session.jsonl [--rate 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import orjson
from tqdm import tqdm

from dm_resources.settings import SettingsError, load_settings
from ingest_service.config import IngestSettings
from ingest_service.service import NatsUnreachableError, connect_nats, ensure_stream


def read_lines(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        for line in fh:
            line = line.rstrip(b"\r\n")
            if line.strip():
                yield line


def count_lines(path: Path) -> int:
    return sum(1 for _ in read_lines(path))


async def publish_lines(
    nats_url: str,
    subject: str,
    stream: str,
    lines: Iterable[bytes],
    *,
    rate: float = 0.0,
    total: int | None = None,
    progress: bool = True,
    window: int = 2000,
    ensure: bool = True,
) -> int:
    """Publish ``lines`` (optionally paced at ``rate`` msg/s); return how many JetStream confirmed."""
    nc = await connect_nats(nats_url, "dm-replay", attempts=5)
    js = nc.jetstream(timeout=10, publish_async_max_pending=window)
    sent = 0
    try:
        if ensure:
            await ensure_stream(js, stream, subject, IngestSettings())
        bar = tqdm(total=total, unit="msg", disable=not progress, file=sys.stderr, mininterval=0.5)
        futures: list[asyncio.Future] = []
        t0 = time.monotonic()
        for line in lines:
            if rate > 0 and sent % 50 == 0:
                ahead = t0 + sent / rate - time.monotonic()
                if ahead > 0:
                    await asyncio.sleep(ahead)
            futures.append(await js.publish_async(subject, line, wait_stall=30))
            sent += 1
            if len(futures) >= window:
                await asyncio.gather(*futures)
                bar.update(len(futures))
                futures.clear()
        if futures:
            await asyncio.gather(*futures)
            bar.update(len(futures))
        bar.close()
        return sent
    finally:
        with contextlib.suppress(Exception):
            await nc.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ingest_service.replay", description=__doc__.split("\n\n")[0])
    ap.add_argument("file", type=Path)
    ap.add_argument("--rate", type=float, default=0.0, help="messages per second (0 = as fast as possible)")
    ap.add_argument("--nats-url", default=None, help="default: DM_NATS_URL")
    ap.add_argument("--subject", default=None, help="default: DM_NATS_SUBJECT")
    ap.add_argument("--stream", default=None, help="default: DM_NATS_STREAM")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"replay: {exc}", file=sys.stderr)
        return 2
    if not args.file.exists():
        print(f"replay: {args.file} not found", file=sys.stderr)
        return 2
    total = count_lines(args.file)
    t0 = time.perf_counter()
    try:
        sent = asyncio.run(
            publish_lines(
                args.nats_url or settings.nats_url,
                args.subject or settings.nats_subject,
                args.stream or settings.nats_stream,
                read_lines(args.file),
                rate=args.rate,
                total=total,
                progress=not args.no_progress,
            )
        )
    except NatsUnreachableError as exc:  # bounded: 5 attempts, then one line
        print(f"replay: {exc}", file=sys.stderr)
        return 1
    elapsed = time.perf_counter() - t0
    print(
        orjson.dumps(
            {
                "published": sent,
                "seconds": round(elapsed, 3),
                "rate_msg_s": round(sent / elapsed, 1) if elapsed else None,
            }
        ).decode()
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
