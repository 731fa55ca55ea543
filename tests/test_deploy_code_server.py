"""The code location served the production way: a real ``dagster code-server`` process,
loaded through ``deploy/workspace.grpc.yaml`` by an instance + workspace context exactly as
dagster-webserver and dagster-daemon load it, and queried through the webserver's GraphQL."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from dagster import DagsterInstance
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import WorkspaceFileTarget
from dagster._grpc.client import DagsterGrpcClient
from dagster_graphql.test.utils import execute_dagster_graphql

from dm_assets.definitions import build_defs
from dm_resources.embedded import free_port

ROOT = Path(__file__).resolve().parent.parent
WORKSPACE = ROOT / "deploy" / "workspace.grpc.yaml"
LOCATION = "market_data"

WORKSPACE_QUERY = """
query {
  workspaceOrError {
    __typename
    ... on Workspace {
      locationEntries {
        name
        locationOrLoadError {
          __typename
          ... on PythonError { message }
          ... on RepositoryLocation {
            repositories {
              sensors { name }
              schedules { name }
              assetNodes { assetKey { path } }
            }
          }
        }
      }
    }
  }
}
"""


@pytest.fixture(scope="module")
def code_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """``dagster code-server start`` through the image's entry point (``deploy/entrypoint.sh code-server``)."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("code_server") / "code_server.log"
    home = tmp_path_factory.mktemp("dagster_home")
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "DM_AUTOMATION": "false",
        "DM_APP_DIR": str(ROOT),
        "DM_BIND_HOST": "127.0.0.1",
        "DM_CODE_SERVER_PORT": str(port),
        "DAGSTER_HOME": str(home),
    }
    with open(log_path, "wb") as log:
        # The image's own entry point, so the command the containers run is the one tested.
        proc = subprocess.Popen(
            ["sh", str(ROOT / "deploy" / "entrypoint.sh"), "code-server"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        client = DagsterGrpcClient(port=port, host="127.0.0.1")
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"code server exited with {proc.returncode}: {log_path.read_text()[-2000:]}")
            try:
                client.ping("ready?")
                break
            except Exception:
                if time.monotonic() > deadline:
                    pytest.fail(f"code server not serving after 120 s: {log_path.read_text()[-2000:]}")
                time.sleep(0.5)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def workspace_env(monkeypatch: pytest.MonkeyPatch, code_server: int) -> int:
    monkeypatch.setenv("DM_CODE_SERVER_HOST", "127.0.0.1")
    monkeypatch.setenv("DM_CODE_SERVER_PORT", str(code_server))
    return code_server


def _expected() -> tuple[set[str], set[str], set[str]]:
    """What the in-process definitions declare: the served location must expose all of it."""
    defs = build_defs()
    repo = defs.get_repository_def()
    assets = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    sensors = {s.name for s in repo.sensor_defs}
    schedules = {s.name for s in repo.schedule_defs}
    return assets, sensors, schedules


def test_workspace_file_loads_the_grpc_code_server(workspace_env: int, instance: DagsterInstance) -> None:
    assets, sensors, schedules = _expected()
    with WorkspaceProcessContext(instance, WorkspaceFileTarget([str(WORKSPACE)])) as ctx:
        request = ctx.create_request_context()
        assert request.get_code_location_error(LOCATION) is None
        location = request.get_code_location(LOCATION)
        assert location.origin.port == workspace_env  # served from the process, not imported here
        (repo,) = location.get_repositories().values()
        served_assets = {node.asset_key.to_user_string() for node in repo.get_asset_node_snaps()}
        assert assets <= served_assets
        assert {s.name for s in repo.get_sensors()} == sensors
        assert {s.name for s in repo.get_schedules()} == schedules
        assert {"candles/candles_1m", "quality/health_scores"} <= served_assets
        assert {"gap_sensor", "symbol_discovery_sensor"} <= sensors
        assert "audit_schedule" in schedules


def test_webserver_graphql_lists_assets_sensors_schedules(workspace_env: int, instance: DagsterInstance) -> None:
    assets, sensors, schedules = _expected()
    with WorkspaceProcessContext(instance, WorkspaceFileTarget([str(WORKSPACE)])) as ctx:
        result = execute_dagster_graphql(ctx.create_request_context(), WORKSPACE_QUERY)
    assert not result.errors
    (entry,) = result.data["workspaceOrError"]["locationEntries"]
    assert entry["name"] == LOCATION
    loaded = entry["locationOrLoadError"]
    assert loaded["__typename"] == "RepositoryLocation", loaded
    (repo,) = loaded["repositories"]
    assert {"/".join(n["assetKey"]["path"]) for n in repo["assetNodes"]} >= assets
    assert {s["name"] for s in repo["sensors"]} == sensors
    assert {s["name"] for s in repo["schedules"]} == schedules


def test_unreachable_code_server_is_a_load_error(monkeypatch: pytest.MonkeyPatch, instance: DagsterInstance) -> None:
    """The same workspace file aimed at a port nobody serves must report a load error, not an empty location."""
    monkeypatch.setenv("DM_CODE_SERVER_HOST", "127.0.0.1")
    monkeypatch.setenv("DM_CODE_SERVER_PORT", str(free_port()))
    with (
        pytest.warns(UserWarning, match="Could not reach user code server"),
        WorkspaceProcessContext(instance, WorkspaceFileTarget([str(WORKSPACE)])) as ctx,
    ):
        request = ctx.create_request_context()
        assert request.get_code_location_error(LOCATION) is not None
        assert not request.has_code_location(LOCATION)


def _start_role(role: str, env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "wb") as log:
        command = ["sh", str(ROOT / "deploy" / "entrypoint.sh"), role]
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_webserver_and_daemon_roles_on_postgres(code_server: int, postgres_url: str, tmp_path: Path) -> None:
    """The compose topology in miniature: webserver and daemon from the entry point, instance in
    PostgreSQL through the image's dagster.yaml, code location from the running code server; the
    webserver's GraphQL lists the location and the daemon passes the compose liveness check."""
    port = free_port()
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "DM_AUTOMATION": "false",
        "DM_APP_DIR": str(ROOT),
        "DM_BIND_HOST": "127.0.0.1",
        "DM_CODE_SERVER_HOST": "127.0.0.1",
        "DM_CODE_SERVER_PORT": str(code_server),
        "DAGSTER_WEBSERVER_PORT": str(port),
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
        "DAGSTER_PG_URL": postgres_url,
    }
    webserver = _start_role("webserver", env, tmp_path / "webserver.log")
    daemon = _start_role("daemon", env, tmp_path / "daemon.log")
    try:
        deadline = time.monotonic() + 120
        data = None
        while data is None:
            for proc, name in ((webserver, "webserver"), (daemon, "daemon")):
                if proc.poll() is not None:
                    pytest.fail(f"{name} exited: {(tmp_path / f'{name}.log').read_text()[-2000:]}")
            try:
                resp = requests.post(f"http://127.0.0.1:{port}/graphql", json={"query": WORKSPACE_QUERY}, timeout=10)
                if resp.status_code == 200:
                    data = resp.json()["data"]
            except requests.RequestException:
                pass
            if data is None:
                assert time.monotonic() < deadline, (tmp_path / "webserver.log").read_text()[-2000:]
                time.sleep(1)
        (entry,) = data["workspaceOrError"]["locationEntries"]
        assert entry["locationOrLoadError"]["__typename"] == "RepositoryLocation", entry
        (repo,) = entry["locationOrLoadError"]["repositories"]
        assert "gap_sensor" in {s["name"] for s in repo["sensors"]}

        # The compose healthcheck of dagster-daemon: heartbeats of every daemon in PostgreSQL.
        while True:
            check = subprocess.run(
                [str(Path(sys.executable).parent / "dagster-daemon"), "liveness-check"],
                env=env,
                capture_output=True,
                timeout=60,
            )
            if check.returncode == 0:
                break
            assert daemon.poll() is None, (tmp_path / "daemon.log").read_text()[-2000:]
            assert time.monotonic() < deadline, check.stdout.decode() + check.stderr.decode()
            time.sleep(2)
    finally:
        _stop(webserver)
        _stop(daemon)
