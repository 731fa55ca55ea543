"""Dagster's PostgreSQL instance storage, holding its connections instead of opening one per query.

``dagster-postgres`` builds its run, event-log and schedule storages on SQLAlchemy's ``NullPool``:
every query opens a PostgreSQL connection (a TCP handshake, authentication and a backend process
forked by the server) and closes it. Only the webserver switches to a pool. A run worker of a
bulk candle run made ~450 such connections (each event write, each dynamic-partition lookup,
each check evaluation): 1.6 s of a 182-partition run, and ``bench/bench_history.py``'s 1,820
partitions took 64.2 s instead of 48.4 s, on a local server; more against a managed PostgreSQL
over TLS.

:class:`PooledPostgresStorage` is the same storage with a small pool per storage (``pool_size``
1, ``max_overflow`` for the threads of the daemon), ``pool_pre_ping`` (a connection the server
dropped is replaced, not failed on) and ``pool_recycle``. Trade-off: each process holds up to
three idle connections (run, event log, schedule) for its lifetime, so PostgreSQL's
``max_connections`` must cover ~3 × (concurrent runs + daemon + webserver replicas). The webserver
still applies its own pool and statement timeout (``optimize_for_webserver``).

Configured in ``dagster.yaml``::

    storage:
      custom:
        module: dm_resources.dagster_storage
        class: PooledPostgresStorage
        config:
          postgres_url: {env: DAGSTER_PG_URL}

Dagster's Helm chart writes its own instance config with dagster-postgres's three storages and no
value to change them; ``deploy/helm/pooled_storage.py`` (a Helm post-renderer) names this storage
there, with the chart's ``postgres_db`` settings (``from_config_value`` takes either form).
"""

from __future__ import annotations

from typing import Any

from dagster._serdes import ConfigurableClassData
from dagster_postgres import DagsterPostgresStorage
from dagster_postgres.utils import create_pg_engine, get_token_provider_from_config, pg_url_from_config

#: Seconds after which a pooled connection is replaced (below common server/proxy idle timeouts).
POOL_RECYCLE_S = 600
#: Connections a storage may open beyond its one pooled connection (the daemon's threads).
POOL_MAX_OVERFLOW = 8


class PooledPostgresStorage(DagsterPostgresStorage):
    """:class:`dagster_postgres.DagsterPostgresStorage` whose three storages keep their connections."""

    def __init__(
        self,
        postgres_url: str,
        should_autocreate_tables: bool = True,
        inst_data: ConfigurableClassData | None = None,
        token_provider: Any = None,
    ) -> None:
        super().__init__(postgres_url, should_autocreate_tables, inst_data=inst_data, token_provider=token_provider)
        for storage in (self._run_storage, self._event_log_storage, self._schedule_storage):
            old = storage._engine
            kwargs: dict[str, Any] = {
                "isolation_level": "AUTOCOMMIT",
                "pool_size": 1,
                "max_overflow": POOL_MAX_OVERFLOW,
                "pool_recycle": POOL_RECYCLE_S,
                "pool_pre_ping": True,
            }
            options = old.url.query.get("options")
            if options:
                kwargs["connect_args"] = {"options": options}
            storage._engine = create_pg_engine(postgres_url, token_provider, **kwargs)
            old.dispose()

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData | None, config_value: Any) -> PooledPostgresStorage:
        return cls(
            inst_data=inst_data,
            postgres_url=pg_url_from_config(config_value),
            should_autocreate_tables=config_value.get("should_autocreate_tables", True),
            token_provider=get_token_provider_from_config(config_value),
        )
