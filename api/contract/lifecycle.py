"""Strategy lifecycle requests: validation and the shapes the TA bot reads (TA-15…TA-17, GP-03, GP-05)."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from typing import Any

from api.contract.config import ID_PATTERN, MAX_REASON, MAX_WHO
from api.params import ParamError
from dm_resources.metadata.lifecycle import LifecycleStore, Transition, WrongState
from dm_resources.metadata.store import MetadataStore

STATE_PATTERN = r"^[a-z_]{1,32}$"
_STATE = re.compile(STATE_PATTERN)
_ID = re.compile(ID_PATTERN)
FIELDS = (
    "from_state",
    "to_state",
    "transitioned_by",
    "reason",
    "service",
    "metadata",
    "transitioned_at",
    "decision_id",
)
MAX_METADATA_KEYS = 50


def check_strategy_id(value: Any, where: str = "path") -> str:
    if not isinstance(value, str) or _ID.fullmatch(value) is None:
        raise ParamError("strategy_id", "must be 1-128 of A-Z a-z 0-9 _ . : -", where=where)
    return value


def _state(name: str, value: Any, *, nullable: bool) -> str | None:
    if value is None and nullable:
        return None
    if not isinstance(value, str) or _STATE.fullmatch(value) is None:
        raise ParamError(name, "must be a state name: 1-32 of a-z and _", where="body")
    return value


def _when(value: Any) -> dt.datetime | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 40:
        raise ParamError("transitioned_at", "must be an ISO-8601 time", where="body")
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ParamError("transitioned_at", f"{value!r} is not an ISO-8601 time", where="body") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    if not 2000 <= parsed.year <= 2200:
        raise ParamError("transitioned_at", "must lie between the years 2000 and 2200", where="body")
    return parsed.astimezone(dt.UTC)


def _text(name: str, value: Any, limit: int, *, required: bool) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value.strip()) or len(value) > limit:
        need = "a non-empty string" if required else "a string"
        raise ParamError(name, f"must be {need} of at most {limit} characters", where="body")
    return value


def parse_transition(strategy_id: str, body: Any, recorded_by: str) -> Transition:
    """A transition request (the TA bot's event body) → :class:`Transition`; problems are 422s naming the field."""
    if not isinstance(body, Mapping):
        raise ParamError("body", "must be a JSON object", where="body")
    unknown = [k for k in body if k not in (*FIELDS, "strategy_id", "event_id")]
    if unknown:
        raise ParamError(str(unknown[0])[:40], f"unknown field; known: {', '.join(FIELDS)}", where="body")
    if body.get("strategy_id") not in (None, strategy_id):
        raise ParamError("strategy_id", "differs from the strategy in the path", where="body")
    metadata = body.get("metadata")
    if metadata is not None and (not isinstance(metadata, Mapping) or len(metadata) > MAX_METADATA_KEYS):
        raise ParamError("metadata", f"must be a JSON object of at most {MAX_METADATA_KEYS} keys", where="body")
    decision = body.get("decision_id")
    if decision is None and isinstance(metadata, Mapping):
        decision = metadata.get("decision_id")
    if decision is not None and (not isinstance(decision, str) or not 0 < len(decision) <= 128):
        raise ParamError("decision_id", "must be a string of 1-128 characters", where="body")
    return Transition(
        strategy_id=strategy_id,
        from_state=_state("from_state", body.get("from_state"), nullable=True),
        to_state=_state("to_state", body.get("to_state"), nullable=False) or "",
        transitioned_by=_text("transitioned_by", body.get("transitioned_by"), MAX_WHO, required=True) or "",
        reason=_text("reason", body.get("reason"), MAX_REASON, required=False),
        service=_text("service", body.get("service"), 96, required=False),
        recorded_by=recorded_by,
        metadata=dict(metadata) if isinstance(metadata, Mapping) else None,
        decision_id=decision,
        transitioned_at=_when(body.get("transitioned_at")),
    )


def iso(value: dt.datetime | None) -> str | None:
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z") if value is not None else None


def event_view(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "event_id": row["event_id"],
        "strategy_id": row["strategy_id"],
        "seq": row["seq"],
        "from_state": row["from_state"],
        "to_state": row["to_state"],
        "transitioned_by": row["transitioned_by"],
        "reason": row["reason"],
        "service": row["service"],
        "recorded_by": row["recorded_by"],
        "metadata": row["metadata"],
        "decision_id": row["decision_id"],
        "transitioned_at": iso(row["transitioned_at"]),
    }


def transition(meta: MetadataStore, strategy_id: str, body: Any, recorded_by: str) -> tuple[dict[str, Any], bool]:
    """Apply a transition: (the event, whether it is new); a wrong ``from_state`` is a 409 naming the current state."""
    t = parse_transition(strategy_id, body, recorded_by)
    try:
        row, created = LifecycleStore(meta).transition(t)
    except WrongState as exc:
        raise ParamError(
            "from_state",
            f"strategy {strategy_id!r} is in state {exc.current!r}, not {exc.expected!r}: nothing changed",
            status=409,
            where="body",
        ) from None
    return {**event_view(row), "replayed": not created}, created


def state_view(meta: MetadataStore, strategy_id: str) -> dict[str, Any]:
    row = LifecycleStore(meta).state(strategy_id)
    return {
        "strategy_id": strategy_id,
        "state": row["to_state"] if row is not None else None,
        "transitioned_at": iso(row["transitioned_at"]) if row is not None else None,
        "event_id": row["event_id"] if row is not None else None,
        "seq": row["seq"] if row is not None else 0,
    }


def events_view(meta: MetadataStore, strategy_id: str, limit: int, order: str) -> dict[str, Any]:
    rows = LifecycleStore(meta).events(strategy_id, limit=limit, descending=order == "desc")
    events = [event_view(r) for r in rows]
    return {"strategy_id": strategy_id, "events": events, "count": len(events)}
