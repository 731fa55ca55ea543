"""Cross-symbol correlation of log returns, and the strongly correlated pairs as a graph.

Alignment and missing bars: each symbol's candles go on its own open_time grid and
its log returns ln(C_t / C_{t−1}) are computed there, so a return across a missing
candle is NaN rather than a multi-bar move. The symbols' return series are then
inner-joined on open_time: a bar is used only when *every* symbol has a return at it.
Symbols with no candles at all are left out (listed in ``excluded``) instead of
emptying the join.

Windows count grid bars back from the last common bar: window w covers open_times in
(t_last − w·interval, t_last], so with complete data it holds exactly w returns.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from dm_assets.analytics.volatility import ResultMixin, interval_ms, json_float, log_returns, to_grid

__all__ = [
    "CorrelationResult",
    "aligned_returns",
    "compute_correlation",
    "correlation_graph",
    "correlation_matrix",
]


def aligned_returns(candles_by_symbol: Mapping[str, pd.DataFrame], interval: str) -> tuple[pd.DataFrame, list[str]]:
    """Log returns of every symbol with data, inner-joined on open_time, and the symbols without data."""
    series: dict[str, pd.Series] = {}
    excluded: list[str] = []
    for sym in sorted(candles_by_symbol):
        df = candles_by_symbol[sym]
        if df is None or len(df) == 0:
            excluded.append(sym)
            continue
        series[sym] = log_returns(to_grid(df, interval))
    if not series:
        return pd.DataFrame(index=pd.Index([], dtype="int64", name="open_time")), excluded
    wide = pd.concat(series, axis=1, join="inner").dropna(how="any")
    wide.index.name = "open_time"
    return wide, excluded


def correlation_matrix(returns: pd.DataFrame) -> np.ndarray:
    """Pearson correlation (columns = symbols); NaN for a symbol whose returns do not vary.

    Computed as the Gram matrix of centered, unit-norm columns; the diagonal is set to
    exactly 1 and values are clipped to [−1, 1] against rounding.
    """
    x = returns.to_numpy(dtype="float64")
    k = x.shape[1]
    if x.shape[0] < 2:
        return np.full((k, k), np.nan)
    xc = x - x.mean(axis=0)
    norm = np.sqrt((xc * xc).sum(axis=0))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = xc / np.where(norm > 0, norm, np.nan)
    corr = np.clip(z.T @ z, -1.0, 1.0)
    varies = norm > 0
    corr[np.diag_indices(k)] = np.where(varies, 1.0, np.nan)
    return corr


def correlation_graph(symbols: Sequence[str], corr: np.ndarray, threshold: float) -> dict[str, Any]:
    """Pairs with |corr| ≥ threshold: ``{nodes: [symbols], edges: [{source, target, weight}]}``.

    Every symbol is a node (an isolated node says "nothing correlates with me"); each
    unordered pair appears once with source < target alphabetically; weight is the
    signed correlation.
    """
    nodes = list(symbols)
    iu, ju = np.triu_indices(len(nodes), k=1)
    vals = corr[iu, ju] if len(iu) else np.array([])
    keep = np.isfinite(vals) & (np.abs(vals) >= threshold)
    edges = [
        {"source": nodes[i], "target": nodes[j], "weight": float(w)}
        for i, j, w in zip(iu[keep], ju[keep], vals[keep], strict=True)
    ]
    return {"nodes": nodes, "edges": edges}


@dataclass
class CorrelationResult(ResultMixin):
    """Correlation over one window: ``matrix[i][j]`` is corr(symbols[i], symbols[j]), None if undefined.

    ``observations`` is the number of aligned returns in the window; the matrix is
    computed only when it reaches ``min_observations`` (else ``insufficient_data``).
    """

    interval: str
    window: int
    threshold: float
    symbols: list[str]
    excluded: list[str]
    observations: int
    window_start: int | None
    window_end: int | None
    insufficient_data: bool
    matrix: list[list[float | None]] = field(default_factory=list)
    graph: dict[str, Any] = field(default_factory=dict)


def compute_correlation(
    candles_by_symbol: Mapping[str, pd.DataFrame],
    interval: str,
    windows: Sequence[int] = (60, 240, 1440),
    threshold: float = 0.7,
    min_observations: int | None = None,
) -> list[CorrelationResult]:
    """One result per window of ``windows`` bars.

    ``min_observations`` defaults to 90 % of the window (rounded up): a confirmed-missing
    candle or two (exchange outage) should not blank a day's correlation, while a
    window that is mostly empty must not pass for one.
    """
    step = interval_ms(interval)
    wide, excluded = aligned_returns(candles_by_symbol, interval)
    symbols = list(wide.columns)
    out: list[CorrelationResult] = []
    t = wide.index.to_numpy(dtype="int64")
    for w in windows:
        if w < 2:
            raise ValueError("window must be >= 2")
        need = math.ceil(0.9 * w) if min_observations is None else min_observations
        need = max(2, min(need, w))
        res = CorrelationResult(interval, w, threshold, symbols, excluded, 0, None, None, True)
        if len(t):
            end = int(t[-1])
            sub = wide[t > end - w * step]
            res.observations = len(sub)
            res.window_start = end - (w - 1) * step
            res.window_end = end + step
            if len(sub) >= need and symbols:
                corr = correlation_matrix(sub)
                res.matrix = [[json_float(v) for v in row] for row in corr]
                res.graph = correlation_graph(symbols, corr, threshold)
                res.insufficient_data = False
        if res.insufficient_data:
            res.matrix = [[None] * len(symbols) for _ in symbols]
            res.graph = {"nodes": symbols, "edges": []}
        out.append(res)
    return out
