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
    from dm_resources.binance_archive import ArchiveClient
    from dm_resources.metadata.store import MetadataStore


class MongoResource(ConfigurableResource):
    """MongoDB time-series store (raw events, candles, analytics)."""

    url: str | None = None
    database: str | None = None
    # The store's own retries of transient errors; the candle step's RetryPolicy retries beyond them.
    retry_attempts: int = 5
    server_selection_timeout_ms: int = 5000

    _store: MongoStore | None = PrivateAttr(default=None)

    def get_store(self) -> MongoStore:
        if self._store is None:
            st = get_settings()
            store = MongoStore(
                self.url or st.mongo_url,
                self.database or st.mongo_db,
                retry_attempts=self.retry_attempts,
                server_selection_timeout_ms=self.server_selection_timeout_ms,
            )
            store.ensure_indexes()  # kept only once this succeeded: a retried step must not skip it
            self._store = store
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
    """Binance USD-M futures REST API, for gap fills and backfills, and Binance's public kline archive."""

    base_url: str | None = None
    weight_limit: int = 2400
    max_retries: int = 5
    # Empty string: no archive (history from REST only); None: DM_BINANCE_ARCHIVE_URL's default.
    archive_url: str | None = None

    _client: BinanceClient | None = PrivateAttr(default=None)
    _archive: ArchiveClient | None = PrivateAttr(default=None)

    def get_client(self, store: MongoStore | None = None) -> BinanceClient:
        """One client per process, so its weight count and any ban it saw carry across assets of a run.

        With ``store``, a 418 ban is shared through MongoDB with every other run on this IP.
        """
        if self._client is None:
            from dm_resources.binance import BinanceClient

            url = self.base_url or get_settings().binance_rest_url
            self._client = BinanceClient(url, weight_limit=self.weight_limit, max_retries=self.max_retries)
        if store is not None and self._client.ban_registry is None:
            from dm_resources.binance import MongoBanRegistry

            self._client.ban_registry = MongoBanRegistry(store, self._client.base_url)
        return self._client

    def get_archive(self) -> ArchiveClient | None:
        """The archive client, or None when the archive is switched off (``DM_BINANCE_ARCHIVE_URL=""``)."""
        url = self.archive_url if self.archive_url is not None else get_settings().binance_archive_url
        if not url:
            return None
        if self._archive is None:
            from dm_resources.binance_archive import ArchiveClient

            self._archive = ArchiveClient(url)
        return self._archive


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
        archive = (
            self.settings.binance_archive_url
            if self.settings is not None
            else (EnvVar("DM_BINANCE_ARCHIVE_URL") if "DM_BINANCE_ARCHIVE_URL" in os.environ else None)
        )
        return BinanceResource(base_url=self._value("DM_BINANCE_REST_URL", "binance_rest_url"), archive_url=archive)

    def as_dict(self) -> dict[str, ConfigurableResource]:
        return {"mongo": self.mongo, "metadata": self.metadata, "binance": self.binance}
