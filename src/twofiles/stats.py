"""Intervals for rates measured on small samples, shared by every report that counts successes.

What it owns: the Wilson score interval (`wilson`). Why Wilson: with 30-60 trials and rates near 0
or 1 (common in red-team and reversal-curse tables), the normal approximation's interval leaves
[0, 1] or collapses to a point; Wilson's stays inside and keeps its coverage (Brown, Cai &
DasGupta 2001, "Interval Estimation for a Binomial Proportion").
"""

from __future__ import annotations

import math

Z95 = 1.959963984540054  # the normal quantile of 0.975: a two-sided 95% interval


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of k successes in n trials; (0, 1) when n is 0."""
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= k <= n:
        raise ValueError(f"k={k} successes out of n={n}")
    p = k / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    # clamp float noise: at k = 0 the lower end is exactly 0, at k = n the upper exactly 1
    return max(0.0, centre - half) if k else 0.0, min(1.0, centre + half) if k < n else 1.0
