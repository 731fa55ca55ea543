"""A bucket as a MongoDB document and back (serialization apart from layout and store, as in Arctic).

Example: one UTC day of 1m candles, encoding 2 (what every write produces)::

    {"_id": "BTCUSDT:1m:2026-03-10", "symbol": "BTCUSDT", "interval": "1m",
     "start": 1773100800000, "end": 1773187200000, "n": 1440,
     "first": 1773100800000, "last": 1773187140000, "v": 3, "updated_at": 1773187201234, "enc": 2,
     "ints": {"cols": ["open", "high", "low", "close", "volume", "quote_volume",
                       "taker_buy_volume", "taker_buy_quote_volume", "trades"],
              "scale": [1, 1, 1, 1, 3, 2, 3, 2, 0],
              "data": Binary(<Blosc: zstd over bit-shuffled zigzag deltas, 9 × 1440 int64>)},
     "source": {"values": ["kline", "rest"], "codes": Binary(<Blosc: 1440 × uint16>)},
     "flags": {"values": [[]], "codes": None}}

Why this shape (measured here on a year of 1m day buckets, see docs/DATA_MODEL.md):

* **Decimal scaling, losslessly.** Candle prices and volumes are short decimals held in float64
  (``27123.4``, ``1.532``). A float column whose every value is exactly ``m / 10**k`` for integers
  ``m`` (|m| < 2**53, k ≤ 12, checked bit for bit, ``-0.0`` and NaN excluded) is stored as ``m``
  and ``k``; the reader computes ``m / 10**k``, the same IEEE division the check did, so every
  float comes back bit-identical. This is the idea of ALP (DuckDB's float compression).
  Any other float column goes to ``floats``: raw float64, byte-shuffled, zstd.
* **Deltas, zigzag, bit-shuffle, zstd.** Consecutive minutes differ by a few ticks: the deltas
  are small integers, zigzag makes them non-negative, bit-shuffling turns their always-zero high
  bits into long zero runs, and zstd (level 3) removes those. Blosc does shuffle and zstd in one
  C call (``numcodecs``, the codec library of Zarr).
* **Implicit ``open_time``.** A bucket whose candles are contiguous (``first + i × interval``,
  every complete day) stores no ``open_time``: ``first`` and ``n`` give it. Otherwise
  ``open_time`` is one more row of ``ints`` (scale 0).
* ``source`` and ``flags`` are dictionary-encoded: a day has one to four sources and almost
  always no flags. With one distinct value the codes are ``None`` (all candles have it);
  otherwise they are uint16, bit-shuffled and compressed to a few bytes.

Encoding 1 (plain little-endian arrays, one BSON binary per column) is still read, so old and
new buckets live side by side until ``python -m dm_resources.candle_store reencode`` has
rewritten the old ones; a layout this reader does not know is a ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from bson import Binary
from numcodecs import blosc

from dm_resources.candle_store.bucket import FLOAT_COLUMNS, INT_COLUMNS, Bucket, Coded
from dm_resources.candle_store.layout import step_ms
from dm_resources.contracts import now_ms

ENCODING = 2  # what writers produce; bump when the layout of a bucket document changes
# Keys every bucket document carries besides its columns: what ``count``/``first``/``last`` read.
META_FIELDS = ("symbol", "interval", "start", "end", "n", "first", "last", "v", "updated_at", "enc")
CODED_COLUMNS = ("source", "flags")

MAX_SCALE = 12
_P10 = 10.0 ** np.arange(MAX_SCALE + 1)
_EXACT_INT = float(2**53)  # every integer below this is exact in float64
# Blosc takes the element size from the array it is given; bit-shuffling suits small integers,
# byte-shuffling raw float64 mantissas. zstd level 3: the best size of the levels measured, and
# decompression (what reads pay) costs the same at every level.
_CODEC = b"zstd"
_LEVEL = 3
# One thread per call, in every thread: a bucket is ~100 KB, too small for Blosc's thread pool to
# pay off, and the pool would compete with the store and the HTTP server for the same cores. Blosc
# already works this way off the main thread (every API request); this makes the main thread
# (Dagster steps, the CLI, benchmarks) behave the same.
blosc.use_threads = False


# -- encoding 2 ---------------------------------------------------------------------------------
def encode_bucket(b: Bucket, v: int) -> dict[str, Any]:
    """The document that stores ``b`` as write number ``v`` (always the current encoding)."""
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
    names: list[str] = []
    scales: list[int] = []
    rows: list[np.ndarray] = []
    if not contiguous(ot, step_ms(b.interval)):
        names.append("open_time")
        scales.append(0)
        rows.append(ot)
    raw_names: list[str] = []
    for c in FLOAT_COLUMNS:
        found = decimal_ints(b.cols[c])
        if found is None:
            raw_names.append(c)
        else:
            names.append(c)
            scales.append(found[0])
            rows.append(found[1])
    for c in INT_COLUMNS:
        if c != "open_time":
            names.append(c)
            scales.append(0)
            rows.append(b.cols[c].astype(np.int64, copy=False))
    doc["ints"] = {"cols": names, "scale": scales, "data": _pack(zigzag_deltas(np.stack(rows)), blosc.BITSHUFFLE)}
    if raw_names:
        raw = np.stack([b.cols[c].astype(np.float64, copy=False) for c in raw_names])
        doc["floats"] = {"cols": raw_names, "data": _pack(raw, blosc.SHUFFLE)}
    source, flags = b.source.compacted(), b.flags.compacted()
    doc["source"] = {"values": list(source.values), "codes": _pack_codes(source)}
    doc["flags"] = {"values": [list(f) for f in flags.values], "codes": _pack_codes(flags)}
    return doc


def _decode_v2(doc: Mapping[str, Any]) -> Bucket:
    return _decode_run([doc])


def _run_key(doc: Mapping[str, Any]) -> tuple[Any, ...] | None:
    """Documents with equal keys decode together as one 3-D array (``decode_span``); None: not encoding 2."""
    if doc.get("enc") != 2:
        return None
    floats = tuple(doc["floats"]["cols"]) if "floats" in doc else ()
    return (int(doc["n"]), tuple(doc["ints"]["cols"]), floats)


def _decode_run(docs: Sequence[Mapping[str, Any]]) -> Bucket:
    """``k`` encoding-2 documents of one shape (same ``n`` and column lists) as one Bucket.

    Every document's blocks are decompressed into one ``(k, columns, n)`` array, and the
    zigzag, the running sums and the decimal scaling then run once over all of them instead
    of once per bucket: the per-bucket cost left is the decompression itself.
    """
    first = docs[0]
    k, n = len(docs), int(first["n"])
    interval = first["interval"]
    names: list[str] = list(first["ints"]["cols"])
    z = np.empty((k, len(names), n), dtype=np.int64)
    if z.size:
        for i, d in enumerate(docs):
            blosc.decompress(d["ints"]["data"], z[i])
    m = undo_zigzag_deltas(z)
    scales = np.array([d["ints"]["scale"] for d in docs], dtype=np.intp).reshape(k, len(names))
    cols: dict[str, np.ndarray] = {}
    for j, c in enumerate(names):
        block = m[:, j, :]
        if c in INT_COLUMNS:
            cols[c] = np.ascontiguousarray(block).reshape(-1)
        else:  # int64 / float64 is the division ``decimal_ints`` checked, bit for bit
            cols[c] = (block / _P10[scales[:, j]][:, None]).reshape(-1)
    if "floats" in first:
        raw_names: list[str] = list(first["floats"]["cols"])
        raw = np.empty((k, len(raw_names), n), dtype=np.float64)
        if raw.size:
            for i, d in enumerate(docs):
                blosc.decompress(d["floats"]["data"], raw[i])
        for j, c in enumerate(raw_names):
            cols[c] = np.ascontiguousarray(raw[:, j, :]).reshape(-1)
    if "open_time" not in cols:
        firsts = np.array([int(d["first"]) if n else 0 for d in docs], dtype=np.int64)
        cols["open_time"] = (firsts[:, None] + np.arange(n, dtype=np.int64) * step_ms(interval)).reshape(-1)
    source = _coded_run(docs, "source", n, str)
    flags = _coded_run(docs, "flags", n, tuple)
    v = int(first["v"]) if k == 1 else 0  # a span of several buckets has no one write counter
    return Bucket(first["symbol"], interval, int(first["start"]), int(docs[-1]["end"]), cols, source, flags, v)


def _coded_run(docs: Sequence[Mapping[str, Any]], key: str, n: int, cast: Any) -> Coded:
    """The documents' dictionary-encoded column on one value table."""
    codes = np.empty((len(docs), n), dtype=np.uint16)
    index: dict[Any, int] = {}
    for i, d in enumerate(docs):
        enc = d[key]
        if enc["codes"] is None:
            codes[i] = 0
        elif n:
            blosc.decompress(enc["codes"], codes[i])
        remap = np.array([index.setdefault(cast(v), len(index)) for v in enc["values"]], dtype=np.uint16)
        if not np.array_equal(remap, np.arange(remap.size)):
            codes[i] = remap[codes[i]]
    return Coded(list(index), codes.reshape(-1))


