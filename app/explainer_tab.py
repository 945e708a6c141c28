"""The How it works screen: EasySpec for non-specialists, drawn from real recorded timelines.

It starts from the runs shipped in `assets/` (recorded from the offline pair with `easyspec
generate --save-run`) and switches to the user's own runs once they exist (refreshed whenever the
tab is opened): sequential vs layer-parallel drafting as two real rounds on one time scale, what
calibration fixes (acceptance with and without it), the greedy-equality evidence of the runs made
so far, and what to measure in a pilot.
What it is not: an animation drawn by hand: every figure comes from recorded rounds.
"""
from __future__ import annotations

from dataclasses import dataclass
from statistics import median
from typing import Sequence

import gradio as gr

from easyspec.core.i18n import check_lang, msg, text, tr
from easyspec.core.engine.lossless import compare_greedy
from easyspec.core.engine.verdicts import GreedyCheck, count_verdicts, first_difference
from easyspec.core.engine.metrics import compute
from easyspec.core.engine.records import RoundRecord
from easyspec.visualizations.acceptance import acceptance_summary_figure
from easyspec.visualizations.timeline import round_range_ms, timeline_figure
from easyspec.visualizations.translate import translate_figure

from .common import friendly
from .context import AppContext
from .state import RunSummary, UserState

EVIDENCE_HEADERS = ["prompt", "identical tokens", "rounding ties", "real differences", "greedy runs", "settings"]


@dataclass(frozen=True)
class Source:
    """A run to draw from: a label, its settings and its records."""

    label: str
    settings: dict
    records: Sequence[RoundRecord]


def typical_round(records: Sequence[RoundRecord]) -> RoundRecord | None:
    """A full drafting round of median duration (not the prefill, not a round cut short)."""
    rounds = [r for r in records if r.drafted and r.index > 0 and r.stop is None]
    if not rounds:
        rounds = [r for r in records if r.drafted and r.index > 0]
    if not rounds:
        return None
    k = max(len(r.drafted) for r in rounds)
    full = [r for r in rounds if len(r.drafted) == k]
    durations = {r.index: _duration(records, r) for r in full}
    mid = median(durations.values())
    return min(full, key=lambda r: abs(durations[r.index] - mid))


def _duration(records, rec) -> float:
    lo, hi = round_range_ms(records, rec.index)
    return hi - lo


def round_story(src: Source, rec: RoundRecord, lang: str = "en") -> str:
    """Plain numbers for one round: draft forwards, their layer plan, drafting and calibration time."""
    forwards = sum(1 for s in rec.spans if s.phase == "draft.mlp" and s.label == "head" and s.rank == 0)
    plan, seen = [], set()
    for s in rec.spans:
        if s.rank != 0 or s.phase != "draft.attn":
            continue
        if s.label in seen:
            break
        seen.add(s.label)
        plan.append(s.label.lstrip("L"))
    draft_ms = 1e3 * sum(rec.phase_s.get(p, 0.0) for p in ("draft.attn", "draft.mlp", "draft.comm"))
    cal_ms, verify_ms = 1e3 * rec.phase_s.get("calibrate", 0.0), 1e3 * rec.phase_s.get("verify", 0.0)
    return text("how.story", lang, label=tr(src.label, lang), index=rec.index, forwards=forwards, plan="|".join(plan),
                draft_ms=f"{draft_ms:.1f}", per_step=f"{draft_ms / forwards:.1f}" if forwards else "-",
                calibration=text("how.story_calibration", lang, ms=f"{cal_ms:.1f}") if cal_ms else "",
                verify_ms=f"{verify_ms:.1f}", accepted=rec.accepted, drafted=len(rec.drafted))


def agree(a: Sequence[int], b: Sequence[int]) -> bool:
    """Greedy outputs of one prompt agree when the shorter is a prefix of the longer (runs may have had
    different token limits)."""
    n = min(len(a), len(b))
    return tuple(a[:n]) == tuple(b[:n])


