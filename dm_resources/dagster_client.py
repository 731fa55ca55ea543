"""Dagster's GraphQL API: launch partition backfills and runs, and follow them.

The API layer and the demo start backfills *through Dagster* (not by materializing
in-process) so that the runs appear in the UI, obey the run queue, and are tracked
into ``backfill_jobs`` like any other backfill.

Runs go through ``dagster_graphql.DagsterGraphQLClient`` (launch and status). It has no
partition-backfill mutation and no backfill query, so those two documents are sent here
over plain HTTP; everything else should use the library.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any
from urllib.parse import urlsplit

import requests
from dagster_graphql import DagsterGraphQLClient, DagsterGraphQLClientError

LAUNCH_BACKFILL = """
mutation($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
    ... on PartitionSetNotFoundError { message }
    ... on PartitionKeysNotFoundError { message }
    ... on UnauthorizedError { message }
    ... on InvalidStepError { invalidStepKey }
    ... on InvalidOutputError { invalidOutputName }
    ... on RunConflict { message }
  }
}
"""

BACKFILL_STATUS = """
query($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill {
      id status numPartitions timestamp endTimestamp
      runs(limit: 1000) { runId status }
      error { message }
    }
    ... on BackfillNotFoundError { message }
    ... on PythonError { message }
  }
}
"""

VERSION = "query { version }"

LOCATION = "market_data"  # workspace.yaml
REPOSITORY = "__repository__"  # the implicit repository of a Definitions object


class DagsterAPIError(RuntimeError):
    """Dagster answered, but not with what was asked for (the message says why)."""


@dataclass
class BackfillState:
    backfill_id: str
    status: str
    num_partitions: int | None
    runs: list[dict[str, str]] = field(default_factory=list)
    error: str | None = None
    started: float | None = None
    ended: float | None = None

    @property
    def done(self) -> bool:
        return self.status in {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}


class DagsterGraphQL:
    def __init__(self, url: str, *, timeout: float = 30.0, session: requests.Session | None = None) -> None:
        self.url = url
        self.timeout = timeout
        self.session = session or requests.Session()

    def call(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        """Run any GraphQL document; raises DagsterAPIError on HTTP or GraphQL errors."""
        return self._call(query, variables)

    def _call(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        resp = self.session.post(self.url, json={"query": query, "variables": variables or {}}, timeout=self.timeout)
        if resp.status_code != 200:
            raise DagsterAPIError(f"Dagster GraphQL HTTP {resp.status_code}: {resp.text[:300]}")
        body = resp.json()
        if body.get("errors"):
            raise DagsterAPIError("Dagster GraphQL error: " + "; ".join(e.get("message", "?") for e in body["errors"]))
        return body["data"]

    @cached_property
    def client(self) -> DagsterGraphQLClient:
        """The library's client for the same endpoint (``http(s)://host:port[/prefix]/graphql``)."""
        parts = urlsplit(self.url)
        prefix = parts.path.removesuffix("/graphql").rstrip("/")
        return DagsterGraphQLClient(
            parts.hostname or "127.0.0.1",
            port_number=parts.port,
            use_https=parts.scheme == "https",
            timeout=int(self.timeout),
            path_prefix=prefix,
        )

    def ping(self) -> bool:
        try:
            return bool(self._call(VERSION).get("version"))
        except (requests.RequestException, DagsterAPIError, ValueError):
            return False

    def launch_backfill(
        self,
        asset_keys: list[list[str]],
        partition_names: list[str],
        *,
        tags: dict[str, str] | None = None,
        title: str | None = None,
    ) -> str:
        params: dict[str, Any] = {
            "assetSelection": [{"path": k} for k in asset_keys],
            "partitionNames": partition_names,
            "tags": [{"key": k, "value": v} for k, v in (tags or {}).items()],
        }
        if title:
            params["title"] = title
        result = self._call(LAUNCH_BACKFILL, {"params": params})["launchPartitionBackfill"]
        if result["__typename"] != "LaunchBackfillSuccess":
            detail = result.get("message") or result
            raise DagsterAPIError(f"backfill not launched ({result['__typename']}): {detail}")
        return str(result["backfillId"])

    def launch_run(
        self,
        job_name: str,
        *,
        asset_selection: list[list[str]] | None = None,
        partition_key: str | None = None,
        run_config: dict[str, Any] | None = None,
        tags: dict[str, str] | None = None,
    ) -> str:
        """Launch one run of a job (optionally a subset of its assets, one partition); returns the run id."""
        all_tags = dict(tags or {})
        if partition_key is not None:
            all_tags["dagster/partition"] = partition_key
        try:
            return self.client.submit_job_execution(
                job_name,
                repository_location_name=LOCATION,
                repository_name=REPOSITORY,
                run_config=run_config or {},
                tags=all_tags,
                asset_selection=asset_selection,
            )
        except DagsterGraphQLClientError as exc:
            raise DagsterAPIError(f"run of {job_name} not launched: {exc}") from exc

    def run_status(self, run_id: str) -> str:
        try:
            return self.client.get_run_status(run_id).value
        except DagsterGraphQLClientError as exc:
            raise DagsterAPIError(f"run {run_id}: {exc}") from exc

    def wait_for_run(self, run_id: str, timeout: float = 600.0, poll: float = 1.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            status = self.run_status(run_id)
            if status in {"SUCCESS", "FAILURE", "CANCELED"}:
                return status
            if time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id} still {status} after {timeout:.0f}s")
            time.sleep(poll)

    def backfill(self, backfill_id: str) -> BackfillState:
        result = self._call(BACKFILL_STATUS, {"id": backfill_id})["partitionBackfillOrError"]
        if result["__typename"] != "PartitionBackfill":
            raise DagsterAPIError(f"backfill {backfill_id}: {result.get('message', result['__typename'])}")
        return BackfillState(
            backfill_id=result["id"],
            status=result["status"],
            num_partitions=result.get("numPartitions"),
            runs=result.get("runs") or [],
            error=(result.get("error") or {}).get("message"),
            started=result.get("timestamp"),
            ended=result.get("endTimestamp"),
        )

    def wait_for_backfill(self, backfill_id: str, timeout: float = 600.0, poll: float = 1.0) -> BackfillState:
        deadline = time.monotonic() + timeout
        while True:
            state = self.backfill(backfill_id)
            if state.done and not any(
                r["status"] in {"QUEUED", "STARTING", "STARTED", "NOT_STARTED"} for r in state.runs
            ):
                return state
            if time.monotonic() > deadline:
                raise TimeoutError(f"backfill {backfill_id} still {state.status} after {timeout:.0f}s")
            time.sleep(poll)
