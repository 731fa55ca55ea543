"""Candles domain: 1m…1d candle assets and their checks, the jobs, the audit schedule, the gap and
symbol-discovery sensors."""

from dagster import Definitions

from dm_assets.candles.assets import CANDLE_ASSETS, CANDLE_SOURCE_SPECS
from dm_assets.candles.jobs import audit_job, candles_job
from dm_assets.candles.schedules import audit_schedule
from dm_assets.candles.sensors import gap_sensor, symbol_discovery_sensor

defs = Definitions(
    assets=[*CANDLE_SOURCE_SPECS, *CANDLE_ASSETS],
    jobs=[candles_job, audit_job],
    schedules=[audit_schedule],
    sensors=[symbol_discovery_sensor, gap_sensor],
)
