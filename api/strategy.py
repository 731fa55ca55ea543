"""The operators' strategy: one validated YAML (or TOML) file every API process reloads live.

What operators tune without a restart: which datasets are cached and at which level (L1 in
process, L2 shared through Redis), their TTLs, the page and batch limits, and request rates per
token. ``DM_API_STRATEGY_FILE`` names the file; without it the built-in strategy reproduces the
``DM_API_CACHE_*`` environment settings, so nothing changes for a deployment that has none.

Reload: a :class:`StrategyWatcher` thread per process stats the path every
``DM_API_STRATEGY_POLL_S`` (1 s) and re-reads it when the file it resolves to changed (inode,
mtime, size) or its bytes hash differently. Polling, not inotify, because a Kubernetes ConfigMap
update swaps the ``..data`` symlink of the mounted directory: an inotify watch on the old file
sees nothing, while ``stat`` (which follows the symlinks) sees the new file at once.

A file that does not parse or validate keeps the previous strategy; the error is logged, counted
in ``/metrics`` and shown by ``/health/strategy`` and readiness (``last_reload``), so an operator
sees that the edit did not take.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from limits import RateLimitItem, parse_many
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from api.contract.filters import MAX_BATCH_OPERATIONS, MAX_BATCH_RECORDS
from api.params import MAX_LIMIT

log = logging.getLogger(__name__)

Level = Literal["off", "l1", "l2", "l1+l2"]
# Datasets the API caches "latest N" reads of. Candles and analytics carry a version in
# ``dataset_versions`` (bumped by their writers), which is what makes an L2 entry safe to
# share; the raw collections are written by the ingest service without one, so they are
# revalidated per process (L1) and never shared.
VERSIONED = ("candles", "analytics")
RAW = ("trades", "depth", "funding")
DATASETS = (*VERSIONED, *RAW)
TOKEN_ID_CHARS = 12


def token_id(token: str) -> str:
    """How the strategy file names a token: the first 12 hex digits of its SHA-256, never the token."""
    return hashlib.sha256(token.encode()).hexdigest()[:TOKEN_ID_CHARS]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetCache(_Strict):
    level: Level = "l1+l2"
    l1_ttl_s: float = Field(60.0, gt=0, le=86_400, description="in-process entry lifetime (a safety net)")
    l2_ttl_s: float = Field(300.0, gt=0, le=86_400, description="shared entry lifetime in Redis")

    @property
    def l1(self) -> bool:
        return self.level in ("l1", "l1+l2")

    @property
    def l2(self) -> bool:
        return self.level in ("l2", "l1+l2")


class Limits(_Strict):
    page_max: int = Field(MAX_LIMIT, ge=1, le=MAX_LIMIT, description="largest `limit` a read accepts")
    batch_records_max: int = Field(MAX_BATCH_RECORDS, ge=1, le=MAX_BATCH_RECORDS)
    batch_operations_max: int = Field(MAX_BATCH_OPERATIONS, ge=1, le=MAX_BATCH_OPERATIONS)


def _check_rate(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        parse_many(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a rate such as '100/second' or '5000 per minute'") from None
    return value


class RateLimits(_Strict):
    """Requests per token, in the ``limits`` notation ("100/second", "10 per 1 second; 1000/hour")."""

    default: str | None = Field(None, description="each token not listed below; None: unlimited")
    anonymous: str | None = Field(None, description="requests without a token, per client address")
    tokens: dict[str, str] = Field(default_factory=dict, description="token id (token_id()) → rate")

    @field_validator("default", "anonymous")
    @classmethod
    def _rate(cls, v: str | None) -> str | None:
        return _check_rate(v)

    @field_validator("tokens")
    @classmethod
    def _tokens(cls, v: dict[str, str]) -> dict[str, str]:
        for tid, rate in v.items():
            if len(tid) != TOKEN_ID_CHARS or any(c not in "0123456789abcdef" for c in tid):
                raise ValueError(
                    f"token id {tid[:20]!r} must be the first {TOKEN_ID_CHARS} hex digits of the token's SHA-256 "
                    "(python -m api.strategy token-id), never the token itself"
                )
            _check_rate(rate)
        return v

    def items_for(self, tid: str | None) -> list[RateLimitItem]:
        rate = self.anonymous if tid is None else self.tokens.get(tid, self.default)
        return [] if rate is None else list(parse_many(rate))


class Strategy(_Strict):
    """The whole file. ``version`` is the operator's label, shown in /metrics and /health."""

    version: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:+-]+$")
    cache: dict[str, DatasetCache] = Field(default_factory=dict, validate_default=True)
    limits: Limits = Field(default_factory=Limits)
    rate_limits: RateLimits = Field(default_factory=RateLimits)

    @field_validator("cache")
    @classmethod
    def _datasets(cls, v: dict[str, DatasetCache]) -> dict[str, DatasetCache]:
        unknown = sorted(set(v) - set(DATASETS))
        if unknown:
            raise ValueError(f"unknown datasets {unknown}; known: {', '.join(DATASETS)}")
        for name, c in v.items():
            if name in RAW and c.l2:
                raise ValueError(
                    f"{name}: level {c.level!r} needs a dataset version to share entries safely; raw collections "
                    "(written by the ingest service without one) take 'off' or 'l1'"
                )
        # Datasets the file does not name keep the built-in default of their kind.
        return {d: v.get(d) or DatasetCache(level="l1+l2" if d in VERSIONED else "l1") for d in DATASETS}

    def cache_for(self, dataset: str) -> DatasetCache:
        return self.cache[dataset]


