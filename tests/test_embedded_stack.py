"""The embedded launcher starts only what is missing and leaves no process behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dm_resources.embedded import EmbeddedStack, free_port, is_listening
from dm_resources.settings import load_settings
from tests.conftest import MongoServer


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); read its state.
    state = Path(f"/proc/{pid}/stat").read_text().split()[2] if Path(f"/proc/{pid}").exists() else "X"
    return state not in {"Z", "X"}


def test_starts_missing_servers_and_stops_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.delenv("DAGSTER_PG_URL", raising=False)
    nats_port, mongo_port = free_port(), free_port()
    settings = load_settings(
        nats_url=f"nats://127.0.0.1:{nats_port}",
        mongo_url=f"mongodb://127.0.0.1:{mongo_port}/?directConnection=true",
        metadata_url=f"sqlite:///{tmp_path / 'meta.db'}",
    )
    stack = EmbeddedStack(settings, tmp_path / "var").up()
    try:
        assert [p.name for p in stack.started] == ["nats-server", "secantusdb"]
        assert is_listening("127.0.0.1", nats_port) and is_listening("127.0.0.1", mongo_port)
        assert stack.env["DAGSTER_HOME"] == str(tmp_path / "var" / "dagster_home")
        instance = (tmp_path / "var" / "dagster_home" / "dagster.yaml").read_text()
        assert "storage" not in instance and "SymbolTaggingRunCoordinator" in instance  # SQLite, runs tagged
        text = stack.describe()
        assert "started nats-server" in text and "started SecantusDB" in text
        pids = [p.pid for p in stack.started]
    finally:
        stack.down()
    assert pids and all(pid is not None and not _pid_alive(pid) for pid in pids)
    assert not is_listening("127.0.0.1", nats_port)
    assert not is_listening("127.0.0.1", mongo_port)


def test_uses_reachable_servers_and_starts_nothing(
    tmp_path: Path, nats_server: str, mongo_server: MongoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dh"))
    settings = load_settings(
        nats_url=nats_server, mongo_url=mongo_server.url, metadata_url="mysql+pymysql://u:secret@db.internal/meta"
    )
    stack = EmbeddedStack(settings, tmp_path / "var").up()
    try:
        assert stack.started == []
        text = stack.describe()
        assert text.count("already running") == 2
        assert "secret" not in text  # passwords are not printed
        assert stack.env["DAGSTER_HOME"] == str(tmp_path / "dh")
    finally:
        stack.down()
