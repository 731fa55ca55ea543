"""Keeping what a process built at start-up out of the cyclic garbage collector's full passes.

Why: an API server or a Dagster run worker holds hundreds of thousands of tracked objects once
its modules are imported (dagster's alone are most of them; pandas, numba and the code location
add more). A full (generation 2) collection walks every one of them, in whichever thread
triggers it, holding the interpreter lock throughout: ~200 ms on the 2-core host. In the API
that blocked ``/health/liveness`` (large inserts allocate enough to trigger one every second or
two, and these passes were the whole of the liveness p99 under load: every probe over 20 ms
coincided with one). In a run worker, the engine's per-candle lists and frames triggered them
by the hundred thousand (a 182-partition symbol: 5.5 s → 4.8 s, ``bench/bench_history.py``).

``gc.freeze()`` moves the objects alive now into the permanent generation, which collections
skip; a full pass then walks only what was allocated later. The cost: a cycle among frozen
objects is never collected, which is fine for what lives as long as the process. Hence once per
``stage`` and process: a process that starts several apps (the tests) would otherwise freeze
the garbage of the earlier ones for good.
"""

from __future__ import annotations

import gc

_frozen: set[str] = set()


def freeze_heap(stage: str, *, collect: bool = False) -> None:
    """Freeze what is alive now, once per ``stage`` in this process (``collect``: collect first)."""
    if stage in _frozen:
        return
    _frozen.add(stage)
    if collect:
        gc.collect()
    gc.freeze()


def frozen_stages() -> frozenset[str]:
    """The stages this process has frozen (what the tests check)."""
    return frozenset(_frozen)


__all__ = ["freeze_heap", "frozen_stages"]
