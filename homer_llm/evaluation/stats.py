"""Statistics for the evaluation report: Wilson intervals for accuracy, a normal band for perplexity,
and an exact McNemar test for two methods answering the same samples."""

from __future__ import annotations

import math
from collections.abc import Sequence

Z95 = 1.959963984540054


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95% by default).

    Returns (low, high) in [0, 1]; (0.0, 1.0) when ``n == 0`` (nothing is known).
    """
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # min/max with p: rounding must not put the bound on the wrong side of the estimate (0/n, n/n)
    return min(p, max(0.0, centre - half)), max(p, min(1.0, centre + half))


def perplexity_interval(mean_nlls: Sequence[float], z: float = Z95) -> tuple[float, float, float]:
    """Perplexity of equal-length samples and a normal-approximation 95% band.

    Args:
        mean_nlls: per-sample mean negative log-likelihood (nats per token); every sample scores
            the same number of tokens, so the pooled perplexity is exp(mean of these).
    Returns:
        (ppl, low, high); with a single sample the band collapses to the point.
    """
    n = len(mean_nlls)
    if n == 0:
        raise ValueError("perplexity of zero samples")
    mean = sum(mean_nlls) / n
    if n == 1:
        return math.exp(mean), math.exp(mean), math.exp(mean)
    var = sum((x - mean) ** 2 for x in mean_nlls) / (n - 1)
    half = z * math.sqrt(var / n)
    return math.exp(mean), math.exp(mean - half), math.exp(mean + half)


def mcnemar_exact(only_first: int, only_second: int) -> float:
    """Two-sided exact McNemar p-value for paired right/wrong outcomes.

    Args:
        only_first, only_second: the discordant samples, right for one method only.
    Returns:
        The probability, if both methods were equally good, of a split at least this uneven
        (binomial with p = 1/2 on the discordant samples); 1.0 when there are none.
    """
    if only_first < 0 or only_second < 0:
        raise ValueError(f"counts must be >= 0, got {only_first}, {only_second}")
    n = only_first + only_second
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(only_first, only_second) + 1)) / 2**n
    return min(1.0, 2.0 * tail)
