"""The tuner's report: one Markdown page on a tuning, every sentence worded from its figures.

What it is: the choice and why, where the figures come from (search or held-out prompts), every
measured plan with its 90% interval against N = 1, and the calibration policies. What it is not:
the statistics behind the intervals (`stats.py`) or the tuning (`tune.py`).
"""
from __future__ import annotations

from .stats import change_agreement, paired_interval
from .types import TuneResult


def cell(plan: str) -> str:
    """A plan as code in a Markdown table cell: its '|' escaped, or the table splits there."""
    return "`" + plan.replace("|", "\\|") + "`"


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
