"""Acceptance monitoring: a rolling acceptance rate per run, and an alert when it collapses.

What it is: the check that tells someone watching a run that drafting has gone wrong. The engine
feeds it every drafting round; when the acceptance rate over the last `window` rounds falls below
`drop` times the run's expectation, the round's record carries the flag `low-acceptance`.
The expectation is the tuned figure for the plan in use, else the sequential-drafting (N = 1)
figure measured for the pair (both from the tuning cache, `tuner/cache.py`), else a fixed floor.
`low_acceptance` is the alert the CLI prints and the dashboard shows, with `likely_cause`, which explains it
from the run's settings.
`FallbackGuard` acts on the alert when a run asks for it (`--on-low-acceptance fallback`): first
sequential drafting with every-round calibration, then no drafting at all if even that is slower
than the base alone. Either switch changes only the speed: every mode emits the base's tokens.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Sequence

from ..i18n import Msg, msg
from .records import RoundRecord

ALERT = "low-acceptance"
SEQUENTIAL = "fallback-sequential"  # after this round the run drafts sequentially (N = 1), calibrating every round
OFF = "fallback-off"  # after this round the run stops drafting (the base decodes alone)
BASE_TIMING = "base-timing"  # a base-only round that measured the base's own time per token for the guard
FLOOR = 0.2  # used when no figure was measured for this pair: below this, speculation rarely pays
DROP = 0.5  # "far below" the expectation: under half of it


@dataclass(frozen=True)
class Expectation:
    """What acceptance rate a run should reach, and where that figure comes from (for the message)."""

    rate: float
    source: str  # "measured" (by the tuner, for this pair) | "floor"

    @property
    def threshold(self) -> float:
        return self.rate * DROP if self.source != "floor" else self.rate


def expectation(rate: float) -> Expectation:
    """From SpecConfig.expected_acceptance (0 means nothing was measured for this pair)."""
    return Expectation(rate, "measured") if rate > 0 else Expectation(FLOOR, "floor")


class AcceptanceMonitor:
    def __init__(self, expected: Expectation, window: int = 12, min_drafted: int = 30):
        self.expected, self.window, self.min_drafted = expected, window, min_drafted
        self.recent: deque[tuple[int, int]] = deque(maxlen=window)  # (drafted, accepted) per round

    def update(self, drafted: int, accepted: int) -> tuple[str, ...]:
        """Feed one drafting round; returns the flags for its record."""
        self.recent.append((drafted, accepted))
        rate = self.rate()
        return (ALERT,) if rate is not None and rate < self.expected.threshold else ()

    def rate(self) -> float | None:
        """Rolling acceptance rate, once the window holds enough drafted tokens to judge."""
        drafted = sum(d for d, _ in self.recent)
        if len(self.recent) < self.window and drafted < self.min_drafted or drafted == 0:
            return None
        return sum(a for _, a in self.recent) / drafted


class FallbackGuard:
    """What `--on-low-acceptance fallback` does, one round record at a time.

    Stage "plan": the run drafts as configured; once `ROUNDS` drafting rounds in a row carry the
    low-acceptance alert, it switches to "sequential" (N = 1, every-round calibration: the draft's cache
    is exact again). Stage "sequential": once each of the last `ROUNDS` drafting rounds took longer per
    emitted token than the base's own time per token, drafting does not pay and it switches to "off".
    The base's time per token comes from the launch probe (`base_token_s`), else from one base-only
    round that the guard asks for right after the first switch (`wants_base_round`).
    """

    ROUNDS = 4

    def __init__(self, base_token_s: float = 0.0):
        self.stage = "plan"
        self.base_token_s = base_token_s if base_token_s > 0 else None
        self.low = 0
        self.recent: deque[float] = deque(maxlen=self.ROUNDS)  # seconds per emitted token, sequential rounds

    def drafts(self) -> bool:
        """May the next round draft?"""
        return self.stage != "off" and not self.wants_base_round()

    def wants_base_round(self) -> bool:
        return self.stage == "sequential" and self.base_token_s is None

    def update(self, flags: tuple[str, ...], drafted: bool, seconds: float, tokens: int) -> tuple[str, ...]:
        """Feed one finished round (its monitor flags, whether it drafted, its wall time and emitted tokens);
        returns the flags to add to its record: a switch takes effect from the next round."""
        if self.stage == "plan" and drafted:
            self.low = self.low + 1 if ALERT in flags else 0
            if self.low >= self.ROUNDS:
                self.stage = "sequential"
                return (SEQUENTIAL,)
        elif self.stage == "sequential" and not drafted and self.base_token_s is None and tokens:
            self.base_token_s = seconds / tokens
            return (BASE_TIMING,)
        elif self.stage == "sequential" and drafted and tokens:
            self.recent.append(seconds / tokens)
            if len(self.recent) == self.ROUNDS and min(self.recent) > self.base_token_s:
                self.stage = "off"
                return (OFF,)
        return ()


def fallback_summary(records: Sequence[RoundRecord]) -> str:
    """The run's fallback switches in one phrase ('' when there were none), for the run summary."""
    parts = [f"{what} after round {r.index}" for r in records for flag, what in
             ((SEQUENTIAL, "sequential drafting (N = 1, every-round calibration)"), (OFF, "drafting off"))
             if flag in r.flags]
    return "fallback: " + ", then ".join(parts) if parts else ""


