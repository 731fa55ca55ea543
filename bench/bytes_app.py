"""The anchor for the cached route: a FastAPI app returning pre-rendered bytes from memory.

``uvicorn --app-dir bench bytes_app:app`` with ``DM_BENCH_BODY_FILE`` naming the body to serve:
the same bytes our cached ``/data/candles`` returns, through the same framework and server, so
the ratio shows what our route adds on top of FastAPI itself.
"""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import FastAPI, Response

BODY = Path(os.environ["DM_BENCH_BODY_FILE"]).read_bytes()
app = FastAPI()


@app.get("/health/liveness")
def liveness() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/bytes")
def bytes_route() -> Response:
    return Response(content=BODY, media_type="application/json")
