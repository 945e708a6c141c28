"""Auto-tuning the draft's layer plan and the calibration policy, cached per model pair.

What it does, from a few calibration prompts (greedy). With two prompts or more they are split in
two halves (alternately, so a mixed set mixes both): steps 1-3 see only the search half, steps 4-6
only the other, the confirmation half. A search that picks the best of many plans on the same
prompts it then measures them on is optimistic (the winner's curse: a plan chosen at -1% lost 6%
on other prompts); the confirmation half measures each plan without that bias.
1. Similarity. One exact draft forward per prompt records every layer's input hidden state h_l.
   S[a, l] is the mean cosine, over prompt tokens, between what layer l's attention would read in
   a fuzzy group starting at a (RMSNorm_in_l(h_a)) and what it reads exactly (RMSNorm_in_l(h_l)).
2. Candidates. For thresholds t swept over the measured similarities, a plan grows each group from
   its first layer a while S[a, l] >= t (and the group is at most `max_group` layers); the equal
   plans of N = 2..6 join them. N = 1 (sequential drafting) is the baseline.
3. Probe and search. The `Probe` predicts a plan's acceptance rate in one batched forward per
   prompt, simulating a drafting round from every output position (see the class). Every candidate
   is probed; then the search bisects the step count between the fewest steps that look plausible
   and the fewest within tolerance on the probe: at each count, the best of its candidates and a
   balanced plan is improved by hill climbing (move one group boundary by one layer while the probe
   improves), until the bisection ends or `search` probes are spent.
4. Acceptance. The baseline, then the plans from the fewest steps up (at each step count the
   `MEASURED_PER_STEPS` best on the probe), draft the confirmation prompts in the same run, until a
   step count has a plan within tolerance (or all: `exhaustive`); plans whose probe is more than
   twice the tolerance below N = 1's are not drafted. The base's greedy output is computed once
   per prompt and played back (`ReplayBase`): greedy acceptance depends only on that output, so
   each plan costs draft forwards only, and the counts equal those of a full run (a test checks
   this).
5. Choice: the plan with the fewest sequential draft steps whose measured acceptance rate is within
   `tolerance` (relative) of the baseline; ties go to the higher acceptance rate.
6. Calibration. The chosen plan runs every-round, on-mismatch and none with the real base; the
   recommendation is the fastest policy whose acceptance stays within tolerance.
The result is written (atomically) to the cache under a key of both models' configs and the dtype,
where `--groups auto` and the acceptance monitor find it.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import random
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch

from ..engine.decoder import Decoder, ForwardOptions, Group, TreeAttention
from ..files import write_text_atomic
from ..engine.loop import CALIBRATION_POLICIES, SpecConfig, Stopping, generate
from ..engine.grouping import describe, layer_groups, parse_plan
from ..engine.metrics import compute
from ..engine.sampling import check_finite

EQUAL_SIZES = (2, 3, 4, 5, 6)
MEASURED_PER_STEPS = 1  # plans drafted per step count: the probe ranks them on the search half, the
# confirmation half only accepts or rejects (keeping the better of two there let luck choose)
DRAFT_PHASES = ("draft.attn", "draft.mlp", "draft.comm")


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


# -- similarity ------------------------------------------------------------------------------------
def layer_inputs(draft: Decoder, prompt_ids: Sequence[int]) -> torch.Tensor:
    """[L, T, D]: the input hidden state of every draft layer on an exact forward of the prompt."""
    taps: list[torch.Tensor] = []
    tokens = torch.tensor(list(prompt_ids), dtype=torch.long, device=draft.device)
    with torch.inference_mode():
        draft.forward(tokens, 0, draft.new_cache(len(prompt_ids)), ForwardOptions(logits=False, taps=taps))
    return torch.stack(taps).float()


def similarity(draft: Decoder, prompts: Sequence[Sequence[int]]) -> torch.Tensor:
    """S [L, L]: S[a, l] = mean cosine of RMSNorm_in_l(h_a) and RMSNorm_in_l(h_l) (a <= l), over all tokens."""
    n = draft.cfg.n_layers
    total, count = torch.zeros(n, n), 0
    w = draft.w.norm_in.float()  # [L, D]; the RMS scale itself cannot change a cosine
    for ids in prompts:
        h = layer_inputs(draft, ids)  # [L, T, D]
        for l in range(n):
            x = h[: l + 1] * w[l]  # what layer l's attention reads from inputs h_0..h_l
            total[: l + 1, l] += torch.nn.functional.cosine_similarity(x, x[l:l + 1], dim=-1).sum(-1)
        count += h.shape[1]
    return total / count


def steps_of(plan: str) -> int:
    """Sequential draft steps of a plan written '0|1-4|5-8|9': its number of groups."""
    return plan.count("|") + 1


def similarity_plan(s: torch.Tensor, threshold: float, max_group: int) -> tuple[Group, ...]:
    """Grow each group from its first layer a while S[a, l] >= threshold and it has room."""
    n, groups, a = s.shape[0], [], 0
    while a < n:
        b = a + 1
        while b < n and b - a < max_group and s[a, b] >= threshold:
            b += 1
        groups.append((a, b))
        a = b
    return tuple(groups)


def candidate_plans(s: torch.Tensor, n_layers: int, max_group: int, thresholds: int) -> dict[str, str]:
    """Distinct plans (text -> origin), ordered by step count: equal groups first, then similarity."""
    plans: dict[str, str] = {}
    for size in EQUAL_SIZES:
        if size <= min(max_group, n_layers - 2):
            plans.setdefault(describe(layer_groups(n_layers, size)), f"equal N={size}")
    pairs = torch.cat([s.diagonal(d) for d in range(1, min(max_group, n_layers))])
    for t in torch.quantile(pairs, torch.linspace(0.05, 0.95, thresholds)).tolist():
        plan = similarity_plan(s, t, max_group)
        if len(plan) < n_layers:
            plans.setdefault(describe(plan), f"similarity >= {t:.3f}")
    return dict(sorted(plans.items(), key=lambda kv: steps_of(kv[0])))


# -- probe: one fuzzy step on exact context, teacher-forced ---------------------------------------
class Probe:
    """A plan's drafting rounds simulated at every output position of the base's greedy outputs.

    A drafting round that starts at position p has exact context before p (calibration); its first
    proposal comes from the exact forward, and each later one feeds the previous token through the
    plan's fuzzy groups, attending to the exact K/V before p and the round's own fuzzy K/V. The
    probe runs such a round from every start p at once, teacher-forced on the base's output: the
    exact K/V of the whole sequence sit in the cache, then one forward runs all rounds' tokens as
    chains (TreeAttention: token p + j at its own position sees the exact slots before p, and the
    chain's tokens p..p+j). The round accepts the longest run of proposals that match the base's
    tokens; the mean over starts, per drafted token, predicts the acceptance rate. A plan costs one
    batched forward per reference instead of a drafting run, so many plans can be compared; each
    chain token's logits equal the engine's own draft step (a test checks this).
    """

    def __init__(self, draft: Decoder, references: Sequence[tuple[list[int], list[int]]], draft_len: int,
                 max_rounds: int = 0):
        """max_rounds > 0: start a round only every k-th position, k chosen so that at most that many run."""
        self.draft, self.draft_len, self.items = draft, draft_len, []
        chain = draft_len - 1  # fuzzy proposals per round after the exact first one
        total = sum(max(len(out) - draft_len + 1, 0) for _, out in references)
        stride = -(-total // max_rounds) if max_rounds > 0 else 1
        for prompt, out in references:
            seq = torch.tensor(list(prompt) + list(out), dtype=torch.long, device=draft.device)
            starts = torch.arange(len(prompt), len(seq) - draft_len + 1, stride, device=draft.device)
            if starts.numel() == 0:
                continue
            offsets = starts[:, None] + torch.arange(chain, device=draft.device)[None, :]  # [S, chain] positions
            cache = draft.new_cache(len(seq) + starts.numel() * chain)
            with torch.inference_mode():
                exact = draft.forward(seq, 0, cache, ForwardOptions(all_logits=True))
            first = exact[starts - 1].argmax(-1) == seq[starts]  # [S] the round's exact first proposal
            self.items.append((cache, seq, starts, offsets, first))

    @property
    def rounds(self) -> int:
        return sum(item[2].numel() for item in self.items)

    def logits(self, groups: Sequence[Group]) -> Iterator[torch.Tensor]:
        """Per reference, [starts, draft_len - 1, vocab]: each round's fuzzy proposals, teacher-forced."""
        for cache, seq, starts, offsets, _ in self.items:
            length, (n, chain) = cache.length, offsets.shape
            if chain == 0:
                yield torch.zeros(n, 0, self.draft.cfg.vocab_size)
                continue
            node = torch.arange(n * chain)
            visible = (node[:, None] // chain == node[None, :] // chain) & (node[None, :] <= node[:, None])
            tree = TreeAttention(offsets.reshape(-1).cpu(), visible, starts.repeat_interleave(chain).cpu())
            with torch.inference_mode():
                logits = self.draft.forward(seq[offsets.reshape(-1)], length, cache,
                                            ForwardOptions(groups=groups, all_logits=True, tree=tree))
            cache.crop(length)
            yield logits.view(n, chain, -1)

    def acceptance(self, groups: Sequence[Group]) -> float:
        """Predicted acceptance rate: accepted proposals per drafted token, over all simulated rounds."""
        accepted = 0
        for logits, (_, seq, _, offsets, first) in zip(self.logits(groups), self.items):
            match = torch.cat([first[:, None], logits.argmax(-1) == seq[offsets + 1]], dim=1)  # [S, draft_len]
            accepted += int(match.long().cumprod(1).sum())
        return accepted / max(self.rounds * self.draft_len, 1)


def neighbours(groups: Sequence[Group], max_group: int) -> Iterator[tuple[Group, ...]]:
    """The plans one boundary move away: one group gives its edge layer to its neighbour."""
    edges = [g[0] for g in groups] + [groups[-1][1]]
    for i in range(1, len(edges) - 1):
        for d in (-1, 1):
            moved = edges[:i] + [edges[i] + d] + edges[i + 1:]
            if all(1 <= b - a <= max_group for a, b in zip(moved, moved[1:])):
                yield tuple(zip(moved, moved[1:]))


def climb(score: Callable[[tuple[Group, ...]], float], start: tuple[Group, ...], max_group: int,
          budget: Callable[[], bool]) -> tuple[Group, ...]:
    """Take the first boundary move that improves the score, until none does or `budget()` says stop."""
    best, best_score, improved = start, score(start), True
    while improved:
        improved = False
        for n in neighbours(best, max_group):
            if not budget():
                return best
            if score(n) > best_score:
                best, best_score, improved = n, score(n), True
                break
    return best


def balanced(n_layers: int, steps: int, max_group: int) -> tuple[Group, ...] | None:
    """First and last layer alone, the rest in steps - 2 groups of near-equal size (larger ones later)."""
    middle, k = n_layers - 2, steps - 2
    if k < 1 or middle < k or -(-middle // k) > max_group:
        return None
    sizes = [middle // k + (i >= k - middle % k) for i in range(k)]
    edges = [0, 1]
    for size in sizes:
        edges.append(edges[-1] + size)
    return tuple(zip(edges, edges[1:])) + ((n_layers - 1, n_layers),)


# -- acceptance by playback ------------------------------------------------------------------------
class _Cursor:
    """The cache of a played-back base: only a length, as the engine expects of a KV cache."""

    def __init__(self, max_len: int):
        self.max_len, self.length = max_len, 0

    def crop(self, length: int) -> None:
        self.length = length


class ReplayBase:
    """The base model's greedy output played back as one-hot logits, for measuring greedy acceptance.

    Row i of a forward over tokens at positions pos.. predicts position pos + i + 1. While the fed
    tokens follow the recorded output, the base would have predicted the recorded next token; after
    the first difference greedy verification reads no further rows, so the result is exact. Rows past
    the recorded output (after its end-of-sequence token) are zero: the engine counts no acceptance
    past a stop, so those rows change no count either.
    """

    def __init__(self, base: Decoder, sequence: Sequence[int]):
        self.cfg, self.device = base.cfg, base.device
        self.seq = list(sequence)

    def new_cache(self, max_len: int) -> _Cursor:
        return _Cursor(max_len)

    def forward(self, tokens: torch.Tensor, pos: int, cache: _Cursor,
                opts: ForwardOptions = ForwardOptions()) -> torch.Tensor:  # [T or 1, vocab]
        n = tokens.numel()
        cache.length = pos + n
        rows = range(pos, pos + n) if opts.all_logits else range(pos + n - 1, pos + n)
        out = torch.zeros(len(rows), self.cfg.vocab_size, device=self.device)
        for i, p in enumerate(rows):
            if p + 1 < len(self.seq):
                out[i, self.seq[p + 1]] = 1.0
        return out


def reference(base: Decoder, prompt: Sequence[int], max_new_tokens: int, stopping: Stopping) -> tuple[list[int], list[int]]:
    """(prompt, the base's own greedy output): what playback and the probe replay."""
    vanilla = SpecConfig(mode="vanilla", max_new_tokens=max_new_tokens)
    return list(prompt), [t for r in generate(base, None, prompt, vanilla, stopping) for t in r.token_ids]


def _draft_seconds(records) -> float:
    return sum(r.phase_s.get(p, 0.0) for r in records for p in DRAFT_PHASES)


def measure_plan(base: Decoder, draft: Decoder, references: Sequence[tuple[list[int], list[int]]], plan: str,
                 cfg: TuneConfig, origin: str, stopping: Stopping) -> Candidate:
    """Draft every prompt with `plan` (every-round calibration) against the played-back base output."""
    per_prompt, draft_s = [], 0.0
    for prompt, out in references:
        spec = SpecConfig(mode="easyspec", groups=plan, draft_len=cfg.draft_len, max_new_tokens=cfg.max_new_tokens)
        records = list(generate(ReplayBase(base, prompt + out), draft, prompt, spec, stopping))
        got = [t for r in records for t in r.token_ids]
        assert got == out, "playback diverged from the recorded base output"
        per_prompt.append((sum(r.accepted for r in records), sum(len(r.drafted) for r in records)))
        draft_s += _draft_seconds(records)
    return Candidate(plan, steps_of(plan), origin, sum(d for _, d in per_prompt), sum(a for a, _ in per_prompt),
                     draft_s, per_prompt=tuple(per_prompt))


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


def _policy(base, draft, prompts, plan, policy, cfg: TuneConfig, stopping) -> PolicyResult:
    runs = []
    for prompt in prompts:
        spec = SpecConfig(mode="easyspec", groups=plan, calibration=policy, draft_len=cfg.draft_len,
                          max_new_tokens=cfg.max_new_tokens)
        runs.append(compute(list(generate(base, draft, prompt, spec, stopping))))
    drafted = sum(m.drafted for m in runs)
    speeds = sorted(m.tokens_per_s for m in runs)
    return PolicyResult(policy, sum(m.accepted for m in runs) / drafted if drafted else 0.0,
                        speeds[len(speeds) // 2], sum(m.calibrate_s for m in runs))


def tune(base: Decoder, draft: Decoder, prompts: Sequence[Sequence[int]], cfg: TuneConfig = TuneConfig(),
         stopping: Stopping = Stopping(), progress: Callable[[str], None] = lambda _: None) -> TuneResult:
    """Measure the candidates on `prompts` (token ids) and choose; see the module docstring."""
    for step in tune_steps(base, draft, prompts, cfg, stopping):
        if isinstance(step, TuneResult):
            return step
        progress(step)
    raise AssertionError("tune_steps ended without a result")


def split(prompts: Sequence, holdout: bool) -> tuple[list, list]:
    """(search half, confirmation half), alternately; without holdout or with one prompt, one list twice."""
    if not holdout or len(prompts) < 2:
        both = list(prompts)
        return both, both
    return list(prompts[0::2]), list(prompts[1::2])


def tune_steps(base: Decoder, draft: Decoder, prompts: Sequence[Sequence[int]], cfg: TuneConfig = TuneConfig(),
               stopping: Stopping = Stopping()) -> Iterator[str | TuneResult]:
    """The tuner as a stream: a progress line before each step, then the result (for live screens)."""
    if not prompts:
        raise ValueError("the tuner needs at least one calibration prompt")
    n = draft.cfg.n_layers
    references = []
    for i, prompt in enumerate(prompts):
        yield f"base output for calibration prompt {i + 1}/{len(prompts)}"
        references.append(reference(base, prompt, cfg.max_new_tokens, stopping))
    search_refs, confirm_refs = split(references, cfg.holdout)
    yield "similarity of the draft's layer inputs"
    s = similarity(draft, [prompt for prompt, _ in search_refs])
    sequential = describe(layer_groups(n, 1))
    plans = {sequential: "sequential", **candidate_plans(s, n, cfg.max_group, cfg.thresholds)}
    yield "probe: exact draft forwards of the base outputs"
    probe, probes = Probe(draft, search_refs, cfg.draft_len, cfg.probe_rounds), {}

    def score(groups: tuple[Group, ...]) -> float:
        key = describe(groups)
        if key not in probes:
            probes[key] = probe.acceptance(groups)
        return probes[key]

    for i, plan in enumerate(plans):
        yield f"probe of plan {i + 1}/{len(plans)}: {plan}"
        score(parse_plan(plan, n))
    spent = len(probes)
    budget = lambda: len(probes) < spent + cfg.search  # noqa: E731
    probe_floor = (1 - cfg.tolerance) * probes[sequential]
    # Bisect the step count between the fewest steps that look plausible and the fewest within
    # tolerance on the probe: at each, climb from the best of that count's candidates and a balanced plan.
    hi = min(steps_of(p) for p in plans if probes[p] >= probe_floor)
    plausible = [steps_of(p) for p in plans if probes[p] >= (1 - 4 * cfg.tolerance) * probes[sequential]]
    lo = max(min(plausible), -(-n // cfg.max_group))
    while lo < hi and budget():
        mid = (lo + hi) // 2
        starts = [p for p in plans if steps_of(p) == mid]
        even = balanced(n, mid, cfg.max_group)
        starts += [describe(even)] if even else []
        if not starts:
            lo = mid + 1
            continue
        yield f"boundary search for {mid} steps (within tolerance on the probe so far: {hi} steps)"
        for p in starts:
            score(parse_plan(p, n))
        found = describe(climb(score, parse_plan(max(starts, key=probes.get), n), cfg.max_group, budget))
        if even:
            plans.setdefault(describe(even), f"balanced, {mid} steps")
        plans.setdefault(found, "boundary search")
        if probes[found] >= probe_floor:
            hi = mid
        else:
            lo = mid + 1
    hopeless = (1 - 2 * cfg.tolerance) * probes[sequential]
    order = [sequential] + sorted((p for p in plans if p != sequential),
                                  key=lambda p: (steps_of(p), -probes[p]))
    measured, floor, found_steps, tried = [], 0.0, n, {}
    for i, plan in enumerate(order):
        steps = steps_of(plan)
        if steps > found_steps and not cfg.exhaustive:
            break  # ascending step counts: nothing from here on can be chosen
        if i and not cfg.exhaustive and (probes[plan] < hopeless or tried.get(steps, 0) >= MEASURED_PER_STEPS):
            continue
        tried[steps] = tried.get(steps, 0) + 1
        yield f"acceptance of plan {i + 1}/{len(order)}: {plan}"
        c = replace(measure_plan(base, draft, confirm_refs, plan, cfg, plans[plan], stopping), probe=probes[plan])
        measured.append(c)
        if i == 0:
            floor = (1 - cfg.tolerance) * c.acceptance_rate
        elif c.acceptance_rate >= floor:
            found_steps = min(found_steps, steps)
    baseline = measured[0]
    ok = [c for c in measured if c.acceptance_rate >= floor]
    best = min(ok, key=lambda c: (c.steps, -c.acceptance_rate))
    policies, recommended = (), "every-round"
    if cfg.policies:
        results = []
        for policy in CALIBRATION_POLICIES:
            yield f"calibration policy {policy} with the base model"
            results.append(_policy(base, draft, [prompt for prompt, _ in confirm_refs], best.plan, policy, cfg,
                                   stopping))
        policies = tuple(results)
        fine = [p for p in policies if p.acceptance_rate >= floor] or [policies[0]]
        recommended = max(fine, key=lambda p: p.tokens_per_s).policy
    yield TuneResult(plan=best.plan, acceptance_rate=best.acceptance_rate, baseline_rate=baseline.acceptance_rate,
                      steps=best.steps, sequential_steps=n, tolerance=cfg.tolerance, candidates=tuple(measured),
                      policies=policies, recommended_policy=recommended,
                      adjacent_similarity=tuple(s.diagonal(1).tolist()), prompts=len(prompts),
                      held_out=0 if confirm_refs is search_refs else len(confirm_refs),
                      unmeasured=len(plans) - len(measured), probed=len(probes), draft_len=cfg.draft_len,
                      created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))


# -- cache -----------------------------------------------------------------------------------------
def pair_key(base_dir: Path, draft_dir: Path, dtype: str) -> str:
    """A key of both models' configs (and the dtype): a re-tuned or different pair gets a new key."""
    h = hashlib.sha256(dtype.encode())
    for folder in (base_dir, draft_dir):
        h.update(Path(folder, "config.json").read_bytes())
        for f in sorted(Path(folder).glob("*.safetensors")):
            h.update(f"{f.name}:{f.stat().st_size}".encode())
    return h.hexdigest()[:16]


def tuning_path(key: str) -> Path:
    from ..models.offline_pair import cache_root

    return cache_root() / "tuning" / f"{key}.json"


def save_tuning(result: TuneResult, key: str) -> Path:
    """Write to a temporary name, then rename: a reader never sees half a file."""
    path = tuning_path(key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(result.as_dict(), indent=1))
    except OSError as e:
        raise ValueError(f"cannot save the tuned plan under {path.parent} ({e.strerror}); "
                         f"set EASYSPEC_CACHE to a writable folder") from e
    return path


_loaded: dict[Path, tuple[tuple[int, int, int], TuneResult | None]] = {}


def load_tuning(key: str) -> TuneResult | None:
    """The cached tuning of a pair, re-read only when its file changed (every run resolves through here)."""
    path = tuning_path(key)
    try:
        st = path.stat()
    except OSError:
        return None
    stamp = (st.st_ino, st.st_mtime_ns, st.st_size)  # save_tuning renames a new file in: a new inode
    if path in _loaded and _loaded[path][0] == stamp:
        return _loaded[path][1]
    try:
        result = TuneResult.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        result = None  # an unreadable cache entry counts as no tuning; the next tune overwrites it
    _loaded[path] = (stamp, result)
    return result


def with_expectation(cfg: SpecConfig, result: TuneResult | None, n_layers: int) -> SpecConfig:
    """`--groups auto` becomes the tuned plan; the run's expected acceptance comes from the tuning."""
    if cfg.groups == "auto":
        if result is None:
            raise ValueError("auto grouping: this model pair has not been tuned yet; run the tuner first "
                             "(`easyspec tune`, or \"Tune the layer plan\" in the Pilot screen), or choose N or a plan")
        cfg = replace(cfg, groups=result.plan)
    if result is None or cfg.expected_acceptance > 0 or cfg.mode == "vanilla" or not cfg.sampling.greedy:
        return cfg  # the tuner measures greedy acceptance only
    if cfg.mode == "speculative":
        return replace(cfg, expected_acceptance=result.baseline_rate)
    return replace(cfg, expected_acceptance=result.expected_rate(describe(cfg.plan(n_layers)), cfg.calibration))


def cell(plan: str) -> str:
    """A plan as code in a Markdown table cell: its '|' escaped, or the table splits there."""
    return "`" + plan.replace("|", "\\|") + "`"


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


def _where(result: TuneResult) -> list[str]:
    """Which prompts the figures below come from, and what that means for the chosen plan's."""
    chosen = next((c for c in result.candidates if c.plan == result.plan), None)
    first = result.candidates[0]
    if not result.held_out:
        return [f"The probe, the search and the acceptance rates below all used the same {result.prompts} "
                f"calibration prompt(s): the best of {result.probed} plans can look better on them than on others."]
    out = [f"The probe and the search saw {result.prompts - result.held_out} of the {result.prompts} calibration "
           f"prompts; every acceptance rate below is measured on the other {result.held_out}, which they did not see."]
    if len(result.candidates) > 1:
        out.append(f"The choice among the {len(result.candidates)} drafted plans (the fewest steps within tolerance) "
                   f"was made on these same rates, so they can flatter it: only prompts the tuner never saw tell "
                   f"(benchmarks/tuning.py).")
    if chosen is not None and chosen is not first and first.probe > 0 and result.baseline_rate > 0:
        band = paired_interval(chosen.per_prompt, first.per_prompt)
        out.append(change_agreement(chosen.probe / first.probe - 1, chosen.acceptance_rate / result.baseline_rate - 1,
                                    band, "as the probe predicted on the search half", "on the held-out half"))
    return out


def _policy_choice(result: TuneResult) -> str:
    """Why the recommended policy, from the policies' own figures and the tolerance."""
    floor = (1 - result.tolerance) * result.baseline_rate
    fine = [p for p in result.policies if p.acceptance_rate >= floor]
    if fine and max(fine, key=lambda p: p.tokens_per_s).policy == result.recommended_policy:
        return f"the fastest of the {len(fine)} whose acceptance stays within tolerance, at least {floor:.3f}"
    if not fine:
        return f"no policy kept its acceptance within tolerance (at least {floor:.3f}): a fallback"
    return f"not the fastest of the {len(fine)} within tolerance (at least {floor:.3f})"


def markdown(result: TuneResult) -> str:
    """The tuner's report: the choice, every candidate measured in the run, the calibration policies."""
    where = " ".join(_where(result))
    out = [f"# Auto-tuned layer plan ({result.pair.get('base', '?')} / {result.pair.get('draft', '?')}, "
           f"{result.pair.get('dtype', '?')})", "",
           f"Chosen plan `{result.plan}`: {result.steps} sequential draft steps instead of {result.sequential_steps} "
           f"(predicted draft-step saving {result.predicted_saving:.0%}), acceptance rate "
           f"{result.acceptance_rate:.3f} against {result.baseline_rate:.3f} for N = 1 in the same run "
           f"(tolerance {result.tolerance:.0%} relative; {result.prompts} calibration prompts, greedy, "
           f"every-round calibration, draft length k = {result.draft_len}).", "", where, "",
           f"Probe: the acceptance rate predicted by simulated rounds from every output position "
           f"({result.probed} plans probed; N = 1: {result.candidates[0].probe:.3f}).", "",
           "The interval is a 90% bootstrap over the measured prompts, resampled in pairs with N = 1: how far "
           "the prompts' spread alone could move the change.", "",
           "| plan | steps | from | probe | acceptance rate | vs N = 1 | 90% interval | draft ms per drafted token |",
           "|---|---|---|---|---|---|---|---|"]
    first = result.candidates[0]
    for c in result.candidates:
        rel = c.acceptance_rate / result.baseline_rate - 1 if result.baseline_rate else 0.0
        mark = " **chosen**" if c.plan == result.plan else ""
        band = paired_interval(c.per_prompt, first.per_prompt) if c is not first else None
        spread = f"{band[0]:+.1%} .. {band[1]:+.1%}" if band else "-"
        out.append(f"| {cell(c.plan)}{mark} | {c.steps} | {c.origin} | {c.probe:.3f} | {c.acceptance_rate:.3f} | "
                   f"{rel:+.1%} | {spread} | {1000 * c.draft_s_per_token:.1f} |")
    if result.unmeasured:
        out += ["", f"{result.unmeasured} more plans were not drafted: more steps than the chosen plan, a probe "
                    f"more than twice the tolerance below N = 1's, or not the best of their step "
                    f"count on the probe (`--exhaustive` drafts them)."]
    if result.policies:
        out += ["", f"Calibration policies on the chosen plan (real base, median tokens/s over the measured "
                    f"prompts): recommended **{result.recommended_policy}** ({_policy_choice(result)}).", "",
                "| policy | acceptance rate | tokens/s | calibrate s |",
                "|---|---|---|---|"]
        out += [f"| {p.policy} | {p.acceptance_rate:.3f} | {p.tokens_per_s:.2f} | {p.calibrate_s:.2f} |"
                for p in result.policies]
    sims = ", ".join(f"{x:.2f}" for x in result.adjacent_similarity)
    out += ["", f"Adjacent-layer input similarity S[l, l+1]: {sims}", ""]
    return "\n".join(out)
