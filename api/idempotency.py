"""``Idempotency-Key`` on write routes: a retried write never lands twice.

How a route opts in
-------------------

Take the ``Idempotent`` dependency, check the caller and the request as usual, then hand the
write to it. For a write to the metadata database, give it a function of the transaction's
``Connection`` that writes and returns the JSON answer; it runs in one transaction that also
stores the key's answer::

    from api.idempotency import Idempotent

    @router.post("/api/v1/trading/positions", response_model=Created, status_code=201, responses=ERRORS)
    async def create_position(body: NewPosition, idem: Idempotent, st: State, creds: Bearer) -> Any:
        require_scope(st, token_of(creds), SCOPE_POSITIONS)  # refuse first: nothing is claimed
        values = check(body)  # every 4xx that needs no store, before the claim

        def work(conn: Connection) -> dict[str, Any]:  # runs inside the write's transaction
            PlatformTables(st.meta).insert("positions", [values], conn=conn, id_seed=idem.seed)
            return {"position_id": ...}  # the answer: JSON-able, stored with the write

        return await run_in_threadpool(idem.write, work, status=201)

* ``idem.write(work, status=200)`` — SQL writes. ``status`` is what the route answers (its
  ``status_code``); a replay answers it again. Run it in the thread pool (it blocks).
* ``idem.run(fn, status=200)`` — writes to another store (MongoDB) that are idempotent by
  their own natural keys (``_id``): ``fn()`` writes and returns the answer, stored after it.
* ``idem.seed`` — a stable string for ids the write must derive (``None`` without a key): the
  same on every repeat, so a retried create derives the same id (``derive_position_id``).
* Raise the route's usual errors (``ParamError``, ``ApiError``) from ``work``: the transaction
  rolls back and the claim is released, so the client may correct the request and resend it
  under the same key. Only successful answers are stored.

What the client sees
--------------------

* No header: the write runs once per request. SQL writes still commit with a server receipt,
  so a connection lost during COMMIT (retried inside the store) cannot apply them twice.
* ``Idempotency-Key: <1-255 printable ASCII characters>`` (a quoted Structured Field string,
  as the IETF draft writes it, is accepted too): the first request is processed; a repeat by
  the same caller (token digest) with the same payload (method, path, query and canonical JSON
  body) gets the stored status and body with ``Idempotent-Replayed: true`` and writes nothing;
  a repeat with another payload is 422; a repeat while the first is running is 409 with
  ``Retry-After``; a malformed key is 400.
* Keys are kept ``DM_API_IDEMPOTENCY_TTL_S`` (24 h by default, never less) after their first
  use, then forgotten and pruned (``dm_resources/metadata/idempotency.py``).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from typing import Annotated

import orjson
from fastapi import Depends, Header, Request
from fastapi.concurrency import run_in_threadpool

from api.errors import ApiError, StoredAnswer
from dm_resources.metadata.idempotency import (
    MAX_KEY_CHARS,
    Answer,
    KeyedRequest,
    KeyInFlight,
    KeyReused,
    Replay,
    Work,
    WriteOnce,
)

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
# Bodies above this are fingerprinted in the thread pool: parsing them must not hold the event loop.
INLINE_FINGERPRINT_BYTES = 64 * 1024
ANONYMOUS = "anonymous"


def parse_key(raw: str) -> str:
    """The key's value: 1-255 printable ASCII characters, bare or as a quoted sf-string; else 400."""
    value = raw.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    if not 1 <= len(value) <= MAX_KEY_CHARS or not all(" " <= ch <= "~" for ch in value):
        raise ApiError(
            400,
            f"must be 1-{MAX_KEY_CHARS} printable ASCII characters (a UUID is a good key)",
            loc=("header", HEADER),
            kind="idempotency_key",
        )
    return value


def caller_of(request: Request) -> str:
    """Who sent the request, as stored with its keys: a digest of its token, never the token.

    Without a token, the service name it announces (``X-Petrosa-Service``) or ``anonymous``.
    """
    auth = request.headers.get("authorization", "")
    token = auth[7:].strip() if auth[:7].lower() == "bearer " else request.headers.get("x-api-token", "")
    if token:
        return hashlib.sha256(b"token:" + token.encode("utf-8", "replace")).hexdigest()
    service = request.headers.get("x-petrosa-service", "")
    if service:
        return hashlib.sha256(b"service:" + service.encode("utf-8", "replace")).hexdigest()
    return ANONYMOUS


def fingerprint(method: str, path: str, query: str, body: bytes) -> str:
    """SHA-256 of the request line and the body; a JSON body canonically (key order and spacing do not count)."""
    try:
        canonical = orjson.dumps(orjson.loads(body), option=orjson.OPT_SORT_KEYS) if body else b""
    except orjson.JSONDecodeError:
        canonical = body
    digest = hashlib.sha256()
    for part in (method.encode(), path.encode("utf-8", "replace"), query.encode("utf-8", "replace"), canonical):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


class Idempotency(WriteOnce):
    """One request's writer (see the module docstring): the store's outcomes as HTTP answers."""

    def write(self, work: Work, *, status: int = 200) -> Answer:
        return self._answer(lambda: super(Idempotency, self).write(work, status=status))

    def run(self, fn: Callable[[], Answer], *, status: int = 200) -> Answer:
        return self._answer(lambda: super(Idempotency, self).run(fn, status=status))

    @staticmethod
    def _answer(call: Callable[[], Answer]) -> Answer:
        try:
            return call()
        except Replay as exc:
            raise StoredAnswer(exc.status, exc.body, key=exc.key) from None
        except KeyReused as exc:
            raise ApiError(422, str(exc), loc=("header", HEADER), kind="idempotency_key_reused") from None
        except KeyInFlight as exc:
            raise ApiError(
                409,
                str(exc),
                loc=("header", HEADER),
                kind="idempotency_key_in_flight",
                headers={"Retry-After": str(math.ceil(exc.retry_after_s))},
            ) from None


async def idempotency(
    request: Request,
    key: Annotated[
        str | None,
        Header(
            alias=HEADER,
            max_length=MAX_KEY_CHARS + 2,
            description="a unique key per logical write (a UUID); retries reuse it. See the README's Idempotency.",
        ),
    ] = None,
) -> Idempotency:
    """The request's :class:`Idempotency` (no store I/O here: the key is claimed when the route writes)."""
    st = request.app.state.dm
    ttl_s, lease_s = st.api.idempotency_ttl_s, st.api.idempotency_lease_s
    if key is None:
        return Idempotency(st.meta, None, ttl_s=ttl_s, lease_s=lease_s)
    value = parse_key(key)
    body = await request.body()
    args = (request.method, request.url.path, request.url.query, body)
    fp = fingerprint(*args) if len(body) <= INLINE_FINGERPRINT_BYTES else await run_in_threadpool(fingerprint, *args)
    keyed = KeyedRequest(caller_of(request), value, fp, f"{request.method} {request.url.path}"[:255])
    return Idempotency(st.meta, keyed, ttl_s=ttl_s, lease_s=lease_s)


Idempotent = Annotated[Idempotency, Depends(idempotency)]

__all__ = ["HEADER", "REPLAYED_HEADER", "Idempotency", "Idempotent", "caller_of", "fingerprint", "parse_key"]
