"""Spread and uncertainty of a number measured over seeds, for reports.

    s = over_seeds([55.8, 48.0, 47.1])     # Spread(mean=50.3, std=4.8, low=38.4, high=62.2, n=3)
    d = paired({0: 60.0, 1: 52.0}, {0: 55.8, 1: 48.0})   # the per-seed differences a - b, same summary

The interval is a two-sided 95% Student t interval over seeds: mean ± t(0.975, n-1) x std / sqrt(n),
std the sample standard deviation (n-1). It treats each seed's number as one draw of the whole
procedure (data sample, generation, fine-tuning), so it covers seed-to-seed variation; with three
seeds t is 4.30 and the intervals are wide, which is the honest width of three seeds. A paired
difference takes the difference per shared seed first, so what both arms share (the seed's splits
and sampling) cancels.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

# t(0.975, df) for df = 1..30; above 30 the normal quantile (within 2% of t).
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)


def t_975(df: int) -> float:
    return T_975[df - 1] if df <= len(T_975) else statistics.NormalDist().inv_cdf(0.975)


@dataclass(frozen=True)
class Spread:
    """Mean, sample standard deviation and 95% interval of n values (std and interval None for n < 2)."""

    mean: float
    std: float | None
    low: float | None
    high: float | None
    n: int


def over_seeds(values: list[float | None]) -> Spread | None:
    """The spread of the known values (None: no value at all)."""
    xs = [float(v) for v in values if isinstance(v, (int, float))]
    if not xs:
        return None
    mean = statistics.fmean(xs)
    if len(xs) < 2:
        return Spread(mean, None, None, None, len(xs))
    std = statistics.stdev(xs)
    half = t_975(len(xs) - 1) * std / math.sqrt(len(xs))
    return Spread(mean, std, mean - half, mean + half, len(xs))


def paired(a: dict, b: dict) -> Spread | None:
    """The spread of a[seed] - b[seed] over the seeds both have a value for (None: no shared seed)."""
    shared = sorted(k for k in a if k in b and a[k] is not None and b[k] is not None)
    return over_seeds([a[k] - b[k] for k in shared])
