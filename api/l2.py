"""The L2 cache: serialized responses shared by every API process through Redis (or Valkey, DragonflyDB).

Reads go L1 (the process's :class:`~api.cache.HotCache`) → L2 → store. An L2 entry is keyed by
the *version* of the dataset it was read from (``dataset_versions``, bumped by the writers), so
a bump makes every older entry unreachable at once, in every process: nothing is deleted, nothing
stale can be read, and old entries age out by their TTL. The version is read before the store
read that fills an entry, so an entry never holds data older than its key says.

Cross-process single flight: on an L2 miss one process claims the key (``SET NX`` with a short
expiry) and reads the store; the others wait up to ``wait_s`` for its entry instead of all reading
the store at once after every bump (with 4 workers: 1 store read per key and version, not 4).

Redis being down or slow never fails a read. Every command has a short socket timeout
(``DM_API_L2_TIMEOUT_MS``, 50 ms); a failure opens a circuit for ``retry_s`` (doubling up to
``max_retry_s``) during which L2 is skipped without touching the network, and the first command
after it is the probe: when Redis answers again, L2 is back, without a restart.
"""

from __future__ import annotations

import hashlib
import logging
import struct
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

log = logging.getLogger(__name__)

_NEWEST = struct.Struct(">q")  # the newest time in the entry's rows, -1 for none
_NONE = -1


def entry_key(prefix: str, tag: str, version: int, key: Hashable) -> str:
    """``{prefix}{tag}@{version}:{digest of the route's key}``: a bump changes every key of the dataset."""
    digest = hashlib.blake2b(repr(key).encode(), digest_size=12).hexdigest()
    return f"{prefix}{tag}@{version}:{digest}"


def encode(body: bytes, newest: int | None) -> bytes:
    return _NEWEST.pack(_NONE if newest is None else int(newest)) + body


def decode(raw: bytes) -> tuple[bytes, int | None]:
    (newest,) = _NEWEST.unpack_from(raw)
    return raw[_NEWEST.size :], (None if newest == _NONE else newest)


class L2Cache:
    def __init__(
        self,
        url: str,
        *,
        prefix: str = "dm:l2:",
        timeout_s: float = 0.05,
        retry_s: float = 0.5,
        max_retry_s: float = 5.0,
        wait_s: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.prefix = prefix
        self.timeout_s = timeout_s
        self.retry_s = retry_s
        self.max_retry_s = max_retry_s
        self.wait_s = wait_s
        self._clock = clock
        # No client-side retries: one attempt within the timeout, then the store answers.
        self.client = redis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
            retry_on_timeout=False,
            health_check_interval=0,
        )
        self._lock = threading.Lock()
        self._open_until = 0.0
        self._backoff = retry_s
        self.last_error: str | None = None
        self.errors = 0
        self.skipped = 0

    # -- circuit ---------------------------------------------------------------------------------
    @property
    def up(self) -> bool:
        """False while the circuit is open (the last command failed and the retry time has not come)."""
        return self.last_error is None

    def _usable(self) -> bool:
        with self._lock:
            if self._clock() < self._open_until:
                self.skipped += 1
                return False
            return True

    def _ok(self) -> None:
        if self.last_error is not None:
            with self._lock:
                if self.last_error is not None:
                    log.warning("L2 cache is back")
                self.last_error, self._backoff = None, self.retry_s

    def _failed(self, exc: Exception) -> None:
        with self._lock:
            first = self.last_error is None
            self.errors += 1
            self.last_error = f"{type(exc).__name__}: {str(exc)[:200]}"
            self._open_until = self._clock() + self._backoff
            self._backoff = min(self._backoff * 2, self.max_retry_s)
        if first:
            log.warning("L2 cache unavailable, reads go to the store: %s", self.last_error)

    def _call(self, fn: Callable[[], Any]) -> tuple[bool, Any]:
        if not self._usable():
            return False, None
        try:
            out = fn()
        except (redis.RedisError, OSError) as exc:
            self._failed(exc)
            return False, None
        self._ok()
        return True, out

    # -- entries ---------------------------------------------------------------------------------
    def get(self, tag: str, version: int, key: Hashable) -> tuple[bytes, int | None] | None:
        ok, raw = self._call(lambda: self.client.get(entry_key(self.prefix, tag, version, key)))
        return decode(raw) if ok and raw is not None else None

    def set(self, tag: str, version: int, key: Hashable, body: bytes, newest: int | None, ttl_s: float) -> bool:
        k = entry_key(self.prefix, tag, version, key)
        ok, _ = self._call(lambda: self.client.set(k, encode(body, newest), px=max(1, int(ttl_s * 1000))))
        if ok:
            self._call(lambda: self.client.delete(k + ":fill"))
        return ok

    def claim(self, tag: str, version: int, key: Hashable, hold_s: float = 5.0) -> bool:
        """True when this process should read the store for the key (it won the claim, or Redis is unusable)."""
        k = entry_key(self.prefix, tag, version, key) + ":fill"
        ok, won = self._call(lambda: self.client.set(k, b"1", nx=True, px=int(hold_s * 1000)))
        return not ok or bool(won)

    def wait(self, tag: str, version: int, key: Hashable, step_s: float = 0.01) -> tuple[bytes, int | None] | None:
        """Another process is filling the key: its entry, or None after ``wait_s`` (then read the store)."""
        deadline = self._clock() + self.wait_s
        while self._clock() < deadline:
            time.sleep(step_s)
            got = self.get(tag, version, key)
            if got is not None or not self.up:
                return got
            step_s = min(step_s * 2, 0.05)
        return None

    def ping(self) -> bool:
        """Readiness: one PING now, whatever the circuit says (it also closes the circuit when Redis is back)."""
        try:
            ok = bool(self.client.ping())
        except (redis.RedisError, OSError) as exc:
            self._failed(exc)
            raise
        self._ok()
        return ok

    def close(self) -> None:
        self.client.close()
