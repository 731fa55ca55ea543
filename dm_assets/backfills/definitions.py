"""Backfills domain: every backfill and sensor/schedule run mirrored into ``backfill_jobs``."""

from dagster import Definitions

from dm_assets.backfills.sensors import backfill_tracking_sensor

defs = Definitions(sensors=[backfill_tracking_sensor])
