"""Means and 95% confidence intervals over seeds (Student t), for the seed aggregate, the report and the
figures' bands."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from streams.checks import is_number

# t_{0.975, df} for df = 1..30 (two-sided 95%); beyond, the Cornish-Fisher expansion (error < 3e-8).
_T975 = (12.7062047362, 4.3026527297, 3.1824463053, 2.7764451052, 2.5705818356, 2.4469118511, 2.3646242516,
         2.3060041352, 2.2621571628, 2.2281388520, 2.2009851601, 2.1788128297, 2.1603686565, 2.1447866879,
         2.1314495456, 2.1199052992, 2.1098155778, 2.1009220402, 2.0930240544, 2.0859634473, 2.0796138447,
         2.0738730679, 2.0686576104, 2.0638985616, 2.0595385528, 2.0555294386, 2.0518305165, 2.0484071418,
         2.0452296421, 2.0422724563)
_Z975 = 1.959963984540054


def t975(df: int) -> float:
    """The 0.975 quantile of Student's t with `df` degrees of freedom."""
    if df < 1:
        raise ValueError(f"df={df}: a t quantile needs at least one degree of freedom")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    g = ((z**3 + z) / 4, (5 * z**5 + 16 * z**3 + 3 * z) / 96, (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384,
         (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160)
    return z + sum(gi / df ** (i + 1) for i, gi in enumerate(g))


def mean_ci(values: Sequence) -> dict:
    """{mean, ci95 (half-width: t_{0.975, n-1} · s / sqrt(n); None for n < 2), std (sample, n − 1), n, values}
    over the finite numbers in `values` (None and NaN are a seed that has no value: a diverged arm)."""
    vals = [float(v) for v in values if is_number(v)]
    n = len(vals)
    if n == 0:
        return {"mean": None, "ci95": None, "std": None, "n": 0, "values": []}
    std = statistics.stdev(vals) if n > 1 else None
    ci = t975(n - 1) * std / math.sqrt(n) if n > 1 else None
    return {"mean": statistics.fmean(vals), "ci95": ci, "std": std, "n": n, "values": vals}


def mean_ci_text(stats: dict, digits: int = 4, missing: str = "-") -> str:
    """A `mean_ci` result as "mean ± ci95" to `digits` decimals: the mean alone for one value, `missing` for none."""
    if stats["mean"] is None:
        return missing
    return f"{stats['mean']:.{digits}f}" + (f" ± {stats['ci95']:.{digits}f}" if stats["ci95"] is not None else "")
