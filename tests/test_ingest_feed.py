"""Replay CLI, generator CLI and the websocket bridge, against a real nats-server.

The bridge talks to a local websockets server that behaves like Binance's combined
stream endpoint (path ``/stream?streams=...``, server pings, a dropped connection).
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import uuid
from pathlib import Path

import nats
import orjson
from websockets.asyncio.server import ServerConnection, serve

from dm_resources.embedded import free_port
from ingest_service.feed import backoff_delay, combined_urls, run_feed, stream_names
from ingest_service.generator import main as generator_main

ROOT = Path(__file__).resolve().parent.parent


async def _stream_messages(nats_url: str, stream: str) -> list[bytes]:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    info = await js.stream_info(stream)
    out = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        out.append((await js.get_msg(stream, seq)).data)
    await nc.close()
    return out


def test_generator_and_replay_cli_publish_every_line(nats_server: str, tmp_path: Path) -> None:
    path = tmp_path / "session.jsonl"
    assert generator_main([str(path), "--symbols", "BTCUSDT,ETHUSDT", "--minutes", "1", "--bad", "5"]) == 0
    lines = [line for line in path.read_bytes().split(b"\n") if line]
    assert len(lines) > 1000
    tag = uuid.uuid4().hex[:8]
    env = {**os.environ, "DM_NATS_URL": nats_server, "DM_NATS_SUBJECT": f"r{tag}.data", "DM_NATS_STREAM": f"R{tag}"}
    res = subprocess.run(
        [sys.executable, "-m", "ingest_service.replay", str(path), "--rate", "5000"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        timeout=120,
        check=True,
    )
    summary = orjson.loads(res.stdout.strip().splitlines()[-1])
    assert summary["published"] == len(lines)
    assert b"msg" in res.stderr  # the tqdm progress bar
    assert asyncio.run(_stream_messages(nats_server, f"R{tag}")) == lines


def test_stream_urls_and_backoff() -> None:
    names = stream_names(["BTCUSDT", "ethusdt"], ["aggTrade", "markPrice@1s"])
    assert names == ["btcusdt@aggTrade", "btcusdt@markPrice@1s", "ethusdt@aggTrade", "ethusdt@markPrice@1s"]
    urls = combined_urls("wss://fstream.binance.com/", names, per_connection=3)
    assert urls == [
        "wss://fstream.binance.com/stream?streams=btcusdt@aggTrade/btcusdt@markPrice@1s/ethusdt@aggTrade",
        "wss://fstream.binance.com/stream?streams=ethusdt@markPrice@1s",
    ]
    rng = random.Random(0)
    delays = [backoff_delay(a, base=0.5, cap=30, rng=rng) for a in range(40)]
    assert all(0 <= d <= 30 for d in delays) and max(delays[:3]) <= 2


def test_feed_forwards_envelopes_and_reconnects(nats_server: str) -> None:
    tag = uuid.uuid4().hex[:8]
    subject, stream = f"f{tag}.data", f"F{tag}"
    msgs = [
        orjson.dumps({"stream": "btcusdt@aggTrade", "data": {"e": "aggTrade", "a": i}}).decode() for i in range(300)
    ]
    paths: list[str] = []

    async def handler(ws: ServerConnection) -> None:
        paths.append(ws.request.path if ws.request else "")
        if len(paths) == 1:
            for m in msgs[:120]:
                await ws.send(m)
            ws.transport.abort()  # the exchange drops us without a close frame
            return
        for m in msgs[120:]:
            await ws.send(m)
        await ws.wait_closed()

    async def scenario() -> tuple[int, list[bytes]]:
        port = free_port()
        # The server pings every 0.2 s and drops a client that does not answer within 0.5 s.
        async with serve(handler, "127.0.0.1", port, ping_interval=0.2, ping_timeout=0.5):
            stop = asyncio.Event()
            url = combined_urls(f"ws://127.0.0.1:{port}", stream_names(["BTCUSDT"], ["aggTrade", "bookTicker"]))
            task = asyncio.create_task(run_feed(nats_server, subject, stream, url, stop, backoff_cap=0.5))
            for _ in range(200):
                await asyncio.sleep(0.1)
                with_msgs = await _count(nats_server, stream)
                if with_msgs >= len(msgs):
                    break
            await asyncio.sleep(1.5)  # several server pings answered: the connection must survive them
            stop.set()
            stats = await asyncio.wait_for(task, 10)
        return stats.connections, await _stream_messages(nats_server, stream)

    connections, stored = asyncio.run(scenario())
    assert connections == 2
    assert paths[0] == "/stream?streams=btcusdt@aggTrade/btcusdt@bookTicker"
    assert stored == [m.encode() for m in msgs]


async def _count(nats_url: str, stream: str) -> int:
    nc = await nats.connect(nats_url)
    try:
        return (await nc.jetstream().stream_info(stream)).state.messages
    except nats.js.errors.NotFoundError:
        return 0
    finally:
        await nc.close()
