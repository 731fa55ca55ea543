"""Order-book domain: top-N books rebuilt from REST snapshots and stored depth diffs, on a schedule, with a
sensor that heals past days while stored snapshots still can."""

from dagster import Definitions

from dm_assets.orderbook.assets import ORDERBOOK_ASSETS
from dm_assets.orderbook.jobs import orderbook_job
from dm_assets.orderbook.schedules import orderbook_schedule
from dm_assets.orderbook.sensors import orderbook_heal_sensor
from dm_assets.policy import with_domain_policy
from dm_resources.contracts import ORDERBOOK_GROUP

defs = with_domain_policy(
    Definitions(
        assets=ORDERBOOK_ASSETS,
        jobs=[orderbook_job],
        schedules=[orderbook_schedule],
        sensors=[orderbook_heal_sensor],
    ),
    layer=ORDERBOOK_GROUP,
    kinds={"mongodb"},
)
