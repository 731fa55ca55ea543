"""Order-book domain: top-N books rebuilt from REST snapshots and stored depth diffs, on a schedule."""

from dagster import Definitions

from dm_assets.orderbook.assets import ORDERBOOK_ASSETS, orderbook_job, orderbook_schedule

defs = Definitions(assets=ORDERBOOK_ASSETS, jobs=[orderbook_job], schedules=[orderbook_schedule])