def evidence_rows(log: Sequence[RunSummary], reference_base=None) -> list[list]:
    """One row per prompt with at least two complete greedy runs: did they all emit the same tokens, and if
    not, how many runs differ from the reference (the vanilla run, else the first) by a rounding tie and how
    many by a real difference (lossless.py; `reference_base`: the session, whose fp32 base recomputes)."""
    groups: dict[str, list[RunSummary]] = {}
    for s in log:
        if s.greedy and s.complete:
            groups.setdefault(s.prompt_key, []).append(s)
    rows = []
    for runs in groups.values():
        if len(runs) < 2:
            continue
        ref = next((r for r in runs if r.mode == "vanilla"), runs[0])
        checks = [_check(reference_base, ref, r) for r in runs if r is not ref]
        counts = count_verdicts(checks)
        same = "yes" if counts["equal"] == len(checks) else "rounding tie" if not counts["different"] else "NO"
        labels = ", ".join(dict.fromkeys(r.label for r in runs))
        rows.append([runs[0].prompt_preview, same, counts["tie"], counts["different"], len(runs), labels])
    return rows


def _check(reference_base, ref: RunSummary, run: RunSummary) -> GreedyCheck:
    """The greedy check of one run against the reference over their common length (runs may have had
    different token limits); a difference counts as real when there is nothing to recompute with."""
    n = min(len(ref.token_ids), len(run.token_ids))
    if agree(ref.token_ids, run.token_ids):
        return GreedyCheck("equal", "")
    if reference_base is None or not ref.prompt_ids:
        return GreedyCheck("different", "", index=first_difference(run.token_ids[:n], ref.token_ids[:n]))
    return compare_greedy(reference_base, ref.prompt_ids, run.token_ids[:n], ref.token_ids[:n])


def _demo_sources(ctx: AppContext) -> dict[str, Source]:
    return {d.label: Source(msg("recorded {label} run", label=d.label), d.header.settings, d.records)
            for d in ctx.demo_runs}


def pick_sources(ctx: AppContext, state: UserState) -> tuple[Source | None, Source | None, bool]:
    """(sequential, layer-parallel, from the user's own runs?) for the drafting comparison: the newest
    layer-parallel run with a few rounds, and a sequential run of the same prompt if there is one."""
    def rounds(run) -> int:
        return sum(1 for rec in run.records if rec.drafted)

    par = next((r for r in reversed(state.runs) if r.mode == "easyspec" and r.settings.get("layer_parallel", 1) > 1
                and rounds(r) >= 3), None)
    seqs = [r for r in reversed(state.runs) if r.mode == "speculative" and rounds(r) >= 3]
    if par is not None and seqs:
        seq = next((r for r in seqs if r.prompt_ids == par.prompt_ids), seqs[0])
        return (Source(msg("your {label} run", label=seq.label), seq.settings, seq.records),
                Source(msg("your {label} run", label=par.label), par.settings, par.records), True)
    demo = _demo_sources(ctx)
    return demo.get("speculative"), demo.get("easyspec every-round"), False


def acceptance_items(ctx: AppContext, state: UserState) -> tuple[list[tuple[str, float | None, float | None]], bool]:
    mine = [r for r in state.runs if r.mode != "vanilla" and r.records]
    if mine:
        latest: dict[str, Sequence[RoundRecord]] = {}
        for r in mine:  # the newest run of each setting ("prompt 2 · easyspec ..." -> "easyspec ...")
            latest[r.label.split(" · ")[-1]] = r.records
        items = list(latest.items())[-6:]
        own = True
    else:
        items = [(d.label, d.records) for d in ctx.demo_runs]
        own = False
    out = []
    for label, records in items:
        m = compute(records)
        out.append((label, m.acceptance_rate, m.mean_accepted_length))
    return out, own


