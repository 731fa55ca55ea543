"""Backfill planning and Dagster status mapping: plain functions, plus the GraphQL calls the client lacks.

``POST /backfill/start`` launches its runs *directly* through Dagster's GraphQL API (``launchRun``
with a partition range per run), not as a Dagster partition backfill:

* **No 30 s wait.** A Dagster backfill is picked up by the backfill daemon, which sleeps 30 s
  between iterations; a small backfill waited longer for it than it took to run. A launched run
  goes straight into the run queue, dequeued within a second (``dequeue_interval_seconds: 1``).
* **Many partitions per run.** The daemon splits a date × dynamic-symbol selection into ranges
  that fix one dimension (10 days × 3 symbols: 3 runs; 1 day × 400 symbols: 400 runs). A run may
  carry a rectangle of both: :func:`plan_runs` packs the request into rectangles of up to
  ``DM_BACKFILL_PARTITIONS_PER_RUN`` partitions (one symbol's days when the range is long, several
  symbols' days when it is short), so run start-up and Dagster's per-run work are paid rarely.
* **Still Dagster's runs.** They obey the run queue (and its per-symbol locks: runs over disjoint
  symbols run side by side, runs sharing a symbol one after the other; the ``dm/symbol`` label is
  the symbol or the range, ``BTCUSDT..SOLUSDT``), show in the UI (filter Runs by the tag
  ``dm/backfill=<id>``), and their materializations mark the partitions like any backfill's.
  ``backfill_jobs`` holds one row per request (id ``runs:<uuid>``) listing the run ids; its status
  comes from the runs (:func:`dm_resources.backfill_status.run_group_status`), live on
  ``GET /backfill/jobs/{id}`` and kept in step by the tracking sensor.

Backfills launched from the UI's "Materialize…" dialog stay Dagster backfills (the daemon splits
them by ``BACKFILL_POLICY``); the tracking sensor mirrors them under their Dagster backfill id.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from api.params import ParamError
from dm_resources.backfill_status import backfill_status, run_group_status, run_status
from dm_resources.contracts import BACKFILL_ASSET_PATHS, SYMBOL_DIM, SYMBOLS_PARTITIONS_NAME, candle_asset_path
from dm_resources.dagster_client import DagsterAPIError, DagsterGraphQL
from dm_resources.run_coordinator import RANGE_END_TAG, RANGE_START_TAG, SYMBOL_TAG, range_label

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
__all__ = ["backfill_status", "run_group_status", "run_status"]

#: The tag grouping the runs of one ``POST /backfill/start`` (value: the job id).
BACKFILL_TAG = "dm/backfill"
ASSET_JOB = "__ASSET_JOB"  # Dagster's implicit job over every asset; a run selects its assets


#: Symbols one run may cover: a short, wide request (1 day × 400 symbols) becomes several runs that
#: the queue runs side by side instead of one process doing all of it, and a run holds one
#: ``dm/lock.<SYMBOL>`` tag per symbol (the UI lists them), so their number stays readable.
MAX_SYMBOLS_PER_RUN = 50


@dataclass(frozen=True)
class RunPlan:
    """One run: consecutive ``days`` × ``symbols`` (contiguous in Dagster's order of the symbol partitions)."""

    days: tuple[str, ...]
    symbols: tuple[str, ...]

    @property
    def partitions(self) -> int:
        return len(self.days) * len(self.symbols)

    def partition_keys(self) -> list[str]:
        return [f"{d}|{s}" for d in self.days for s in self.symbols]

    def tags(self) -> dict[str, str]:
        """Dagster's range tags (a multi-partition range is the product of its two dimensions' ranges)."""
        return {
            RANGE_START_TAG: f"{self.days[0]}|{self.symbols[0]}",
            RANGE_END_TAG: f"{self.days[-1]}|{self.symbols[-1]}",
            SYMBOL_TAG: self.symbols[0] if len(self.symbols) == 1 else range_label(self.symbols[0], self.symbols[-1]),
        }


def _balanced(items: Sequence[str], size: int) -> list[tuple[str, ...]]:
    """``items`` in consecutive chunks of at most ``size``, as even as possible (182 by 100: 91 + 91)."""
    n = -(-len(items) // max(1, size))
    base, extra = divmod(len(items), n)
    out, at = [], 0
    for k in range(n):
        width = base + (1 if k < extra else 0)
        out.append(tuple(items[at : at + width]))
        at += width
    return out


def plan_runs(days: Sequence[str], symbols: Sequence[str], order: Sequence[str], per_run: int) -> list[RunPlan]:
    """Rectangles of at most ``per_run`` partitions covering ``days`` × ``symbols`` exactly.

    ``order`` is Dagster's order of the symbol partitions: a run's symbol range must not take in a
    symbol that was not asked for, so symbols are grouped where they are adjacent in it. When all
    the days fit in a run, adjacent symbols share runs (``per_run // len(days)`` at most, and at most
    :data:`MAX_SYMBOLS_PER_RUN`, spread evenly: 10 symbols × 182 days by 1,000 is two runs of five
    symbols), else each symbol's days
    are split evenly into runs. Runs over disjoint symbols run side by side (the queue's per-symbol
    locks, :mod:`dm_resources.run_coordinator`). ``per_run`` 0: one run per group of adjacent symbols.
    """
    wanted = set(symbols)
    pos = {s: i for i, s in enumerate(order)}
    missing = sorted(wanted - set(pos))
    if missing:
        raise ValueError(f"symbols not in Dagster's symbol partitions: {missing}")
    ordered = sorted(wanted, key=lambda s: pos[s])
    groups: list[list[str]] = []
    for s in ordered:
        if groups and pos[groups[-1][-1]] + 1 == pos[s]:
            groups[-1].append(s)
        else:
            groups.append([s])
    limit = per_run if per_run > 0 else len(days) * len(ordered)
    plans: list[RunPlan] = []
    for group in groups:
        if len(days) > limit:
            for sym in group:
                plans.extend(RunPlan(chunk, (sym,)) for chunk in _balanced(list(days), limit))
            continue
        width = min(limit // len(days), MAX_SYMBOLS_PER_RUN)
        plans.extend(RunPlan(tuple(days), chunk) for chunk in _balanced(group, width))
    return plans


SYMBOL_ORDER = """
query($path: [String!]!) { assetNodeOrError(assetKey: {path: $path}) { __typename
  ... on AssetNode { partitionKeysByDimension { name partitionKeys } } } }
"""


def symbol_order(gql: DagsterGraphQL) -> list[str]:
    """Dagster's order of the symbol partitions (the order a partition range follows)."""
    node = _call(gql, SYMBOL_ORDER, {"path": candle_asset_path("1m")})["assetNodeOrError"]
    if node.get("__typename") != "AssetNode":
        raise DagsterAPIError(f"no candle asset in Dagster: {node.get('__typename')}")
    for dim in node["partitionKeysByDimension"]:
        if dim["name"] == SYMBOL_DIM:
            return list(dim["partitionKeys"])
    raise DagsterAPIError("the candle asset has no symbol dimension")


RUNS_BY_TAG = """
query($key: String!, $value: String!) { runsOrError(filter: {tags: [{key: $key, value: $value}]}, limit: 10000) {
  __typename ... on Runs { results { runId status tags { key value } } } ... on PythonError { message } } }
"""


def group_runs(gql: DagsterGraphQL, job_id: str) -> list[dict[str, str]]:
    """The runs one ``POST /backfill/start`` launched (by their ``dm/backfill`` tag), with statuses."""
    res = _call(gql, RUNS_BY_TAG, {"key": BACKFILL_TAG, "value": job_id})["runsOrError"]
    if res.get("__typename") != "Runs":
        raise DagsterAPIError(f"runs of {job_id}: {res.get('message', res.get('__typename'))}")
    return [{"runId": r["runId"], "status": r["status"]} for r in res["results"]]


def launch_runs(
    gql: DagsterGraphQL, plans: Sequence[RunPlan], assets: Sequence[Sequence[str]], tags: dict[str, str]
) -> list[str]:
    """Launch one run per plan (into Dagster's run queue); returns the run ids in plan order."""

    local = threading.local()

    def one(plan: RunPlan) -> str:
        if len(plans) > 1 and not hasattr(local, "gql"):  # a GraphQL client per thread: they hold a session
            local.gql = DagsterGraphQL(gql.url, timeout=gql.timeout)
        client = local.gql if len(plans) > 1 else gql
        return client.launch_run(ASSET_JOB, asset_selection=[list(a) for a in assets], tags={**tags, **plan.tags()})

    if len(plans) <= 1:
        return [one(p) for p in plans]
    with ThreadPoolExecutor(max_workers=4, thread_name_prefix="launch") as pool:
        return list(pool.map(one, plans))


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
