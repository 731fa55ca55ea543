"""A loopback HTTP/1.1 proxy that loses answers and resets connections, on purpose.

For each request it reads from a client it decides, with a seeded random generator:

* ``reset`` (probability ``reset_rate``): the connection is reset (RST) before the request
  is forwarded — the server never sees it;
* ``drop`` (``drop_rate``): the request is forwarded, the server's whole answer is read (the
  write committed), and the client's connection is closed without it — the lost response a
  retry must not turn into a second write;
* otherwise the answer is relayed and the connection kept alive for the next request.

Each request goes upstream on a connection of its own (``Connection: close``), so the proxy
needs only enough HTTP to find where a request and a response end (``Content-Length`` or
chunked). Counts of what it did are in :attr:`ChaosProxy.stats`.
"""

from __future__ import annotations

import random
import socket
import struct
import threading
from collections import Counter
from types import TracebackType
from typing import Self


def _read_until(sock: socket.socket, buf: bytearray, marker: bytes) -> int:
    while (i := buf.find(marker)) < 0:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return i


def _read_exact(sock: socket.socket, buf: bytearray, n: int) -> None:
    while len(buf) < n:
        chunk = sock.recv(max(65536, n - len(buf)))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk


def read_message(sock: socket.socket, buf: bytearray) -> bytes:
    """One whole HTTP/1.1 message from ``sock`` (``buf`` holds bytes read past the previous one)."""
    end = _read_until(sock, buf, b"\r\n\r\n") + 4
    head = bytes(buf[:end]).lower()
    length = 0
    chunked = b"transfer-encoding: chunked" in head
    for line in head.split(b"\r\n"):
        if line.startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    if not chunked:
        _read_exact(sock, buf, end + length)
        message = bytes(buf[: end + length])
        del buf[: end + length]
        return message
    pos = end
    while True:
        line_end = _read_until_from(sock, buf, pos)
        size = int(bytes(buf[pos:line_end]).split(b";")[0], 16)
        pos = line_end + 2 + size + 2
        _read_exact(sock, buf, pos)
        if size == 0:
            message = bytes(buf[:pos])
            del buf[:pos]
            return message


def _read_until_from(sock: socket.socket, buf: bytearray, start: int) -> int:
    while (i := buf.find(b"\r\n", start)) < 0:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return i


def _close_upstream_after(request: bytes) -> bytes:
    head, sep, body = request.partition(b"\r\n\r\n")
    lines = [ln for ln in head.split(b"\r\n") if not ln.lower().startswith(b"connection:")]
    return b"\r\n".join([*lines, b"Connection: close"]) + sep + body


def _reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class ChaosProxy:
    def __init__(self, upstream: str, *, drop_rate: float = 0.10, reset_rate: float = 0.05, seed: int = 20) -> None:
        host, port = upstream.removeprefix("http://").split(":")
        self.upstream = (host, int(port))
        self.drop_rate = drop_rate
        self.reset_rate = reset_rate
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.stats: Counter[str] = Counter()
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(128)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> Self:
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.listener.close()

    def _decide(self) -> str:
        with self.lock:
            r = self.rng.random()
        if r < self.reset_rate:
            return "reset"
        if r < self.reset_rate + self.drop_rate:
            return "drop"
        return "relay"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        buf = bytearray()
        try:
            while True:
                try:
                    request = read_message(client, buf)
                except (ConnectionError, OSError):
                    client.close()
                    return
                action = self._decide()
                with self.lock:
                    self.stats["requests"] += 1
                    self.stats[action] += 1
                if action == "reset":
                    _reset(client)
                    return
                with socket.create_connection(self.upstream, timeout=60) as up:
                    up.sendall(_close_upstream_after(request))
                    response = read_message(up, bytearray())
                if action == "drop":  # the server answered (and committed); the client never hears it
                    client.close()
                    return
                client.sendall(response)
        except OSError:
            client.close()


__all__ = ["ChaosProxy", "read_message"]