def contiguous(open_time: np.ndarray, step: int) -> bool:
    """Sorted unique aligned open times with no hole: ``first + i × step`` (always so for a complete day)."""
    n = open_time.size
    return n == 0 or int(open_time[-1]) - int(open_time[0]) == (n - 1) * step


def decimal_ints(x: np.ndarray) -> tuple[int, np.ndarray] | None:
    """``(k, m)`` with ``m / 10**k`` bit-identical to ``x`` for the smallest ``k`` ≤ 12, else None."""
    if not x.size:
        return 0, np.empty(0, dtype=np.int64)
    if not np.isfinite(x).all():
        return None
    bits = x.view(np.int64)
    top = float(np.abs(x).max())
    for k in range(MAX_SCALE + 1):
        p = _P10[k]
        if top * p >= _EXACT_INT:
            return None
        m = np.rint(x * p).astype(np.int64)
        if np.array_equal((m / p).view(np.int64), bits):  # the reader's division, compared bit for bit
            return k, m
    return None


def zigzag_deltas(m: np.ndarray) -> np.ndarray:
    """Row-wise deltas, zigzagged (0, -1, 1, -2 … → 0, 1, 2, 3 …); int64 wrap-around is undone exactly."""
    d: np.ndarray = np.diff(m.astype(np.int64, copy=False), axis=-1, prepend=0)
    return (d << 1) ^ (d >> 63)


