"""The statistics behind a verdict: two-sample tests, Holm's correction, power (pure functions).

Everything is vectorised over leading axes, so one call judges a thousand simulated studies
as fast as one real one (tests/test_verdicts.py runs the null simulation through here).
Values are per seed: ``a`` has shape (..., n_a), ``b`` (..., n_b).

* ``compare(a, b, paired)``: the difference of means A - B, its 95 % confidence interval,
  Hedges' g and the two-sided p-value of Welch's t-test (``paired=False``) or of the paired
  t-test over seeds (``paired=True``: a[i] and b[i] share seed i, hence init and data
  order), both from scipy.stats.
* ``holm(p)``: Holm's step-down adjustment over the last axis (the findings of one study).
* ``power``, ``mdd``, ``seeds_needed``: the power of the same test to find a true
  difference, from the noncentral t distribution, at the level a finding faces after Holm's
  first step (alpha / m): conservative, since Holm is never stricter than that.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import optimize, stats

ALPHA = 0.05
TARGET_POWER = 0.8
MAX_SEEDS = 1000  # seeds_needed answers "more than this" above it

REPRODUCED, CONTRADICTED, INCONCLUSIVE = "reproduced", "contradicted", "inconclusive"
WELCH, PAIRED = "Welch t", "paired t"


def _var(x: np.ndarray) -> np.ndarray:
    return np.var(x, axis=-1, ddof=1) if x.shape[-1] > 1 else np.full(x.shape[:-1], np.nan)


def hedges_g(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(mean A - mean B) / pooled std, times Hedges' small-sample correction
    1 - 3 / (4 (n_a + n_b) - 9): the difference in seed stds."""
    na, nb = a.shape[-1], b.shape[-1]
    if min(na, nb) < 2:
        return np.full(a.shape[:-1], np.nan)
    pooled = np.sqrt(((na - 1) * _var(a) + (nb - 1) * _var(b)) / max(na + nb - 2, 1))
    diff = a.mean(axis=-1) - b.mean(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.where(pooled > 0, diff / np.where(pooled > 0, pooled, 1.0),
                     np.where(diff == 0, 0.0, np.sign(diff) * np.inf))
    return d * (1 - 3 / (4 * (na + nb) - 9))


def compare(a: np.ndarray, b: np.ndarray, paired: bool) -> dict[str, np.ndarray]:
    """diff, ci_low, ci_high (95 %), g, p, df, sd (the std the test's noise is made of:
    pooled over the two groups for Welch, of the per-seed differences for paired)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    na, nb = a.shape[-1], b.shape[-1]
    diff = a.mean(axis=-1) - b.mean(axis=-1)
    out = {"diff": diff, "g": hedges_g(a, b)}
    nan = np.full(diff.shape, np.nan)
    if paired and na != nb:
        raise ValueError(f"a paired test needs as many A as B values, got {na} and {nb}")
    if min(na, nb) < 2:
        return {**out, "ci_low": nan, "ci_high": nan, "p": nan, "df": nan, "sd": nan}
    # Equal values (no noise) make the t statistic 0 / 0: handled below, not warned about.
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if paired:
            res = stats.ttest_rel(a, b, axis=-1)
            sd = np.std(a - b, axis=-1, ddof=1)
        else:
            res = stats.ttest_ind(a, b, axis=-1, equal_var=False)
            sd = np.sqrt((_var(a) + _var(b)) / 2)
        ci = res.confidence_interval(1 - ALPHA)
    p = np.asarray(res.pvalue, dtype=float)
    # No noise at all (up to float rounding): the test is undefined (0 / 0); a nonzero
    # difference is then certain.
    scale = np.maximum(np.abs(a).max(axis=-1), np.abs(b).max(axis=-1))
    sd = np.where(sd <= 1e-9 * np.maximum(scale, 1.0), 0.0, sd)
    exact = (sd == 0) & (diff != 0)
    p = np.where(exact, 0.0, p)
    low = np.where(exact, diff, np.asarray(ci.low, dtype=float))
    high = np.where(exact, diff, np.asarray(ci.high, dtype=float))
    return {**out, "ci_low": low, "ci_high": high, "p": p, "df": np.asarray(res.df, float),
            "sd": sd}


def holm(p: np.ndarray) -> np.ndarray:
    """Holm-adjusted p-values over the last axis; NaN (no test) is left out of the count."""
    p = np.asarray(p, dtype=float)
    valid = ~np.isnan(p)
    m = valid.sum(axis=-1, keepdims=True)
    order = np.argsort(np.where(valid, p, np.inf), axis=-1, kind="stable")
    sorted_p = np.take_along_axis(p, order, axis=-1)
    rank = np.arange(p.shape[-1])
    scaled = np.minimum(1.0, (m - rank) * sorted_p)
    scaled = np.where(np.isnan(scaled), np.inf, scaled)
    adjusted = np.maximum.accumulate(scaled, axis=-1)
    adjusted = np.where(np.isinf(adjusted), np.nan, adjusted)
    out = np.empty_like(adjusted)
    np.put_along_axis(out, order, adjusted, axis=-1)
    return np.where(valid, out, np.nan)


def words(p_holm: np.ndarray, diff: np.ndarray, sign: np.ndarray | int) -> np.ndarray:
    """reproduced (Holm p < 0.05, the paper's sign), contradicted (Holm p < 0.05, the other
    sign), inconclusive otherwise (including no test)."""
    significant = np.nan_to_num(np.asarray(p_holm, dtype=float), nan=1.0) < ALPHA
    agrees = np.sign(diff) == np.sign(sign)
    return np.where(significant & agrees, REPRODUCED,
                    np.where(significant, CONTRADICTED, INCONCLUSIVE))


_GRID = 64  # quantiles per seed variance in Welch's power (64 x 64 points)


def _welch_power(ncp: float, n: int, alpha: float) -> float:
    """Welch's power at equal n and equal variances, exactly up to the quadrature: given the
    two sample variances (s_a^2 / sd^2 = U_a, U_b ~ chi2(n - 1) / (n - 1)), the statistic is
    (Z + ncp) / sqrt((U_a + U_b) / 2) with Z standard normal, and the critical value is that
    of the Welch-Satterthwaite df (U_a + U_b)^2 (n - 1) / (U_a^2 + U_b^2), so the power given
    them is a normal probability; it is averaged over a quantile grid of U_a x U_b."""
    u = stats.chi2.ppf((np.arange(_GRID) + 0.5) / _GRID, n - 1) / (n - 1)
    ua, ub = np.meshgrid(u, u)
    scale = np.sqrt((ua + ub) / 2)
    t_crit = stats.t.ppf(1 - alpha / 2, (ua + ub) ** 2 * (n - 1) / (ua ** 2 + ub ** 2))
    return float(np.mean(stats.norm.cdf(ncp - t_crit * scale)
                         + stats.norm.cdf(-ncp - t_crit * scale)))


def power(effect: float, sd: float, n: int, paired: bool, alpha: float = ALPHA) -> float:
    """Probability that the two-sided test at `alpha` finds a true difference `effect` with
    n seeds per group, seed std `sd` (of the per-seed differences when paired): the
    noncentral t for the paired test, Welch's own df distribution for Welch (equal
    variances)."""
    if not (sd > 0) or n < 2 or not math.isfinite(effect):
        return math.nan
    ncp = effect / (sd * math.sqrt(2 / n)) if not paired else effect / (sd / math.sqrt(n))
    if abs(ncp) > 60:  # beyond what scipy's noncentral t evaluates; the power is 1
        return 1.0
    if not paired:
        return _welch_power(ncp, n, alpha)
    df = n - 1
    t_crit = stats.t.ppf(1 - alpha / 2, df)
    # Both tails as upper tails (P(T < -c | ncp) = P(T > c | -ncp)): scipy's nct.cdf returns
    # NaN in parts of the far lower tail, its sf does not.
    return float(np.nan_to_num(stats.nct.sf(t_crit, df, ncp))
                 + np.nan_to_num(stats.nct.sf(t_crit, df, -ncp)))


def mdd(sd: float, n: int, paired: bool, alpha: float = ALPHA,
        target: float = TARGET_POWER) -> float:
    """The minimum detectable difference: the true |A - B| found with probability `target`."""
    if not (sd > 0) or n < 2:
        return math.nan
    hi = sd
    while power(hi, sd, n, paired, alpha) < target:
        hi *= 2
    try:
        return float(optimize.brentq(lambda e: power(e, sd, n, paired, alpha) - target, 0.0,
                                     hi, xtol=1e-6 * sd))
    except ValueError:  # a power scipy could not evaluate: no number rather than a wrong one
        return math.nan


def seeds_needed(effect: float, sd: float, paired: bool, alpha: float = ALPHA,
                 target: float = TARGET_POWER) -> int | None:
    """The fewest seeds per group that find a true difference `effect` with probability
    `target`; None when more than MAX_SEEDS would be needed (or nothing is known)."""
    if not (sd > 0) or not math.isfinite(effect) or effect == 0:
        return None
    lo, hi = 2, MAX_SEEDS
    if power(abs(effect), sd, hi, paired, alpha) < target:
        return None
    while lo < hi:  # power grows with n
        mid = (lo + hi) // 2
        if power(abs(effect), sd, mid, paired, alpha) >= target:
            hi = mid
        else:
            lo = mid + 1
    return lo
