"""Python client for the Market Data Manager API: ``pip install 'market-data-manager[client]'``.

``DMClient`` (sync) and ``AsyncDMClient`` (async) over httpx, with typed exceptions
(:mod:`dm_client.errors`). Every write carries an ``Idempotency-Key`` reused on its retries,
so writes are retried as safely as reads (see :mod:`dm_client.client`). See README "Platform
API" for the contract.
"""

from dm_client.client import AsyncDMClient, Call, DMClient, new_key
from dm_client.errors import (
    Conflict,
    DMError,
    Forbidden,
    InvalidRequest,
    KeyInUse,
    NoResponse,
    NotFound,
    RateLimited,
    ServerError,
    TransportError,
    Unauthorized,
    Unavailable,
)
from dm_client.models import (
    BatchResult,
    DailyPnl,
    DailyPnlList,
    DeleteResult,
    InsertResult,
    Position,
    PositionList,
    QueryResult,
    UpdateResult,
)

__all__ = [
    "AsyncDMClient",
    "BatchResult",
    "Call",
    "Conflict",
    "DMClient",
    "DMError",
    "DailyPnl",
    "DailyPnlList",
    "DeleteResult",
    "Forbidden",
    "InsertResult",
    "InvalidRequest",
    "KeyInUse",
    "NoResponse",
    "NotFound",
    "Position",
    "PositionList",
    "QueryResult",
    "RateLimited",
    "ServerError",
    "TransportError",
    "Unauthorized",
    "Unavailable",
    "UpdateResult",
    "new_key",
]
