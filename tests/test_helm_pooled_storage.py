"""deploy/helm/pooled_storage.py: the Helm chart's Dagster instance on the pooled PostgreSQL storage.

No helm binary here, so the input is the chart's instance ConfigMap as its template
(``helm/dagster/templates/configmap-instance.yaml`` and ``helpers/instance/_postgresql.tpl``,
chart 1.13) renders it with ``deploy/helm/dagster-values.yaml``, beside another manifest. The
post-renderer runs as Helm runs it (manifests on stdin, a process of its own); the instance it
writes is then opened against PostgreSQL and must keep its connection.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy.engine import make_url

from tests.test_dagster_defs import _connections_for_lookups

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "deploy" / "helm" / "pooled_storage.py"


def chart_instance(pg: dict[str, Any]) -> dict[str, Any]:
    """The chart's instance config for our values (the parts the post-renderer reads or must keep)."""
    values = yaml.safe_load((ROOT / "deploy" / "helm" / "dagster-values.yaml").read_text())
    storage = {"config": {"postgres_db": pg}}
    return {
        "scheduler": {"module": "dagster.core.scheduler", "class": "DagsterDaemonScheduler"},
        "schedule_storage": {
            "module": "dagster_postgres.schedule_storage",
            "class": "PostgresScheduleStorage",
            **storage,
        },
        "run_launcher": {
            "module": "dagster_k8s",
            "class": "K8sRunLauncher",
            "config": {"job_namespace": "market-data"},
        },
        "run_storage": {"module": "dagster_postgres.run_storage", "class": "PostgresRunStorage", **storage},
        "event_log_storage": {"module": "dagster_postgres.event_log", "class": "PostgresEventLogStorage", **storage},
        "run_coordinator": values["dagsterDaemon"]["runCoordinator"]["config"]["customRunCoordinator"],
        "telemetry": {"enabled": False},
    }


def manifests(instance: dict[str, Any] | None) -> str:
    docs: list[dict[str, Any]] = [{"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "dagster"}}]
    if instance is not None:
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "dagster-instance", "labels": {"app": "dagster"}},
                "data": {"dagster.yaml": yaml.safe_dump(instance, sort_keys=False)},
            }
        )
    return "---\n" + "\n---\n".join(yaml.safe_dump(d, sort_keys=False) for d in docs)


def post_render(text: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT)], input=text, capture_output=True, text=True, timeout=60)


PG = {
    "username": "dagster",
    "password": {"env": "DAGSTER_PG_PASSWORD"},
    "hostname": "postgresql.postgresql.svc.cluster.local",
    "db_name": "dagster",
    "port": 5432,
    "params": {},
}


def test_the_chart_instance_gets_the_pooled_storage_and_keeps_the_rest() -> None:
    out = post_render(manifests(chart_instance(PG)))
    assert out.returncode == 0, out.stderr
    docs = list(yaml.safe_load_all(out.stdout))
    assert [d["kind"] for d in docs] == ["ServiceAccount", "ConfigMap"]
    instance = yaml.safe_load(docs[1]["data"]["dagster.yaml"])
    assert instance["storage"] == {
        "custom": {
            "module": "dm_resources.dagster_storage",
            "class": "PooledPostgresStorage",
            "config": {"postgres_db": PG},
        }
    }
    assert not {"run_storage", "event_log_storage", "schedule_storage"} & set(instance)
    kept = {k: v for k, v in chart_instance(PG).items() if not k.endswith("_storage")}
    assert {k: instance[k] for k in kept} == kept  # the coordinator, launcher, scheduler untouched
    again = post_render(out.stdout)  # helm may render through it twice (upgrade diff): unchanged
    assert again.returncode == 0 and list(yaml.safe_load_all(again.stdout)) == docs


@pytest.mark.parametrize(
    ("instance", "reason"),
    [
        (None, "no Dagster instance ConfigMap"),
        (
            {**chart_instance(PG), "run_storage": {"module": "dagster_mysql", "class": "MySQLRunStorage"}},
            "run_storage is",
        ),
        (
            {**chart_instance(PG), "event_log_storage": {**chart_instance(PG)["event_log_storage"], "config": {}}},
            "do not share one PostgreSQL configuration",
        ),
        ({k: v for k, v in chart_instance(PG).items() if k != "schedule_storage"}, "no schedule_storage"),
    ],
)
def test_an_instance_it_does_not_know_fails_the_render(instance: dict[str, Any] | None, reason: str) -> None:
    """Refused loudly (Helm stops) rather than deploying dagster-postgres's per-query connections quietly."""
    out = post_render(manifests(instance))
    assert out.returncode == 1 and not out.stdout
    assert reason in out.stderr, out.stderr


def test_the_rendered_instance_keeps_its_postgres_connection(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = make_url(postgres_url)
    pg = {
        "username": url.username,
        "password": {"env": "DAGSTER_PG_PASSWORD"},
        "hostname": url.host,
        "db_name": url.database,
        "port": url.port or 5432,
        "params": {},
    }
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", url.password or "")
    out = post_render(manifests(chart_instance(pg)))
    assert out.returncode == 0, out.stderr
    instance = yaml.safe_load(list(yaml.safe_load_all(out.stdout))[1]["data"]["dagster.yaml"])
    storage_only = yaml.safe_dump({"storage": instance["storage"], "telemetry": {"enabled": False}})
    assert _connections_for_lookups(storage_only, tmp_path / "helm", 20) == 1  # the chart's own: one per query