def builtin(*, enabled: bool = True, ttl_s: float = 5.0, notified_ttl_s: float = 60.0) -> Strategy:
    """The strategy without a file: the ``DM_API_CACHE_*`` settings, as the API behaved before the file."""
    versioned = DatasetCache(level="l1+l2" if enabled else "off", l1_ttl_s=max(ttl_s, notified_ttl_s))
    raw = DatasetCache(level="l1" if enabled else "off", l1_ttl_s=ttl_s)
    return Strategy(version="builtin", cache={d: versioned if d in VERSIONED else raw for d in DATASETS})


def parse_strategy(data: bytes, name: str) -> Strategy:
    """Parse (YAML, or TOML when the file name ends in .toml) and validate; raises ValueError naming the problem."""
    try:
        raw = tomllib.loads(data.decode()) if name.endswith(".toml") else yaml.safe_load(data)
    except (yaml.YAMLError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{name}: not valid {'TOML' if name.endswith('.toml') else 'YAML'}: {exc}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{name}: the strategy must be a mapping with at least 'version'")
    try:
        return Strategy.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(file)'}: {e['msg']}" for e in exc.errors(include_url=False)
        )
        raise ValueError(f"{name}: {problems}") from None


@dataclass
class ReloadResult:
    result: Literal["ok", "invalid", "unreadable", "builtin"]
    at: float
    error: str | None = None


@dataclass
class StrategyHolder:
    """The active strategy of this process; swapped whole (readers never see a half-applied file)."""

    strategy: Strategy
    source: str = "builtin"
    digest: str = "builtin"
    loaded_at: float = field(default_factory=time.time)
    last: ReloadResult = field(default_factory=lambda: ReloadResult("builtin", time.time()))
    listeners: list[Callable[[Strategy, Strategy], None]] = field(default_factory=list)

    def apply(self, new: Strategy, source: str, digest: str) -> None:
        old = self.strategy
        self.strategy, self.source, self.digest, self.loaded_at = new, source, digest, time.time()
        self.last = ReloadResult("ok", self.loaded_at)
        for fn in self.listeners:
            fn(old, new)

    def status(self) -> dict[str, Any]:
        return {
            "version": self.strategy.version,
            "digest": self.digest,
            "source": self.source,
            "loaded_at": self.loaded_at,
            "last_reload": {"result": self.last.result, "at": self.last.at, "error": self.last.error},
        }


class StrategyWatcher:
    """Polls the strategy file and applies each valid change to ``holder``; keeps the old one on errors."""

    def __init__(
        self,
        holder: StrategyHolder,
        path: str | os.PathLike[str],
        *,
        poll_s: float = 1.0,
        on_result: Callable[[ReloadResult], None] | None = None,
    ) -> None:
        self.holder = holder
        self.path = Path(path)
        self.poll_s = poll_s
        self.on_result = on_result
        self._stat: tuple[int, int, int, int] | None = None
        self._digest: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self) -> ReloadResult | None:
        """One poll: None when the file did not change, else the result of reading it."""
        try:
            st = os.stat(self.path)  # follows symlinks: a ConfigMap swap shows as a new inode
            sig = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
            if sig == self._stat:
                return None
            data = self.path.read_bytes()
        except OSError as exc:
            if self._stat is None and self._digest is not None:
                return None  # already reported missing
            self._stat, self._digest = None, "missing"
            return self._report(ReloadResult("unreadable", time.time(), f"{self.path}: {exc.strerror or exc}"))
        self._stat = sig
        digest = hashlib.sha256(data).hexdigest()[:12]
        if digest == self._digest:
            return None
        self._digest = digest
        try:
            new = parse_strategy(data, self.path.name)
        except ValueError as exc:
            return self._report(ReloadResult("invalid", time.time(), str(exc)))
        self.holder.apply(new, str(self.path), digest)
        log.info("strategy %s (%s) from %s is active", new.version, digest, self.path)
        return self._report(self.holder.last)

    def _report(self, res: ReloadResult) -> ReloadResult:
        if res.result != "ok":
            log.error("strategy file not applied, keeping version %s: %s", self.holder.strategy.version, res.error)
            self.holder.last = res
        if self.on_result is not None:
            self.on_result(res)
        return res

    def start(self) -> StrategyWatcher:
        if self._thread is None:
            self.check()
            self._thread = threading.Thread(target=self._run, name="strategy-watcher", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.check()
            except Exception:  # the watcher must outlive any surprise; the next poll retries
                log.exception("strategy watcher poll failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    close = stop


def main(argv: list[str] | None = None) -> int:
    """``python -m api.strategy check FILE`` validates a file; ``token-id`` prints a token's id (reads stdin)."""
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["check"] and len(args) == 2:
        try:
            s = parse_strategy(Path(args[1]).read_bytes(), Path(args[1]).name)
        except (OSError, ValueError) as exc:
            print(f"invalid: {exc}", file=sys.stderr)
            return 1
        print(f"ok: version {s.version}")
        return 0
    if args[:1] == ["token-id"]:
        print(token_id(sys.stdin.readline().strip()))
        return 0
    print("usage: python -m api.strategy check FILE | token-id < token", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
