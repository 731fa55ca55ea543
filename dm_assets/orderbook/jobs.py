"""The order-book job: the schedule's and the healing sensor's runs."""

from __future__ import annotations

from dagster import define_asset_job

from dm_assets.orderbook.assets import ORDERBOOK_KEY

orderbook_job = define_asset_job(
    "orderbook_job",
    selection=[ORDERBOOK_KEY],
    description="Rebuild a day's order book from the stored checkpoint (and, on the current day, take a REST depth "
    "snapshot first) per symbol.",
    tags={"dm/job": "orderbook"},
)
