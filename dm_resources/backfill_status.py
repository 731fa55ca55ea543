"""The one mapping from Dagster's backfill and run statuses to ``backfill_jobs.status``.

Used by the API (GraphQL strings) and by the tracking sensor (``BulkActionStatus`` /
``DagsterRunStatus`` values, which are the same strings), so both report the same status
for the same backfill. Plain strings: the API does not import Dagster.
"""

from __future__ import annotations

from collections.abc import Iterable

from dm_resources.metadata.schemas import BackfillOrigin, BackfillStatus

# DagsterRunStatus → our vocabulary (dm_resources.metadata.schemas.BackfillStatus).
RUN_STATUS: dict[str, BackfillStatus] = {
    "QUEUED": "queued",
    "NOT_STARTED": "queued",
    "MANAGED": "queued",
    "STARTING": "running",
    "STARTED": "running",
    "SUCCESS": "success",
    "FAILURE": "failure",
    "CANCELING": "canceled",
    "CANCELED": "canceled",
}


def _name(status: object) -> str:
    """An enum member or its string value → the string value."""
    return str(getattr(status, "value", status))


def run_status(status: object) -> BackfillStatus:
    """Our status of one Dagster run; an unknown (newer) Dagster status counts as running."""
    return RUN_STATUS.get(_name(status), "running")


def backfill_status(status: object, run_statuses: Iterable[object]) -> BackfillStatus:
    """Our status of a backfill from Dagster's backfill status and its runs' Dagster statuses.

    Dagster marks a backfill COMPLETED once it has *requested* every run, while runs may
    still be queued or running: that is ``running`` here until the last run ends.
    """
    s = _name(status)
    runs = [run_status(r) for r in run_statuses]
    if s in ("CANCELED", "CANCELING"):
        return "canceled"
    if s in ("COMPLETED_FAILED", "FAILED", "FAILING"):
        return "partial" if "success" in runs else "failure"
    if s in ("COMPLETED", "COMPLETED_SUCCESS"):
        if any(r in ("queued", "running") for r in runs):
            return "running"
        return "failure" if "failure" in runs else "success"
    return "running" if runs else "requested"


def run_group_status(run_statuses: Iterable[object]) -> BackfillStatus:
    """Our status of a backfill that is a group of runs launched directly (``POST /backfill/start``)."""
    runs = [run_status(r) for r in run_statuses]
    if not runs:
        return "requested"
    if any(r in ("queued", "running") for r in runs):
        return "running"
    if all(r == "success" for r in runs):
        return "success"
    if "failure" in runs:
        return "partial" if "success" in runs else "failure"
    return "canceled"


ORIGINS: tuple[BackfillOrigin, ...] = ("api", "ui", "sensor", "schedule")


def origin_of(tag: str | None) -> BackfillOrigin:
    """The ``dm/origin`` tag of a backfill or run as a known origin; anything else was started in the UI."""
    for o in ORIGINS:
        if tag == o:
            return o
    return "ui"
