"""The catalog's logic: discover datasets in MongoDB with cheap stats, and lineage from the asset graph.

Plain functions over the plain stores (and a Dagster asset graph for lineage), tested
against real servers.

A *dataset* is one kind × symbol × interval: a raw collection per symbol (interval only
for klines), candles per symbol × interval, analytics per symbol × kind × interval.

Why the stats are incremental: on SecantusDB any query bounded only by symbol — ``count``,
``first_time`` even with ``limit(1)``, ``distinct`` — fetches every document of the symbol
before limiting (measured: 2–7 s per 100k documents, against 0.2 s for a bounded range of
3k), while a time-bounded range read costs what it returns. So a refresh:

* finds the newest time by galloping *bounded* windows back from now (1 min, ×4 each step)
  down to the previous entry's last time;
* adds to the previous row count only the documents after the previous last time
  (exact for data that arrives in time order);
* does the full, scanning ``count`` and ``first_time`` for a new dataset and, once a day per
  dataset, to pick up late or backfilled data and deletions: each dataset's daily recount
  time is spread over the day by a hash of its id, so the scans never all land on one refresh;
* considers only candidate symbols it is given (symbol partitions, settings) plus those
  already in the catalog, unless asked to ``discover_all`` (``distinct`` over every collection).
"""

from __future__ import annotations

import datetime as dt
import re
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bson import Binary, Decimal128, ObjectId

from dm_assets.analytics import build as analytics_build
from dm_assets.analytics.pattern_series import COLLECTION as PATTERN_COLLECTION
from dm_assets.analytics.pattern_series import PATTERN_INTERVALS
from dm_assets.catalog.fields import FIELD_DESCRIPTIONS, describe
from dm_resources.candle_store import CandleStore
from dm_resources.contracts import CANDLE_INTERVALS, CORRELATION_SYMBOL, now_ms
from dm_resources.intervals import DAY_MS
from dm_resources.metadata.schemas import DatasetIn, DatasetRecord, LineageEdge, SchemaField, dataset_id
from dm_resources.mongo import COLLECTIONS, RAW_COLLECTIONS
from dm_resources.retention import retention_note
from dm_resources.settings import get_settings

if TYPE_CHECKING:
    from dagster import AssetSpec

    from dm_resources.metadata.store import MetadataStore
    from dm_resources.mongo import MongoStore

# The order book's REST snapshots and rebuilt top-N rows (dm_assets/orderbook), one dataset per symbol.
ORDERBOOK_COLLECTIONS = ("depth_snapshots", "orderbook_snapshots")
# Which collections hold per-symbol datasets. dead_letters is not one: its records are
# undecodable messages (often without a symbol), counted by the ingest service's metrics.
CATALOGED_COLLECTIONS = (*RAW_COLLECTIONS, "candles", "analytics", *ORDERBOOK_COLLECTIONS)
ANALYTICS_KIND_PREFIX = "analytics."
# Intervals probed for klines and candles: the ones the pipeline builds (probing all fifteen
# Binance intervals per symbol would triple the probes for datasets that are never written).
PROBED_INTERVALS = CANDLE_INTERVALS
# The newest-time gallop starts with one minute: one minute of a busy symbol's trades is
# already thousands of documents.
GALLOP_INITIAL_WINDOW_MS = 60_000
# Candle health is per interval; raw and analytics datasets of a symbol take its 1m health
# (the 1m candles are built directly from the raw data).
DEFAULT_HEALTH_INTERVAL = "1m"


@dataclass(frozen=True)
class DatasetRef:
    """Where a dataset's documents are: collection plus the equality filter on the index's middle fields."""

    kind: str
    symbol: str
    interval: str | None
    collection: str
    extra: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def id(self) -> str:
        return dataset_id(self.kind, self.symbol, self.interval)


# --------------------------------------------------------------------------- discovery


