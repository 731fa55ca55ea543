"""The plain store/client classes exposed to Dagster as ``ConfigurableResource``s.

Each resource holds only configuration (so it shows in the UI and can differ per
deployment) and builds the plain class lazily, once per process: the same
``MongoStore``/``MetadataStore``/``BinanceClient`` the ingest service and the API use.
"""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING

from dagster import ConfigurableResource
from pydantic import PrivateAttr

from dm_resources.mongo import MongoStore
from dm_resources.settings import Settings, get_settings

if TYPE_CHECKING:
    from dm_resources.binance import BinanceClient
    from dm_resources.metadata.store import MetadataStore


class MongoResource(ConfigurableResource):
    """MongoDB time-series store (raw events, candles, analytics)."""

    url: str
    database: str

    _store: MongoStore | None = PrivateAttr(default=None)

    def get_store(self) -> MongoStore:
        if self._store is None:
            self._store = MongoStore(self.url, self.database)
            self._store.ensure_indexes()
        return self._store

    def teardown_after_execution(self, context: object) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None


class MetadataResource(ConfigurableResource):
    """Metadata store (catalog, audit logs, health metrics, backfill jobs, lineage): MySQL or SQLite."""

    url: str

    _store: MetadataStore | None = PrivateAttr(default=None)

    def get_store(self) -> MetadataStore:
        if self._store is None:
            from dm_resources.metadata.store import MetadataStore

            self._store = MetadataStore(self.url)
            self._store.migrate()
        return self._store

    def teardown_after_execution(self, context: object) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None


class BinanceResource(ConfigurableResource):
    """Binance USD-M futures REST API, for gap fills and backfills."""

    base_url: str
    weight_limit: int = 2400
    max_retries: int = 5

    _client: BinanceClient | None = PrivateAttr(default=None)

    def get_client(self) -> BinanceClient:
        """One client per process, so its weight count and any ban it saw carry across assets of a run."""
        if self._client is None:
            from dm_resources.binance import BinanceClient

            self._client = BinanceClient(self.base_url, weight_limit=self.weight_limit, max_retries=self.max_retries)
        return self._client


class ResourceSet:
    """Resources for a deployment, built from settings (env) unless given explicitly."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()

    @cached_property
    def mongo(self) -> MongoResource:
        return MongoResource(url=self.settings.mongo_url, database=self.settings.mongo_db)

    @cached_property
    def metadata(self) -> MetadataResource:
        return MetadataResource(url=self.settings.metadata_url)

    @cached_property
    def binance(self) -> BinanceResource:
        return BinanceResource(base_url=self.settings.binance_rest_url)

    def as_dict(self) -> dict[str, ConfigurableResource]:
        return {"mongo": self.mongo, "metadata": self.metadata, "binance": self.binance}
