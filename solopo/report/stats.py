"""How far a sub-EM measured on few questions can be trusted: 95% intervals for a share of right answers, and for
the change between two models answering the same questions.

Every function is pure arithmetic on counts. A sub-EM score is 0 or 1 per question, so a cell of a table is a
binomial proportion k / n; before/after tables answer the same cases, so their difference is a paired one.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Sequence

Z95 = 1.959964  # the standard normal's 97.5% quantile: a two-sided 95% interval


def wilson(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion p = k / n (Wilson 1927):

        (p + z^2 / 2n  ±  z * sqrt(p (1 - p) / n + z^2 / 4n^2)) / (1 + z^2 / n)

    Unlike p ± z * sqrt(p (1 - p) / n) it stays inside [0, 1] and is not zero-wide at 0 of n or n of n, which
    matters for the few questions of a small evaluation. (nan, nan) for n = 0."""
    if n <= 0:
        return float("nan"), float("nan")
    p, zz = successes / n, z * z
    centre = p + zz / (2 * n)
    half = z * math.sqrt(p * (1 - p) / n + zz / (4 * n * n))
    return max(0.0, (centre - half) / (1 + zz / n)), min(1.0, (centre + half) / (1 + zz / n))


def equal_weight_mean(shares: Sequence[float], ns: Sequence[int], z: float = Z95) -> tuple[float, float, float]:
    """The mean of k groups' shares, each counted once (a benchmark's average over its subsets), and its 95% interval
    by MOVER (Zou and Donner 2008: the variance of a sum recovered from each term's own interval), from each group's
    Wilson interval [l_i, u_i]:

        m = (1/k) sum p_i,   [m - sqrt(sum (p_i - l_i)^2) / k,   m + sqrt(sum (u_i - p_i)^2) / k]

    Like Wilson's, it is not zero-wide where every group scored 0 or 1 (a normal interval from p_i (1 - p_i) / n_i
    would be); (nan, nan, nan) without groups or with an empty one."""
    if not shares or any(n <= 0 for n in ns):
        return float("nan"), float("nan"), float("nan")
    k = len(shares)
    bounds = [wilson(p * n, n, z) for p, n in zip(shares, ns)]
    mean = sum(shares) / k
    below = math.sqrt(sum((p - low) ** 2 for p, (low, _) in zip(shares, bounds))) / k
    above = math.sqrt(sum((high - p) ** 2 for p, (_, high) in zip(shares, bounds))) / k
    return mean, max(0.0, mean - below), min(1.0, mean + above)


@dataclass(frozen=True)
class Change:
    """after - before on n paired cases: the observed difference of the two shares and its 95% interval."""

    difference: float
    low: float
    high: float
    n: int

    @property
    def within_noise(self) -> bool:
        """Whether the interval holds 0: the data cannot tell this change from none."""
        return self.low <= 0.0 <= self.high


def paired_change(before: Sequence[float], after: Sequence[float], z: float = Z95) -> Change:
    """The change in the share of right answers between two models scored 0/1 on the same n cases, with the
    Agresti-Min interval (2005) for a difference of matched proportions: with b cases right only before and c right
    only after, add 1/2 to each of the four cells of the 2x2 table (n' = n + 2, b' = b + 1/2, c' = c + 1/2), then

        (c' - b') / n'  ±  z * sqrt((b' + c') - (c' - b')^2 / n') / n'

    The plain Wald interval (no 1/2s) is zero-wide when no case changed, as if a handful of
    questions gave certainty; the adjusted one is not. The reported difference is the observed (c - b) / n."""
    if len(before) != len(after):
        raise ValueError(f"paired_change: the same cases before and after, not {len(before)} and {len(after)}")
    n = len(before)
    if n == 0:
        return Change(float("nan"), float("nan"), float("nan"), 0)
    b = sum(1 for x, y in zip(before, after) if x and not y)
    c = sum(1 for x, y in zip(before, after) if y and not x)
    bb, cc, nn = b + 0.5, c + 0.5, n + 2
    centre = (cc - bb) / nn
    half = z * math.sqrt(max(bb + cc - (cc - bb) ** 2 / nn, 0.0)) / nn
    return Change((c - b) / n, max(-1.0, centre - half), min(1.0, centre + half), n)