def candidates(symbols: Iterable[str]) -> list[DatasetRef]:
    """Every dataset the pipeline may hold for these symbols (and the cross-symbol correlation)."""
    refs: list[DatasetRef] = []
    syms = sorted(set(symbols) - {CORRELATION_SYMBOL})
    for symbol in syms:
        for name in RAW_COLLECTIONS:
            if name == "klines":
                refs.extend(DatasetRef(name, symbol, iv, name, {"interval": iv}) for iv in PROBED_INTERVALS)
            else:
                refs.append(DatasetRef(name, symbol, None, name))
        refs.extend(DatasetRef("candles", symbol, iv, "candles", {"interval": iv}) for iv in PROBED_INTERVALS)
        refs.extend(DatasetRef(name, symbol, None, name) for name in ORDERBOOK_COLLECTIONS)
        refs.extend(
            DatasetRef(PATTERN_COLLECTION, symbol, iv, PATTERN_COLLECTION, {"interval": iv}) for iv in PATTERN_INTERVALS
        )
    for symbol in [*syms, CORRELATION_SYMBOL]:
        for kind, iv in analytics_build.DATASETS:
            if (kind == "correlation") == (symbol == CORRELATION_SYMBOL):
                refs.append(
                    DatasetRef(ANALYTICS_KIND_PREFIX + kind, symbol, iv, "analytics", {"kind": kind, "interval": iv})
                )
    return refs


def all_symbols(store: MongoStore) -> set[str]:
    """Every symbol in every cataloged collection (``distinct``: a scan per collection on SecantusDB)."""
    found = {s for name in CATALOGED_COLLECTIONS if name != "candles" for s in store.symbols(name)}
    return found | set(CandleStore(store).symbols())


# --------------------------------------------------------------------------- schema


def bson_type(value: Any) -> str:
    """The stored type of a value, in BSON's names (what a reader of MongoDB gets back)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int64"
    if isinstance(value, float):
        return "double"
    if isinstance(value, Decimal128):
        return "decimal128"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dt.datetime):
        return "date"
    if isinstance(value, bytes | Binary):
        return "binary"
    if isinstance(value, ObjectId):
        return "objectId"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, list | tuple):
        inner = sorted({bson_type(v) for v in value})
        return f"array<{'|'.join(inner)}>" if inner else "array"
    return type(value).__name__


def schema_of(collection: str, sample: Mapping[str, Any] | None) -> list[SchemaField]:
    """Fields of a sampled document with their types and declared meanings, then declared fields it lacks."""
    sample = sample or {}
    fields = [SchemaField(name=k, type=bson_type(v), description=describe(collection, k)) for k, v in sample.items()]
    present = set(sample)
    fields += [
        SchemaField(name=k, type="unknown", description=d)
        for k, d in FIELD_DESCRIPTIONS.get(collection, {}).items()
        if k not in present
    ]
    return fields


# --------------------------------------------------------------------------- stats


def dataset_description(ref: DatasetRef) -> str:
    text = _dataset_description(ref)
    note = retention_note(get_settings(), ref.collection)
    return f"{text} {note}" if note else text


def _dataset_description(ref: DatasetRef) -> str:
    base = COLLECTIONS[ref.collection].description
    if ref.collection == "analytics":
        kind = ref.kind.removeprefix(ANALYTICS_KIND_PREFIX)
        who = "all symbols" if ref.symbol == CORRELATION_SYMBOL else ref.symbol
        return f"{base}: {kind} of {who}, {ref.interval}, one document per as-of time (window_end)."
    suffix = f", interval {ref.interval}" if ref.interval else ""
    return f"{base}; {ref.symbol}{suffix}."


class HealthLookup:
    """Latest health score per (symbol, interval), one metadata query per interval."""

    def __init__(self, meta: MetadataStore) -> None:
        self.meta = meta
        self._cache: dict[str, dict[str, float]] = {}

    def score(self, ref: DatasetRef) -> float | None:
        if ref.symbol == CORRELATION_SYMBOL:
            return None
        iv = ref.interval if ref.collection in ("klines", "candles") and ref.interval else DEFAULT_HEALTH_INTERVAL
        if iv not in self._cache:
            self._cache[iv] = {s: r.score for s, r in self.meta.latest_health_by_symbol(iv).items()}
        return self._cache[iv].get(ref.symbol)


def newest_time(store: MongoStore, ref: DatasetRef, now: int, floor: int) -> int | None:
    """The newest time ≥ ``floor`` (≤ ``now``), reading bounded windows back from now, ×4 each step."""
    tf = COLLECTIONS[ref.collection].time_field
    hi, window = now + 1, GALLOP_INITIAL_WINDOW_MS
    while hi > floor:
        lo = max(floor, hi - window)
        rows = store.read_range(ref.collection, ref.symbol, lo, hi, extra=dict(ref.extra), projection={tf: 1})
        if rows:
            return max(int(r[tf]) for r in rows)
        hi, window = lo, window * 4
    return None


def recount_due(dataset: str, last_refresh_ms: int, now: int) -> bool:
    """True when the dataset's daily recount time (spread over the day by a hash of its id) passed since
    its last refresh, or a day has gone by."""
    if now - last_refresh_ms >= DAY_MS:
        return True
    offset = zlib.crc32(dataset.encode()) % DAY_MS
    slot = now - (now - offset) % DAY_MS  # the latest recount time at or before now
    return slot > last_refresh_ms


def _ms(t: dt.datetime) -> int:
    return int((t if t.tzinfo else t.replace(tzinfo=dt.UTC)).timestamp() * 1000)


def _tail_stats(
    store: MongoStore, ref: DatasetRef, prev: DatasetRecord, now: int
) -> tuple[int, int | None, int] | None:
    """(first, last, rows) from the previous entry plus the documents after its last time; None if it cannot."""
    if not prev.row_count or prev.first_time is None or prev.last_time is None:
        return None
    if recount_due(ref.id, _ms(prev.updated_at), now):
        return None
    last = newest_time(store, ref, now, prev.last_time)
    if last is None:  # nothing at or after the previous last time: data was deleted, recount
        return None
    # (prev last, last] as [prev last + 1, last + 1): times are integer ms, and SecantusDB treats
    # ``$lte`` on an index range as exclusive (measured), while $gte/$lt is what every range read uses.
    tf = COLLECTIONS[ref.collection].time_field
    window = {"$gte": prev.last_time + 1, "$lt": last + 1}
    added = store.count(ref.collection, ref.symbol, extra={**ref.extra, tf: window})
    return prev.first_time, last, prev.row_count + added


def _full_stats(store: MongoStore, ref: DatasetRef, now: int) -> tuple[int, int | None, int] | None:
    """(first, last, rows) by scanning the dataset's documents; None when it has none."""
    extra = dict(ref.extra) or None
    first = store.first_time(ref.collection, ref.symbol, extra=extra)
    if first is None:
        return None
    return first, newest_time(store, ref, now, first), store.count(ref.collection, ref.symbol, extra=extra)