def undo_zigzag_deltas(z: np.ndarray) -> np.ndarray:
    """The inverse of :func:`zigzag_deltas`, in place (``z`` is int64 and is returned)."""
    u = z.view(np.uint64)
    sign = u & np.uint64(1)
    np.negative(sign, out=sign)  # 0 or all ones
    u >>= np.uint64(1)
    u ^= sign
    return np.cumsum(z, axis=-1, out=z)


def _pack_codes(col: Coded) -> Binary | None:
    """None when every candle has the one value (the usual day: one source, no flags)."""
    return None if len(col.values) <= 1 else _pack(col.codes, blosc.BITSHUFFLE)


def _pack(a: np.ndarray, shuffle: int) -> Binary:
    return Binary(blosc.compress(np.ascontiguousarray(a), _CODEC, _LEVEL, shuffle) if a.size else b"")


# -- encoding 1 (read only) ----------------------------------------------------------------------
def _decode_v1(doc: Mapping[str, Any]) -> Bucket:
    """Plain little-endian columns, one BSON binary each; codes as raw uint16."""
    cols: dict[str, np.ndarray] = {}
    for c in INT_COLUMNS:
        cols[c] = np.frombuffer(doc[c], dtype="<i8").astype(np.int64, copy=False)
    for c in FLOAT_COLUMNS:
        cols[c] = np.frombuffer(doc[c], dtype="<f8").astype(np.float64, copy=False)
    source = Coded([str(s) for s in doc["source"]["values"]], np.frombuffer(doc["source"]["codes"], dtype="<u2"))
    flags = Coded([tuple(f) for f in doc["flags"]["values"]], np.frombuffer(doc["flags"]["codes"], dtype="<u2"))
    return Bucket(
        doc["symbol"], doc["interval"], int(doc["start"]), int(doc["end"]), cols, source, flags, int(doc["v"])
    )


def encode_bucket_v1(b: Bucket, v: int) -> dict[str, Any]:
    """Encoding 1, for tests and benchmarks of the migration: no writer produces it any more."""
    doc = encode_bucket(b, v)
    for k in ("ints", "floats"):
        doc.pop(k, None)
    doc["enc"] = 1
    for c in INT_COLUMNS:
        doc[c] = Binary(b.cols[c].astype("<i8", copy=False).tobytes())
    for c in FLOAT_COLUMNS:
        doc[c] = Binary(b.cols[c].astype("<f8", copy=False).tobytes())
    for c, col in (("source", b.source), ("flags", b.flags)):
        col = col.compacted()
        values = list(col.values) if c == "source" else [list(f) for f in col.values]
        doc[c] = {"values": values, "codes": Binary(col.codes.astype("<u2").tobytes())}
    return doc


def decode_span(docs: Sequence[Mapping[str, Any]]) -> Bucket:
    """Consecutive bucket documents of one dataset (ascending) as one Bucket: what bulk reads stream.

    Runs of same-shaped documents (every complete day of an interval) decode together; any
    other document (encoding 1, a partial day) decodes on its own. The span's ``v`` is 0.
    """
    pieces: list[Bucket] = []
    i = 0
    while i < len(docs):
        key = _run_key(docs[i])
        j = i + 1
        if key is None:
            pieces.append(decode_bucket(docs[i]))
        else:
            while j < len(docs) and _run_key(docs[j]) == key:
                j += 1
            pieces.append(_decode_run(docs[i:j]))
        i = j
    return Bucket.concat(pieces)


_DECODERS = {1: _decode_v1, 2: _decode_v2}
READABLE_ENCODINGS = tuple(_DECODERS)


def decode_bucket(doc: Mapping[str, Any]) -> Bucket:
    """The bucket a document holds, in any readable encoding; an unknown one is a ``ValueError``."""
    decode = _DECODERS.get(doc.get("enc"))  # type: ignore[arg-type]
    if decode is None:
        raise ValueError(
            f"bucket {doc.get('_id')}: encoding {doc.get('enc')!r}, this reader knows {', '.join(map(str, _DECODERS))}"
        )
    return decode(doc)
