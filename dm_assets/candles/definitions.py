"""Candles domain: 1m…1d candle assets and their checks, the jobs, the audit schedule, the gap and
symbol-discovery sensors. The candle assets share the domain's tag and kinds (``with_domain_policy``);
the archive's external spec keeps its own (it is upstream data, not a candle)."""

from dagster import Definitions

from dm_assets.candles.assets import CANDLE_ASSETS, CANDLE_SOURCE_SPECS
from dm_assets.candles.jobs import audit_job, candles_job
from dm_assets.candles.schedules import audit_schedule
from dm_assets.candles.sensors import gap_sensor, symbol_discovery_sensor
from dm_assets.policy import with_domain_policy
from dm_resources.contracts import CANDLES_GROUP

defs = Definitions.merge(
    with_domain_policy(
        Definitions(
            assets=CANDLE_ASSETS,
            jobs=[candles_job, audit_job],
            schedules=[audit_schedule],
            sensors=[symbol_discovery_sensor, gap_sensor],
        ),
        layer=CANDLES_GROUP,
        kinds={"mongodb", "pandas"},
    ),
    Definitions(assets=CANDLE_SOURCE_SPECS),
)
