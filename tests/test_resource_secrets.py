"""The Dagster UI shows every resource's config: no URL or password may be resolved into it."""

from __future__ import annotations

import importlib
import sys

import pytest
from dagster import build_resources
from dagster._core.remote_representation.external_data import RepositorySnap  # what the UI is served
from dagster._serdes import serialize_value

SECRET = "s3cr3t-Pa55"
ENV = {
    "DM_MONGO_URL": f"mongodb://ingest:{SECRET}@mongo.internal:27017/?authSource=admin",
    "DM_METADATA_URL": f"mysql+pymysql://meta:{SECRET}@mysql.internal:3306/market",
    "DM_BINANCE_REST_URL": f"https://proxy.internal/{SECRET}/binance",
    "DM_MONGO_DB": "market_data",
}


def _snapshot_of_loaded_defs() -> tuple[str, object]:
    sys.modules.pop("dm_assets.definitions", None)
    mod = importlib.import_module("dm_assets.definitions")
    repo = mod.defs.get_repository_def()
    return serialize_value(RepositorySnap.from_def(repo)), mod.defs


def test_no_configured_secret_in_the_ui(monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    from dm_resources.settings import get_settings

    get_settings.cache_clear()
    try:
        snap, defs = _snapshot_of_loaded_defs()
        assert SECRET not in snap
        assert "mongo.internal" not in snap and "mysql.internal" not in snap
        # The UI names the variables instead, and a run resolves them to the real values.
        assert "DM_MONGO_URL" in snap and "DM_METADATA_URL" in snap
        with build_resources({"mongo": defs.resources["mongo"], "metadata": defs.resources["metadata"]}) as res:
            assert res.mongo.url == ENV["DM_MONGO_URL"]
            assert res.metadata.url == ENV["DM_METADATA_URL"]
    finally:
        get_settings.cache_clear()
        sys.modules.pop("dm_assets.definitions", None)


def test_unset_variables_fall_back_to_settings_at_run_time(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ENV:
        monkeypatch.delenv(k, raising=False)
    from dm_resources.resources import ResourceSet

    res = ResourceSet()
    assert res.mongo.url is None and res.metadata.url is None and res.binance.base_url is None
