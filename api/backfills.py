"""Backfill planning and Dagster status mapping: plain functions, plus the GraphQL calls the client lacks.

Backfills go *through Dagster* (GraphQL) so the runs show in the UI, respect the run queue
and are mirrored into ``backfill_jobs`` by the tracking sensor. The row id is the Dagster
backfill id — the tracking sensor looks rows up by that id, so an API-created row under
any other id would be duplicated by the sensor.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from typing import Any

from api.params import ParamError
from dm_resources.backfill_status import backfill_status, run_status
from dm_resources.contracts import BACKFILL_ASSET_PATHS, SYMBOLS_PARTITIONS_NAME
from dm_resources.dagster_client import DagsterAPIError, DagsterGraphQL

BACKFILL_ASSETS: tuple[tuple[str, ...], ...] = tuple(tuple(p) for p in BACKFILL_ASSET_PATHS)

REPOSITORIES = """
query { repositoriesOrError { __typename
  ... on RepositoryConnection { nodes { name location { name } } }
  ... on PythonError { message } } }
"""

ADD_DYNAMIC_PARTITION = """
mutation($selector: RepositorySelector!, $name: String!, $key: String!) {
  addDynamicPartition(repositorySelector: $selector, partitionsDefName: $name, partitionKey: $key) {
    __typename
    ... on AddDynamicPartitionSuccess { partitionKey }
    ... on DuplicateDynamicPartitionError { partitionName }
    ... on PythonError { message }
    ... on UnauthorizedError { message }
  }
}
"""


def day_of(ms: int) -> dt.date:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).date()


def plan_partitions(
    pairs: Sequence[str], start_ms: int, end_ms: int, *, first_day: dt.date, today: dt.date, max_days: int
) -> list[str]:
    """``YYYY-MM-DD|SYMBOL`` keys for every UTC day touched by ``[start_ms, end_ms)`` × pairs.

    Days before the first partition or after today (the newest partition) do not exist in
    Dagster; asking for them is a client error named here rather than a GraphQL failure.
    """
    if start_ms >= end_ms:
        raise ParamError("start", "start must be before end; the range is [start, end)", where="body")
    d0, d1 = day_of(start_ms), day_of(end_ms - 1)
    if d0 < first_day:
        raise ParamError("start", f"{d0} is before the first partition {first_day} (DM_PARTITION_START)", where="body")
    if d1 > today:
        raise ParamError("end", f"{d1} is after today's partition {today} (UTC)", where="body")
    days = (d1 - d0).days + 1
    if days > max_days:
        raise ParamError("end", f"{days} days requested; at most {max_days} per backfill", where="body")
    out: list[str] = []
    for i in range(days):
        day = (d0 + dt.timedelta(days=i)).isoformat()
        out.extend(f"{day}|{p}" for p in pairs)
    return out


# The status mapping lives in dm_resources so the tracking sensor uses the very same function.
__all__ = ["backfill_status", "run_status"]


def _call(gql: DagsterGraphQL, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    return gql.call(query, variables)


def repository_selector(gql: DagsterGraphQL) -> dict[str, str]:
    result = _call(gql, REPOSITORIES)["repositoriesOrError"]
    if result["__typename"] != "RepositoryConnection" or not result["nodes"]:
        raise DagsterAPIError(f"no repository loaded in Dagster: {result.get('message', result['__typename'])}")
    node = result["nodes"][0]
    return {"repositoryLocationName": node["location"]["name"], "repositoryName": node["name"]}


def ensure_symbol_partitions(gql: DagsterGraphQL, symbols: Iterable[str]) -> list[str]:
    """Add the symbols to the dynamic partition set (already present is fine); returns those added.

    The symbol-discovery sensor does this for symbols seen in the data; a backfill for a
    configured symbol with no data yet must not wait for it.
    """
    selector = repository_selector(gql)
    added = []
    for sym in symbols:
        res = _call(gql, ADD_DYNAMIC_PARTITION, {"selector": selector, "name": SYMBOLS_PARTITIONS_NAME, "key": sym})[
            "addDynamicPartition"
        ]
        kind = res["__typename"]
        if kind == "AddDynamicPartitionSuccess":
            added.append(sym)
        elif kind != "DuplicateDynamicPartitionError":
            raise DagsterAPIError(f"could not add partition {sym}: {res.get('message', kind)}")
    return added