def describe_dataset(
    store: MongoStore,
    ref: DatasetRef,
    health: HealthLookup,
    now: int,
    prev: DatasetRecord | None = None,
    full: bool = False,
) -> DatasetIn | None:
    """The catalog entry of one dataset, or None when it holds no documents.

    With a previous entry and no recount due (or asked for), only documents after its last time are read.
    """
    if ref.collection == "candles":
        return _describe_candles(store, ref, health, now)
    stats = None if full or prev is None else _tail_stats(store, ref, prev, now)
    stats = stats or _full_stats(store, ref, now)
    if stats is None:
        return None
    first, last, rows = stats
    extra = dict(ref.extra) or None
    sample = None
    if last is not None:
        found = store.read_range(ref.collection, ref.symbol, last, last + 1, extra=extra, limit=1)
        sample = found[0] if found else None
    return DatasetIn(
        kind=ref.kind,
        symbol=ref.symbol,
        interval=ref.interval,
        collection=ref.collection,
        description=dataset_description(ref),
        schema_=schema_of(ref.collection, sample),
        row_count=rows,
        first_time=first,
        last_time=last,
        freshness_seconds=round((now - last) / 1000, 3) if last is not None else None,
        health_score=health.score(ref),
    )


def _describe_candles(store: MongoStore, ref: DatasetRef, health: HealthLookup, now: int) -> DatasetIn | None:
    """Candle datasets from their day buckets' metadata (n, first, last): exact and cheap, no incremental tricks."""
    cs = CandleStore(store)
    iv = str(ref.interval)
    first = cs.first_time(ref.symbol, iv)
    if first is None:
        return None
    last = cs.last_time(ref.symbol, iv)
    sample = cs.read_range(ref.symbol, iv, last, last + 1) if last is not None else []
    return DatasetIn(
        kind=ref.kind,
        symbol=ref.symbol,
        interval=ref.interval,
        collection=ref.collection,
        description=dataset_description(ref),
        schema_=schema_of(ref.collection, sample[0] if sample else None),
        row_count=cs.count(ref.symbol, iv),
        first_time=first,
        last_time=last,
        freshness_seconds=round((now - last) / 1000, 3) if last is not None else None,
        health_score=health.score(ref),
    )


