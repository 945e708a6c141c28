"""The tuner's settings and results: what a tuning is asked to do and what it found.

What it is: `TuneConfig` (the knobs, checked when built), `Candidate` (one plan's measured
acceptance and drafting time), `PolicyResult` (one calibration policy on the chosen plan) and
`TuneResult` (the choice, every measured candidate, and its JSON form for the cache). What it is
not: how any of them is computed (`tune.py` and the modules it calls) or stored (`cache.py`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..settings import check_finite


@dataclass(frozen=True)
class TuneConfig:
    tolerance: float = 0.05  # relative acceptance-rate loss allowed against N = 1
    max_group: int = 8  # largest group (on G devices: at most G)
    draft_len: int = 5
    max_new_tokens: int = 32
    thresholds: int = 12  # similarity thresholds swept
    policies: bool = True  # also measure the calibration policies with the real base
    exhaustive: bool = False  # measure every candidate, not only those with no more steps than the choice
    search: int = 120  # probes the boundary search may spend (0: candidates only)
    probe_rounds: int = 256  # simulated drafting rounds per probe (spread over the outputs)
    holdout: bool = True  # measure acceptance on the half of the prompts the search did not see

    def __post_init__(self) -> None:
        check_finite(self.tolerance, "--tolerance")
        if not 0.0 <= self.tolerance < 1.0:
            raise ValueError(f"--tolerance must be between 0 and 1 (a relative loss); got {self.tolerance}")
        if self.max_group < 1:
            raise ValueError(f"--max-group must be >= 1; got {self.max_group}")
        if self.search < 0 or self.probe_rounds < 1:
            raise ValueError(f"--search must be >= 0 and --probe-rounds >= 1; got {self.search} and {self.probe_rounds}")
        if self.draft_len < 1 or self.max_new_tokens < 2:
            raise ValueError("the tuner needs --draft-len >= 1 and --max-new-tokens >= 2")


@dataclass(frozen=True)
class Candidate:
    plan: str
    steps: int  # sequential draft steps per drafted token (groups in the plan)
    origin: str  # "sequential" | "equal N=4" | "similarity >= 0.93" | "search from equal N=5"
    drafted: int
    accepted: int
    draft_s: float  # measured drafting seconds, all prompts
    probe: float = 0.0  # Probe.acceptance: the predicted acceptance rate
    per_prompt: tuple[tuple[int, int], ...] = ()  # (accepted, drafted) per measured prompt

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def draft_s_per_token(self) -> float:
        return self.draft_s / self.drafted if self.drafted else 0.0


@dataclass(frozen=True)
class PolicyResult:
    policy: str
    acceptance_rate: float
    tokens_per_s: float  # median over prompts, real base
    calibrate_s: float


@dataclass(frozen=True)
class TuneResult:
    plan: str
    acceptance_rate: float
    baseline_rate: float  # N = 1, same run
    steps: int
    sequential_steps: int
    tolerance: float
    candidates: tuple[Candidate, ...]
    policies: tuple[PolicyResult, ...] = ()
    recommended_policy: str = "every-round"
    adjacent_similarity: tuple[float, ...] = ()  # S[l, l + 1]
    pair: dict = field(default_factory=dict)
    created: str = ""
    prompts: int = 0  # calibration prompts in all
    held_out: int = 0  # of them, measured only (the search did not see them); 0: search and measure on all
    unmeasured: int = 0  # plans not drafted: more steps than the choice, or a hopeless probe (TuneConfig.exhaustive)
    probed: int = 0  # plans the probe scored (candidates and search)
    draft_len: int = 5  # k of every measured round: acceptance rates hold for this draft length

    @property
    def predicted_saving(self) -> float:
        """Fraction of sequential draft steps saved against N = 1 (the fuzzy groups' whole point)."""
        return 1 - self.steps / self.sequential_steps

    def expected_rate(self, plan: str, policy: str) -> float:
        """The acceptance rate a run of (plan, policy) should reach: measured if tuned, else N = 1's."""
        for p in self.policies:
            if plan == self.plan and p.policy == policy:
                return p.acceptance_rate
        if policy == "every-round":
            for c in self.candidates:
                if c.plan == plan:
                    return c.acceptance_rate
        return self.baseline_rate

    def as_dict(self) -> dict:
        d = asdict(self)
        for c, cd in zip(self.candidates, d["candidates"]):
            cd["acceptance_rate"] = c.acceptance_rate
            cd["draft_s_per_token"] = c.draft_s_per_token
        d["predicted_saving"] = self.predicted_saving
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TuneResult":
        keep = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        cand = tuple(Candidate(**{**{k: v for k, v in c.items() if k in Candidate.__dataclass_fields__},
                                  "per_prompt": tuple(map(tuple, c.get("per_prompt", ())))}) for c in d["candidates"])
        return cls(**{**keep, "candidates": cand, "policies": tuple(PolicyResult(**p) for p in d["policies"]),
                      "adjacent_similarity": tuple(d["adjacent_similarity"])})
