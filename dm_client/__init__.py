"""Python client for the Market Data Manager API: ``pip install 'market-data-manager[client]'``.

``DMClient`` (sync) and ``AsyncDMClient`` (async) over httpx, with retries on 429/5xx only
and typed exceptions (:mod:`dm_client.errors`). See README "Platform API" for the contract.
"""

from dm_client.client import AsyncDMClient, Call, DMClient
from dm_client.errors import (
    Conflict,
    DMError,
    Forbidden,
    InvalidRequest,
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
]
