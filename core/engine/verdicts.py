"""A greedy output's verdict against the base's own greedy output: plain records and their counts.

What it is: `GreedyCheck` (equal, a rounding tie, or different, with the fp32 figures at the first
differing token), `first_difference`, and the counts and cells that summaries, reports and benchmarks
print. Plain values only (no torch), so that reports and figures read them anywhere.
What it is not: the check itself, which recomputes the base's logits in fp32 (`lossless.py`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

from ..i18n import msg

VERDICTS = ("equal", "tie", "different")


@dataclass(frozen=True)
class GreedyCheck:
    """One greedy output against the base's own greedy output (`reference`) of the same prompt.

    index: the first differing new token (None when equal). token / reference_token: the two sides' tokens
    there (None past the end of the shorter list). margin: fp32 logit of the higher of the two minus the
    other's; gap: fp32's top logit minus the lower of the two; allowed: the stated margin used; fp32_pick:
    fp32's own greedy token there; dtype: the session's dtype whose rounding the margin allows for.
    """

    verdict: str  # "equal" | "tie" | "different"
    dtype: str
    index: int | None = None
    token: int | None = None
    reference_token: int | None = None
    margin: float | None = None
    gap: float | None = None
    allowed: float | None = None
    fp32_pick: int | None = None

    def __post_init__(self) -> None:
        assert self.verdict in VERDICTS, self.verdict

    @property
    def fp32_picks_one(self) -> bool | None:
        """Whether fp32's greedy token is one of the two sides' tokens (None when nothing was recomputed)."""
        return None if self.fp32_pick is None else self.fp32_pick in (self.token, self.reference_token)

    def as_dict(self) -> dict:
        return {**asdict(self), "fp32_picks_one": self.fp32_picks_one}

    def describe(self) -> str:
        """One English line for logs and summaries."""
        if self.verdict == "equal":
            return "token for token equal"
        if self.margin is None:
            return f"different: the outputs differ in length at new token {self.index} (a bug)"
        what = "rounding tie" if self.verdict == "tie" else "different (a bug)"
        return (f"{what} at new token {self.index}: tokens {self.token} vs {self.reference_token}, fp32 margin "
                f"{self.margin:.3g}, gap to fp32's top {self.gap:.3g} vs {self.allowed:.3g} allowed in "
                f"{self.dtype}; fp32 picks {self.fp32_pick}")


def first_difference(a: Sequence[int], b: Sequence[int]) -> int | None:
    """The first index where the lists differ, the shorter one's length when one is a prefix of the other,
    or None when they are equal."""
    i = next((j for j, (x, y) in enumerate(zip(a, b)) if x != y), None)
    if i is not None:
        return i
    return None if len(a) == len(b) else min(len(a), len(b))


def count_verdicts(checks: Iterable[GreedyCheck | str | None]) -> dict[str, int]:
    """{"equal": n, "tie": m, "different": r} over checks (or their verdicts); None entries are skipped."""
    counts = dict.fromkeys(VERDICTS, 0)
    for c in checks:
        if c is not None:
            counts[c if isinstance(c, str) else c.verdict] += 1
    return counts


def counts_text(counts: dict[str, int]) -> str:
    """"n equal, m rounding ties, r different" (a `Msg`: the app translates it by its template)."""
    template = ("{equal} equal, {tie} rounding tie, {different} different" if counts["tie"] == 1
                else "{equal} equal, {tie} rounding ties, {different} different")
    return msg(template, equal=counts["equal"], tie=counts["tie"], different=counts["different"])


def same_column(counts: dict[str, int]) -> str:
    """A benchmark's "same as vanilla" cell: "5/5", or "5/5 (1 tie)" when ties are counted as the same
    output, and "3/5 (1 tie, 1 different)" when a real difference (a bug) is there."""
    total = sum(counts.values())
    same = counts["equal"] + counts["tie"]
    notes = [f"{counts['tie']} tie" + ("s" if counts["tie"] > 1 else "")] if counts["tie"] else []
    notes += [f"{counts['different']} different"] if counts["different"] else []
    return f"{same}/{total}" + (f" ({', '.join(notes)})" if notes else "")