def explainer_views(ctx: AppContext, state: UserState, lang: str = "en") -> dict:
    """The screen's outputs by name, from the user's runs (else the shipped ones), in `lang`."""
    seq, par, own = pick_sources(ctx, state)
    figs, stories = [], []
    chosen = [(src, typical_round(src.records)) for src in (seq, par) if src is not None]
    chosen = [(src, rec) for src, rec in chosen if rec is not None]
    width = max((_duration(src.records, rec) for src, rec in chosen), default=1.0)
    for src, rec in chosen:
        lo, _ = round_range_ms(src.records, rec.index)
        figs.append(timeline_figure([rec], src.settings.get("device", "cpu"), 1, src.settings.get("mode"),
                                    title=src.label, x_range=(lo - 0.01 * width, lo + 1.03 * width),
                                    max_bars=20000, tokens_lane=False, legend="bottom"))
        stories.append("- " + round_story(src, rec, lang))
    while len(figs) < 2:
        figs.append(timeline_figure([], title="no recorded run available"))
    where = text("how.where_own" if own else "how.where_demo", lang)
    drafting = text("how.drafting", lang, where=where) + "\n\n" + "\n".join(stories)
    items, own_ar = acceptance_items(ctx, state)
    ar_note = text("how.ar_own" if own_ar else "how.ar_demo", lang)
    rows = evidence_rows(state.log, ctx.session)
    demo_tokens = [tuple(t for r in d.records for t in r.token_ids) for d in ctx.demo_runs]
    if len(demo_tokens) >= 2:  # recorded from the offline pair, which this session may not hold: not recomputed
        differ = sum(t != demo_tokens[0] for t in demo_tokens[1:])
        rows.insert(0, ["(recorded demo runs)", "NO" if differ else "yes", 0, differ, len(demo_tokens),
                        ", ".join(d.label for d in ctx.demo_runs)])
    note = "" if len(rows) > (1 if demo_tokens else 0) else text("how.evidence_hint", lang)
    evidence = {"data": [[r[0], tr(r[1], lang), *r[2:]] for r in rows],
                "headers": [tr(h, lang) for h in EVIDENCE_HEADERS]}
    figs = [translate_figure(f, lang) for f in (*figs, acceptance_summary_figure(items))]
    return dict(drafting=drafting, seq_plot=figs[0], par_plot=figs[1], ar_plot=figs[2], ar_note=ar_note,
                evidence=evidence, evidence_note=note)


def build(ctx: AppContext, state: gr.State, tab: gr.Tab, lang: gr.Radio):
    """Lay the screen out (`lang`: the language switch); returns (handler, its inputs by name, outputs) that
    the switch re-runs."""
    first = explainer_views(ctx, UserState())  # the shipped runs until the user has runs of their own
    gr.Markdown(text("how.intro"))
    drafting = gr.Markdown(first["drafting"], elem_id="how-drafting")
    with gr.Row():
        seq_plot = gr.Plot(first["seq_plot"], show_label=False, elem_id="how-seq")
        par_plot = gr.Plot(first["par_plot"], show_label=False, elem_id="how-par")
    gr.Markdown(text("how.calibration"))
    ar_plot = gr.Plot(first["ar_plot"], show_label=False, elem_id="how-ar")
    ar_note = gr.Markdown(first["ar_note"])
    gr.Markdown(text("how.equality"))
    evidence = gr.Dataframe(first["evidence"]["data"], headers=EVIDENCE_HEADERS, interactive=False,
                            elem_id="how-evidence",
                            wrap=True, column_widths=["26%", "11%", "9%", "9%", "8%", "37%"])
    evidence_note = gr.Markdown(first["evidence_note"])
    gr.Markdown(text("how.pilot"))
    outputs = dict(drafting=drafting, seq_plot=seq_plot, par_plot=par_plot, ar_plot=ar_plot, ar_note=ar_note,
                   evidence=evidence, evidence_note=evidence_note)
    refresh = friendly(lambda state, lang: explainer_views(ctx, state, check_lang(lang)))
    tab.select(lambda state_, lang_: {outputs[k]: v for k, v in refresh(state_, lang_).items()}, [state, lang],
               list(outputs.values()), api_visibility="private", concurrency_id="views", concurrency_limit=4)
    return refresh, dict(state=state, lang=lang), outputs
