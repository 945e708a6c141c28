"""The tuner's statistics: splitting the prompts, pooled acceptance rates and their spread.

What it is: the halves of the calibration prompts (`split`: search and confirmation), the pooled
acceptance rate over prompts, a paired bootstrap interval of a plan's change against N = 1, and
the sentence that says whether two such changes agree (`change_agreement`, for the tuner's report
and benchmarks/tuning.py). What it is not: where the counts come from (`measure.py`) or the
report around them (`report.py`).
"""
from __future__ import annotations

import random
from typing import Sequence


def split(prompts: Sequence, holdout: bool) -> tuple[list, list]:
    """(search half, confirmation half), alternately; without holdout or with one prompt, one list twice."""
    if not holdout or len(prompts) < 2:
        both = list(prompts)
        return both, both
    return list(prompts[0::2]), list(prompts[1::2])


def pooled_rate(pairs: Sequence[tuple[int, int]], idx: Sequence[int]) -> float:
    """Accepted per drafted token over the prompts `idx` of (accepted, drafted) per prompt."""
    return sum(pairs[i][0] for i in idx) / max(sum(pairs[i][1] for i in idx), 1)


def paired_interval(runs: Sequence[tuple[int, int]], base: Sequence[tuple[int, int]], level: float = 0.9,
                    draws: int = 2000) -> tuple[float, float] | None:
    """Bootstrap interval of a plan's acceptance rate relative to the baseline's, minus one.

    `runs` and `base` hold (accepted, drafted) per prompt, the same prompts in the same order; the
    prompts are resampled in pairs, so what both plans find hard cancels out. None with fewer than
    two prompts (or counts that do not pair up, e.g. a tuning cached before they were kept).
    """
    n = len(base)
    if n < 2 or len(runs) != n:
        return None
    rng, ratios = random.Random(0), []
    for _ in range(draws):
        idx = [rng.randrange(n) for _ in range(n)]
        ref = pooled_rate(base, idx)
        ratios.append(pooled_rate(runs, idx) / ref - 1 if ref else 0.0)
    ratios.sort()
    tail = (1 - level) / 2
    return ratios[int(tail * draws)], ratios[int((1 - tail) * draws) - 1]


def change_agreement(earlier: float, later: float, band: Sequence[float] | None, earlier_where: str,
                     later_where: str, subject: str = "the chosen plan") -> str:
    """One sentence on a plan's change against N = 1 found twice, worded from the numbers: they agree
    when the earlier figure lies inside the later one's 90% interval `band` (the later prompts' spread
    alone could move it that far); otherwise which way the later one moved, and how far (in points)."""
    gap = 100 * abs(later - earlier)
    both = (f"Against N = 1 {subject} changed acceptance by {later:+.1%} {later_where} and by {earlier:+.1%} "
            f"{earlier_where}")
    if band is not None and band[0] <= earlier <= band[1]:
        return (f"{both}: they agree within {gap:.1f} points ({earlier:+.1%} lies inside the 90% interval "
                f"{band[0]:+.1%} .. {band[1]:+.1%} {later_where}).")
    outside = f", outside the 90% interval {band[0]:+.1%} .. {band[1]:+.1%}" if band is not None else ""
    if later < earlier:
        return f"{both}: {later_where} it lost {gap:.1f} points more than {earlier_where}{outside}."
    if later > earlier:
        return f"{both}: {later_where} it did {gap:.1f} points better than {earlier_where}{outside}."
    return f"{both}: the same change."