def paired_bootstrap(differences: Sequence[Sequence[float]], draws: int = 4000, seed: int = 0,
                     level: float = 0.95) -> Change:
    """The mean of paired differences over seeds and questions, with a percentile interval from a two-level
    bootstrap: ``differences[s][q]`` is the difference of two settings' scores on question q under seed s (both ran
    the same seeds and were asked the same questions). Each draw resamples the seeds with replacement, then, in each seed it
    took, that seed's questions with replacement, and takes

        mean over the drawn seeds of (mean over the drawn questions of d[s][q])

    so the interval holds both sources of spread: which questions were asked and how a training run turned out
    (Davison & Hinkley 1997, sec. 3.8, the nested bootstrap of a two-stage sample). With one seed it is the bootstrap
    over questions alone. The reported difference is the observed mean over seeds of each seed's mean; n counts every
    (seed, question) pair. Repeatable: the draws come from ``seed``."""
    import numpy as np

    groups = [np.asarray(d, dtype=float) for d in differences if len(d)]
    if not groups:
        return Change(float("nan"), float("nan"), float("nan"), 0)
    rng, n_seeds = np.random.default_rng(seed), len(groups)
    observed = float(np.mean([g.mean() for g in groups]))
    # per seed, (draws, n_seeds) question-resampled means: one for each slot a draw may put that seed in
    means = np.stack([g[rng.integers(0, len(g), (draws, n_seeds, len(g)))].mean(-1) for g in groups])
    slots = rng.integers(0, n_seeds, (draws, n_seeds))  # which seed each slot of a draw takes
    values = means[slots, np.arange(draws)[:, None], np.arange(n_seeds)[None, :]].mean(-1)
    low, high = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return Change(observed, float(low), float(high), sum(len(g) for g in groups))


@functools.lru_cache(maxsize=None)  # pure, and a report asks the same few (0.975, seeds - 1) for every cell
def t_quantile(p: float, df: int) -> float:
    """The p-quantile (p > 0.5) of Student's t distribution with ``df`` degrees of freedom: the t at which

        F(t) = 1/2 + integral from 0 to t of  Gamma((df + 1) / 2) / (sqrt(df pi) Gamma(df / 2)) (1 + x^2 / df)^-(df + 1)/2  dx

    equals p, the integral by Simpson's rule on 2,000 intervals, t by bisection. 12.7062 for (0.975, 1), 2.7764 for
    (0.975, 4), Z95 as df grows."""
    if not 0.5 < p < 1 or df < 1:
        raise ValueError(f"t_quantile: needs 0.5 < p < 1 and df >= 1, got p={p}, df={df}")
    log_scale = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    density = lambda x: math.exp(log_scale - (df + 1) / 2 * math.log1p(x * x / df))  # noqa: E731

    def cdf(t: float, steps: int = 2000) -> float:
        h = t / steps
        inner = sum((4 if i % 2 else 2) * density(i * h) for i in range(1, steps))
        return 0.5 + h / 3 * (density(0.0) + inner + density(t))

    low, high = 0.0, 1.0
    while cdf(high) < p:
        low, high = high, 2 * high
    for _ in range(60):
        low, high = (low, (low + high) / 2) if cdf((low + high) / 2) >= p else ((low + high) / 2, high)
    return (low + high) / 2


def over_seeds(differences: Sequence[Sequence[float]], level: float = 0.95) -> Change | None:
    """The mean of paired differences with the t interval over the seeds' means: each seed s contributes
    m_s = mean over its questions of d[s][q], and with G seeds

        mean(m)  ±  t(G - 1) * sd(m) / sqrt(G)        (sd with G - 1 in the denominator)

    Each m_s carries both sources of spread (its questions and its training run), so this is the textbook interval
    for a clustered sample analysed by its cluster means. With few seeds it is the honest one: a bootstrap that
    resamples 3-5 seeds sees (G - 1) / G of their variance and takes the normal quantile, which t(G - 1) exceeds
    1.4 times at G = 5 and 2.2 times at G = 3 (Cameron, Gelbach & Miller 2008 on inference with few clusters). None with fewer than 2
    seeds: one seed says nothing about how another training run turns out."""
    means = [sum(d) / len(d) for d in differences if len(d)]
    if len(means) < 2:
        return None
    g = len(means)
    centre = sum(means) / g
    sd = math.sqrt(sum((m - centre) ** 2 for m in means) / (g - 1))
    half = t_quantile((1 + level) / 2, g - 1) * sd / math.sqrt(g)
    return Change(centre, centre - half, centre + half, sum(len(d) for d in differences))
