"""A bucket as a MongoDB document (serialization apart from layout and store, as in Arctic).

Example (one UTC day of 1m candles, ``enc`` 1)::

    {"_id": "BTCUSDT:1m:2026-03-10", "symbol": "BTCUSDT", "interval": "1m",
     "start": 1773100800000, "end": 1773187200000, "n": 1440,
     "first": 1773100800000, "last": 1773187140000, "v": 3, "updated_at": 1773187201234, "enc": 1,
     "open_time": Binary(<1440 × int64 LE>), "open": Binary(<1440 × float64 LE>), ...,
     "trades": Binary(<1440 × int64 LE>),
     "source": {"values": ["kline", "rest"], "codes": Binary(<1440 × uint16 LE>)},
     "flags": {"values": [[]], "codes": Binary(<1440 × uint16 LE>)}}

Why binary columns (measured here, 365 day buckets of 1440 candles, SecantusDB): numeric
columns stored as BSON binary holding little-endian int64/float64 arrays read in 0.42 s and
wrote in 1.8 s (55 MB); the same values as BSON arrays of numbers read in 3.6 s and wrote in
17 s (80 MB), because every array element is a BSON element with its own type byte and
decimal-string key, decoded into a Python float. Binary columns decode with
``numpy.frombuffer`` (no per-value objects) and can be handed to a columnar response as is.
The price: ``mongosh`` shows the columns as opaque binary; this module is the reader (and
``docs/DATA_MODEL.md`` the format). ``source`` and ``flags`` are dictionary-encoded (a short
list of distinct values plus one small integer code per candle): a day has one to four sources
and almost always no flags.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from bson import Binary

from dm_resources.candle_store.bucket import FLOAT_COLUMNS, INT_COLUMNS, Bucket
from dm_resources.contracts import now_ms

ENCODING = 1  # bump when the layout of a bucket document changes
# Keys every bucket document carries besides its columns: what ``count``/``first``/``last`` read.
META_FIELDS = ("symbol", "interval", "start", "end", "n", "first", "last", "v", "updated_at", "enc")
CODED_COLUMNS = ("source", "flags")


def encode_bucket(b: Bucket, v: int) -> dict[str, Any]:
    """The document that stores ``b`` as write number ``v``."""
    ot = b.cols["open_time"]
    doc: dict[str, Any] = {
        "_id": b.id,
        "symbol": b.symbol,
        "interval": b.interval,
        "start": b.start,
        "end": b.end,
        "n": b.n,
        "first": int(ot[0]) if ot.size else None,
        "last": int(ot[-1]) if ot.size else None,
        "v": v,
        "updated_at": now_ms(),
        "enc": ENCODING,
    }
    for c in INT_COLUMNS:
        doc[c] = Binary(b.cols[c].astype("<i8", copy=False).tobytes())
    for c in FLOAT_COLUMNS:
        doc[c] = Binary(b.cols[c].astype("<f8", copy=False).tobytes())
    doc["source"] = _encode_codes(b.source)
    doc["flags"] = _encode_codes([list(f) for f in b.flags])
    return doc


def decode_bucket(doc: Mapping[str, Any]) -> Bucket:
    """The bucket a document holds; a layout this reader does not know is a ``ValueError``."""
    if doc.get("enc") != ENCODING:
        raise ValueError(f"bucket {doc.get('_id')}: encoding {doc.get('enc')!r}, this reader knows {ENCODING}")
    cols: dict[str, np.ndarray] = {}
    for c in INT_COLUMNS:
        cols[c] = np.frombuffer(doc[c], dtype="<i8").astype(np.int64, copy=False)
    for c in FLOAT_COLUMNS:
        cols[c] = np.frombuffer(doc[c], dtype="<f8").astype(np.float64, copy=False)
    source = [str(s) for s in _decode_codes(doc["source"])]
    flags = [tuple(f) for f in _decode_codes(doc["flags"])]
    return Bucket(
        doc["symbol"], doc["interval"], int(doc["start"]), int(doc["end"]), cols, source, flags, int(doc["v"])
    )


def _encode_codes(values: Sequence[Any]) -> dict[str, Any]:
    """Dictionary encoding: distinct values once, one uint16 code per candle."""
    table: list[Any] = []
    index: dict[Any, int] = {}
    codes = np.empty(len(values), dtype="<u2")
    for i, v in enumerate(values):
        key = tuple(v) if isinstance(v, list) else v
        code = index.get(key)
        if code is None:
            code = index[key] = len(table)
            table.append(v)
        codes[i] = code
    return {"values": table, "codes": Binary(codes.tobytes())}


def _decode_codes(enc: Mapping[str, Any]) -> list[Any]:
    table = list(enc["values"])
    codes = np.frombuffer(enc["codes"], dtype="<u2")
    return [table[c] for c in codes.tolist()]