def rolling_acceptance(records: Sequence[RoundRecord], window: int = 12) -> list[tuple[int, float]]:
    """(round index, rolling AR over the last `window` drafting rounds) for every drafting round."""
    out, recent = [], deque(maxlen=window)
    for r in records:
        if r.drafted:
            recent.append((len(r.drafted), r.accepted))
            out.append((r.index, sum(a for _, a in recent) / sum(d for d, _ in recent)))
    return out


def likely_cause(settings: dict, largest_group: int) -> Msg:
    """A plain sentence on why acceptance collapsed, from the run's settings (SpecConfig.as_dict())."""
    mode, policy = settings.get("mode"), settings.get("calibration")
    temperature = settings.get("sampling", {}).get("temperature", 0.0)
    if mode == "easyspec" and policy == "none" and largest_group > 1:
        return msg("with groups of up to {n} layers, calibration is off: fuzzy K/V entries pile up in the draft's "
                   "cache round after round. Turn calibration to every-round.", n=largest_group)
    if mode == "easyspec" and largest_group >= 5:
        return msg("groups of {n} layers are too large for this draft: its layers' inputs are no longer similar "
                   "enough. Use N = 4 or less, or the auto-tuned plan.", n=largest_group)
    if mode == "easyspec" and policy == "on-mismatch" and largest_group > 1:
        return msg("on-mismatch calibration leaves fuzzy entries in the cache after fully accepted rounds; "
                   "every-round calibration keeps the cache exact.")
    if temperature and temperature > 1.0:
        return msg("temperature {t} flattens both models' distributions, so they agree less often.", t=temperature)
    return msg("the draft disagrees with the base on this text (the prompt may be unlike what the draft does well); "
               "the output is still exactly the base model's.")


@dataclass(frozen=True)
class LowAcceptance:
    """A run's low-acceptance alert, as the CLI prints it and the dashboard shows it."""

    rate: float  # the lowest rolling acceptance among the flagged rounds
    flagged: int  # how many rounds carry the flag
    message: Msg  # the sentence: how low, against what, and the likely cause


def low_acceptance(records: Sequence[RoundRecord], settings: dict, largest_group: int) -> LowAcceptance | None:
    """The alert of a run so far (None while no round is flagged); `settings` as SpecConfig.as_dict()."""
    flagged = {r.index for r in records if ALERT in r.flags}
    if not flagged:
        return None
    rate = min(rate for index, rate in rolling_acceptance(records) if index in flagged)
    expected = expectation(float(settings.get("expected_acceptance", 0.0)))
    what = (msg("the {floor} floor (nothing was measured for this pair yet: run the tuner)", floor=f"{FLOOR:.0%}")
            if expected.source == "floor" else
            msg("the {rate} measured for this pair by the tuner", rate=f"{expected.rate:.0%}"))
    sentence = msg("Acceptance fell to {rate} over the last rounds, far below {what}. Likely cause: {cause}",
                   rate=f"{rate:.0%}", what=what, cause=likely_cause(settings, largest_group))
    return LowAcceptance(rate, len(flagged), sentence)
