"""The plain store/client classes exposed to Dagster as ``ConfigurableResource``s.

Each resource holds only configuration and builds the plain class lazily, once per
process: the same ``MongoStore``/``MetadataStore``/``BinanceClient`` the ingest service and
the API use.

Connection URLs carry credentials, and the Dagster UI shows every resource's config. So
the deployed definitions never hold a resolved URL: a variable set in the environment is
passed as ``EnvVar("DM_…")`` (the UI shows the variable's name, the run resolves it), and
one left unset stays ``None`` and is read from the settings (their defaults) at run time.
Only tests hand in literal URLs of their own throw-away servers.
"""

from __future__ import annotations

import os
from functools import cached_property
from typing import TYPE_CHECKING

from dagster import ConfigurableResource, EnvVar
from pydantic import PrivateAttr

from dm_resources.mongo import MongoStore
from dm_resources.settings import Settings, get_settings

if TYPE_CHECKING:
    from dm_resources.binance import BinanceClient
    from dm_resources.metadata.store import MetadataStore


class MongoResource(ConfigurableResource):
    """MongoDB time-series store (raw events, candles, analytics)."""

    url: str | None = None
    database: str | None = None

    _store: MongoStore | None = PrivateAttr(default=None)

    def get_store(self) -> MongoStore:
        if self._store is None:
            st = get_settings()
            self._store = MongoStore(self.url or st.mongo_url, self.database or st.mongo_db)
            self._store.ensure_indexes()
        return self._store

    def teardown_after_execution(self, context: object) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None


class MetadataResource(ConfigurableResource):
    """Metadata store (catalog, audit logs, health metrics, backfill jobs, lineage): MySQL or SQLite."""

    url: str | None = None

    _store: MetadataStore | None = PrivateAttr(default=None)

    def get_store(self) -> MetadataStore:
        if self._store is None:
            from dm_resources.metadata.store import MetadataStore

            self._store = MetadataStore(self.url or get_settings().metadata_url)
            self._store.migrate()
        return self._store

    def teardown_after_execution(self, context: object) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None


class BinanceResource(ConfigurableResource):
    """Binance USD-M futures REST API, for gap fills and backfills."""

    base_url: str | None = None
    weight_limit: int = 2400
    max_retries: int = 5

    _client: BinanceClient | None = PrivateAttr(default=None)

    def get_client(self) -> BinanceClient:
        """One client per process, so its weight count and any ban it saw carry across assets of a run."""
        if self._client is None:
            from dm_resources.binance import BinanceClient

            url = self.base_url or get_settings().binance_rest_url
            self._client = BinanceClient(url, weight_limit=self.weight_limit, max_retries=self.max_retries)
        return self._client


def _from_env(name: str) -> str | None:
    """``EnvVar(name)`` when the deployment sets it, else ``None`` (settings' default at run time)."""
    return EnvVar(name) if os.environ.get(name) else None


class ResourceSet:
    """Resources for a deployment: from the environment by reference, or from explicit settings (tests)."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings

    def _value(self, env: str, field: str) -> str | None:
        return getattr(self.settings, field) if self.settings is not None else _from_env(env)

    @cached_property
    def mongo(self) -> MongoResource:
        return MongoResource(
            url=self._value("DM_MONGO_URL", "mongo_url"), database=self._value("DM_MONGO_DB", "mongo_db")
        )

    @cached_property
    def metadata(self) -> MetadataResource:
        return MetadataResource(url=self._value("DM_METADATA_URL", "metadata_url"))

    @cached_property
    def binance(self) -> BinanceResource:
        return BinanceResource(base_url=self._value("DM_BINANCE_REST_URL", "binance_rest_url"))

    def as_dict(self) -> dict[str, ConfigurableResource]:
        return {"mongo": self.mongo, "metadata": self.metadata, "binance": self.binance}