@dataclass
class CatalogRefresh:
    """What a refresh wrote: the datasets found, and previously cataloged ones that are now empty."""

    datasets: list[DatasetIn]
    emptied: list[str]


def refresh_catalog(
    store: MongoStore,
    meta: MetadataStore,
    now: int | None = None,
    symbols: Iterable[str] = (),
    *,
    discover_all: bool = False,
    full: bool = False,
) -> CatalogRefresh:
    """Describe and upsert every dataset of the candidate symbols; entries whose data is gone keep 0 rows.

    Candidates: ``symbols``, every symbol already in the catalog, and with ``discover_all`` (or
    an empty catalog) every symbol in the store. ``full`` recounts every dataset instead of adding the new tail.
    Keeping (not deleting) an emptied entry preserves its id for clients that list it, and
    row_count 0 with no times says plainly that nothing is there any more.
    """
    now = now if now is not None else now_ms()
    previous = {r.id: r for r in meta.list_datasets()}
    syms = set(symbols) | {r.symbol for r in previous.values()}
    if discover_all or not previous:
        syms |= all_symbols(store)
    health = HealthLookup(meta)
    datasets = []
    for ref in candidates(syms):
        entry = describe_dataset(store, ref, health, now, previous.get(ref.id), full=full)
        if entry is not None:
            datasets.append(entry)
    found = {d.key() for d in datasets}
    emptied = [
        DatasetIn(
            kind=r.kind,
            symbol=r.symbol,
            interval=r.interval,
            collection=r.collection,
            id=r.id,
            row_count=0,
            first_time=None,
            last_time=None,
            freshness_seconds=None,
        )
        for r in previous.values()
        if r.id not in found and r.collection in CATALOGED_COLLECTIONS and r.row_count
    ]
    meta.upsert_datasets([*datasets, *emptied])
    return CatalogRefresh(datasets=datasets, emptied=[d.key() for d in emptied])


# --------------------------------------------------------------------------- lineage


_SENTENCE = re.compile(r"^(.+?[.!?])(?=\s|$)", re.S)


def first_sentence(text: str | None) -> str | None:
    """The first sentence of a description, whitespace collapsed (the transformation, in words)."""
    if not text:
        return None
    flat = " ".join(text.split())
    m = _SENTENCE.match(flat)
    return m.group(1) if m else flat


def lineage_edges(specs: Iterable[AssetSpec]) -> list[LineageEdge]:
    """Every upstream → downstream edge among ``specs``; the transformation is the downstream's first sentence."""
    edges: list[LineageEdge] = []
    for spec in sorted(specs, key=lambda s: s.key.to_user_string()):
        for parent in sorted({d.asset_key for d in spec.deps}, key=lambda k: k.to_user_string()):
            edges.append(
                LineageEdge(
                    upstream=parent.to_user_string(),
                    downstream=spec.key.to_user_string(),
                    transformation=first_sentence(spec.description),
                    asset_group=spec.group_name,
                )
            )
    return edges


def summary_markdown(datasets: Sequence[DatasetIn], limit: int = 50) -> str:
    """Headline table of the catalog for the materialization's metadata (the first ``limit`` rows)."""
    if not datasets:
        return "no datasets found"
    lines = ["| dataset | rows | last (UTC) | freshness s | health |", "|---|---|---|---|---|"]
    for d in list(datasets)[:limit]:
        last = (
            dt.datetime.fromtimestamp(d.last_time / 1000, tz=dt.UTC).strftime("%Y-%m-%d %H:%M")
            if d.last_time is not None
            else "–"
        )
        health = f"{d.health_score:.1f}" if d.health_score is not None else "–"
        lines.append(f"| {d.key()} | {d.row_count} | {last} | {d.freshness_seconds} | {health} |")
    if len(datasets) > limit:
        lines.append(f"| … {len(datasets) - limit} more | | | | |")
    return "\n".join(lines)


def by_kind(datasets: Iterable[DatasetIn]) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in datasets:
        out[d.kind] = out.get(d.kind, 0) + 1
    return dict(sorted(out.items()))
