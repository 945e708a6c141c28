"""A team's acceptance criteria for a pilot, and which settings meet them.

What it is: the speed/accuracy trade-off as numeric targets that the teams deciding on GPUs set
before a pilot: a minimum speedup over vanilla decoding, a maximum drop of the acceptance rate
against sequential drafting (speculative decoding at the same draft length k, the exact draft), and
whether greedy outputs must equal vanilla's token for token or may differ by a measured bf16
rounding tie (`engine/lossless.py`; a real difference never passes). `judge` checks each setting
of a pilot's summary (`pilot.summarise`) against them, on the measured speedups or, given them,
on projected ones (acceptance and equality are properties of the models and prompts, measured
either way).
What it is not: a UI or a report (the Pilot screen and the report show its verdicts).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

EQUALITY = ("required", "ties allowed")  # greedy outputs equal to vanilla's; or equal up to rounding ties


@dataclass(frozen=True)
class Criteria:
    min_speedup: float = 1.0  # tokens/s over vanilla's, on the same prompts
    max_acceptance_drop: float = 0.10  # relative: 0.10 = at most 10% below sequential drafting's rate
    equality: str = "ties allowed"

    def __post_init__(self) -> None:
        if not 0 < self.min_speedup <= 100:
            raise ValueError(f"minimum speedup must be above 0 and at most 100 (times vanilla's tokens/s); "
                             f"got {self.min_speedup}")
        if not 0 <= self.max_acceptance_drop <= 1:
            raise ValueError(f"maximum acceptance drop must be between 0 and 1 (a fraction of sequential "
                             f"drafting's rate); got {self.max_acceptance_drop}")
        if self.equality not in EQUALITY:
            raise ValueError(f"equality must be one of {', '.join(EQUALITY)}; got {self.equality!r}")


@dataclass(frozen=True)
class Judgement:
    """One setting against the criteria: each check True (met), False (not met) or None (does not apply:
    no figure to judge, e.g. no sequential drafting in the grid, or sampled runs for equality)."""

    setting: str
    speedup: float | None
    speedup_met: bool | None
    acceptance_drop: float | None  # relative to the reference's acceptance rate; negative = higher
    acceptance_met: bool | None
    equality_met: bool | None

    @property
    def met(self) -> bool | None:
        """Every check that applies is met (None when none applies)."""
        checks = [c for c in (self.speedup_met, self.acceptance_met, self.equality_met) if c is not None]
        return all(checks) if checks else None


def _equality(row: Mapping, criteria: Criteria) -> bool | None:
    counts = [row.get(f"greedy_{v}") for v in ("equal", "tie", "different")]
    if any(c is None for c in counts) or not sum(counts):
        return None  # no greedy check ran (sampling, or no vanilla run of the same prompts)
    _, ties, different = counts
    return different == 0 and (ties == 0 or criteria.equality == "ties allowed")


def judge(settings: Sequence[Mapping], criteria: Criteria,
          speedups: Mapping[str, float] | None = None) -> list[Judgement]:
    """Every setting but vanilla (the yardstick) against `criteria`. `settings`: summary rows with their
    `reference` (the sequential-drafting setting at the same k, `PilotSetting.reference`). `speedups`:
    projected speedups by setting label, judged instead of the measured ones."""
    by_label = {s["setting"]: s for s in settings}
    out = []
    for s in settings:
        if s["mode"] == "vanilla":
            continue
        speedup = s.get("speedup") if speedups is None else speedups.get(s["setting"])
        ref = by_label.get(s.get("reference") or "")
        drop = None
        if ref is not None and ref.get("acceptance_rate") and s.get("acceptance_rate") is not None:
            drop = round(1 - s["acceptance_rate"] / ref["acceptance_rate"], 4)
        out.append(Judgement(s["setting"], speedup, None if speedup is None else speedup >= criteria.min_speedup,
                             drop, None if drop is None else drop <= criteria.max_acceptance_drop,
                             _equality(s, criteria)))
    return out
