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
   prompt, simulating a drafting round from every output position (`probe.py`). Every candidate
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
where `--groups auto` and the acceptance monitor find it; `planning.plan_run` turns a run's settings
and that result into the plan, the calibration policy and the expected acceptance the run uses.
What it is not: the parts each step calls: the plan search (`search.py`), the probe (`probe.py`),
the measurements (`measure.py`), the statistics (`stats.py`), the cache (`cache.py`) and the
report (`report.py`); the settings and result types are in `types.py`.
"""
from __future__ import annotations

import datetime
from dataclasses import replace
from typing import Callable, Iterator, Sequence

from ..engine.decoder import Decoder
from ..engine.grouping import describe, layer_groups, parse_plan
from ..engine.loop import Stopping
from ..settings import CALIBRATION_POLICIES, Group
from .measure import measure_plan, measure_policy, reference
from .probe import Probe
from .search import balanced, candidate_plans, climb, similarity, steps_of
from .stats import split
from .types import TuneConfig, TuneResult

MEASURED_PER_STEPS = 1  # plans drafted per step count: the probe ranks them on the search half, the
# confirmation half only accepts or rejects (keeping the better of two there let luck choose)


def tune(base: Decoder, draft: Decoder, prompts: Sequence[Sequence[int]], cfg: TuneConfig = TuneConfig(),
         stopping: Stopping = Stopping(), progress: Callable[[str], None] = lambda _: None) -> TuneResult:
    """Measure the candidates on `prompts` (token ids) and choose; see the module docstring."""
    for step in tune_steps(base, draft, prompts, cfg, stopping):
        if isinstance(step, TuneResult):
            return step
        progress(step)
    raise AssertionError("tune_steps ended without a result")


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
            results.append(measure_policy(base, draft, [prompt for prompt, _ in confirm_refs], best.plan, policy,
                                          cfg, stopping))
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
