"""The image's entry point (``deploy/entrypoint.sh``) run on the host the way the containers run
it: each role starts the real component, which answers on its real health endpoint."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
from sqlalchemy import create_engine, inspect

from dm_resources.embedded import free_port

ROOT = Path(__file__).resolve().parent.parent
ENTRYPOINT = ROOT / "deploy" / "entrypoint.sh"


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    home = tmp_path / "dagster_home"
    return {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "DM_APP_DIR": str(ROOT),
        "DM_BIND_HOST": "127.0.0.1",
        "DAGSTER_HOME": str(home),
        "DM_AUTOMATION": "false",
        **extra,
    }


@contextmanager
def _role(tmp_path: Path, role: str, env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    log = open(tmp_path / f"{role}.log", "wb")  # noqa: SIM115 - the child writes it
    proc = subprocess.Popen(["sh", str(ENTRYPOINT), role], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_ok(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 90) -> requests.Response:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            resp = requests.get(url, timeout=2)
            if resp.status_code == 200:
                return resp
        except requests.RequestException:
            pass
        time.sleep(0.3)
    pytest.fail(f"{url} not OK after {timeout} s: {log.read_text()[-2000:]}")


def test_migrate_role_creates_the_metadata_schema(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'meta.db'}"
    done = subprocess.run(
        ["sh", str(ENTRYPOINT), "migrate"],
        cwd=ROOT,
        env=_env(tmp_path, DM_METADATA_URL=url),
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    tables = set(inspect(create_engine(url)).get_table_names())
    assert {"datasets", "audit_logs", "backfill_jobs"} <= tables
    # The entry point gave Dagster a writable home with the image's instance config.
    assert (tmp_path / "dagster_home" / "dagster.yaml").read_text() == (ROOT / "dagster.yaml").read_text()


def test_api_role_serves_liveness(tmp_path: Path) -> None:
    port = free_port()
    env = _env(tmp_path, DM_API_PORT=str(port), DM_METADATA_URL=f"sqlite:///{tmp_path / 'meta.db'}")
    with _role(tmp_path, "api", env) as proc:
        resp = _wait_ok(f"http://127.0.0.1:{port}/health/liveness", proc, tmp_path / "api.log")
    assert resp.json()


def test_ingest_role_serves_liveness_and_readiness(tmp_path: Path, nats_server: str, mongo_url: str) -> None:
    port = free_port()
    tag = uuid.uuid4().hex[:8]
    env = _env(
        tmp_path,
        DM_NATS_URL=nats_server,
        DM_NATS_SUBJECT=f"entry{tag}.data",
        DM_NATS_STREAM=f"ENTRY{tag}",
        DM_NATS_DURABLE=f"entry{tag}",
        DM_MONGO_URL=mongo_url,
        DM_MONGO_DB=f"entry_{tag}",
        DM_INGEST_METRICS_PORT=str(port),
        DM_INGEST_METRICS_HOST="127.0.0.1",
    )
    with _role(tmp_path, "ingest", env) as proc:
        _wait_ok(f"http://127.0.0.1:{port}/health/liveness", proc, tmp_path / "ingest.log")
        _wait_ok(f"http://127.0.0.1:{port}/health/readiness", proc, tmp_path / "ingest.log")


def test_unknown_role_is_run_as_a_command(tmp_path: Path) -> None:
    """The Helm chart and run pods pass full commands (``dagster api ...``): they must run as given."""
    done = subprocess.run(
        ["sh", str(ENTRYPOINT), "python", "-c", "import os; print(os.environ['DAGSTER_HOME'])"],
        cwd=ROOT,
        env=_env(tmp_path),
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().strip() == str(tmp_path / "dagster_home")
