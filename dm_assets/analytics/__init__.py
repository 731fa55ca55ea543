"""Market analytics as plain pandas/numpy functions (no Dagster, no database).

One module per family, each with a ``compute_*`` entry point returning a small
dataclass whose ``to_dict()`` is JSON/BSON-safe (None for undefined values):
volatility, volume, spread (+ order-book imbalance), trend, correlation, funding.
"""

from dm_assets.analytics.correlation import CorrelationResult, compute_correlation
from dm_assets.analytics.funding import FundingResult, compute_funding
from dm_assets.analytics.spread import SpreadResult, compute_spread, order_book_imbalance
from dm_assets.analytics.trend import TrendResult, compute_trend
from dm_assets.analytics.volatility import VolatilityResult, compute_volatility, periods_per_year
from dm_assets.analytics.volume import VolumeResult, compute_volume

__all__ = [
    "CorrelationResult",
    "FundingResult",
    "SpreadResult",
    "TrendResult",
    "VolatilityResult",
    "VolumeResult",
    "compute_correlation",
    "compute_funding",
    "compute_spread",
    "compute_trend",
    "compute_volatility",
    "compute_volume",
    "order_book_imbalance",
    "periods_per_year",
]
