"""Funding domain: settled funding-rate history from REST, partitioned like the candles."""

from dagster import Definitions

from dm_assets.funding.assets import FUNDING_ASSETS

defs = Definitions(assets=FUNDING_ASSETS)
