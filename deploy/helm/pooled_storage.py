"""Helm post-renderer: the chart's Dagster instance on our pooled PostgreSQL storage.

Dagster's chart writes the instance config (``<release>-dagster-instance`` ConfigMap, read by the
webserver, the daemon and every run pod) with ``run_storage``, ``event_log_storage`` and
``schedule_storage`` fixed to dagster-postgres's classes, which open a PostgreSQL connection per
query (~450 for one bulk candle run; +33 % run time measured with ``bench/bench_history.py``).
The chart has no value to change them, and ``additionalInstanceConfig`` cannot add a ``storage:``
beside them (Dagster refuses both forms at once). So this post-renderer replaces the three with
the one ``storage:`` that ``dagster.yaml`` names, ``dm_resources.dagster_storage.PooledPostgresStorage``,
keeping the chart's own connection settings (``postgres_db``: host, user, the password from
``DAGSTER_PG_PASSWORD``, params).

It refuses, and so fails the Helm command, rather than deploying the stock storage quietly: when
no instance ConfigMap is in the rendered manifests, or its storages are not the chart's three
dagster-postgres ones with one shared configuration.

    helm upgrade --install dagster dagster/dagster --version 1.13.0 -n market-data \\
      -f deploy/helm/dagster-values.yaml \\
      --post-renderer .venv/bin/python --post-renderer-args deploy/helm/pooled_storage.py
"""

from __future__ import annotations

import sys
from typing import Any

import yaml

STORAGE_KEYS = ("run_storage", "event_log_storage", "schedule_storage")
CHART_CLASSES = {
    "run_storage": ("dagster_postgres.run_storage", "PostgresRunStorage"),
    "event_log_storage": ("dagster_postgres.event_log", "PostgresEventLogStorage"),
    "schedule_storage": ("dagster_postgres.schedule_storage", "PostgresScheduleStorage"),
}
POOLED = {"module": "dm_resources.dagster_storage", "class": "PooledPostgresStorage"}


class RenderError(ValueError):
    """The rendered chart is not what this post-renderer knows how to change."""


def pooled_instance(instance: dict[str, Any]) -> dict[str, Any]:
    """The instance config with the chart's three dagster-postgres storages as one pooled ``storage``."""
    if instance.get("storage", {}).get("custom", {}).get("class") == POOLED["class"]:
        return instance  # rendered through here already
    configs = []
    for key in STORAGE_KEYS:
        block = instance.get(key)
        if not isinstance(block, dict):
            raise RenderError(f"the instance config has no {key}")
        if (block.get("module"), block.get("class")) != CHART_CLASSES[key]:
            raise RenderError(
                f"{key} is {block.get('module')}.{block.get('class')}, not the chart's dagster-postgres one"
            )
        configs.append(block.get("config"))
    if any(c != configs[0] for c in configs) or not isinstance(configs[0], dict):
        raise RenderError("the three storages do not share one PostgreSQL configuration")
    out = {k: v for k, v in instance.items() if k not in STORAGE_KEYS}
    out["storage"] = {"custom": {**POOLED, "config": configs[0]}}
    return out


def render(manifests: str) -> str:
    """The rendered manifests with every Dagster instance ConfigMap on the pooled storage."""
    docs = [d for d in yaml.safe_load_all(manifests) if d is not None]  # "---" between templates leaves empties
    changed = 0
    for doc in docs:
        if not isinstance(doc, dict) or doc.get("kind") != "ConfigMap":
            continue
        data = doc.get("data") or {}
        if "dagster.yaml" not in data or not doc.get("metadata", {}).get("name", "").endswith("-instance"):
            continue
        data["dagster.yaml"] = yaml.safe_dump(pooled_instance(yaml.safe_load(data["dagster.yaml"])), sort_keys=False)
        changed += 1
    if not changed:
        raise RenderError("no Dagster instance ConfigMap (<release>-dagster-instance) in the rendered manifests")
    return yaml.safe_dump_all(docs, sort_keys=False)


def main() -> int:
    try:
        sys.stdout.write(render(sys.stdin.read()))
    except (RenderError, yaml.YAMLError) as exc:
        print(f"pooled_storage post-renderer: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
