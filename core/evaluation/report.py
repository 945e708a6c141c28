"""The pilot report's content: every figure of it, computed from a finished pilot's runs.

What it is: `report_data` folds a pilot (its `PilotRun`s: per-run rows and round records) and a
description of where it ran into one plain, JSON-ready dict: the question, hardware and models,
the settings grid, per-setting measurements with their spread across prompts (median, min, max of
the per-prompt figures next to the pooled totals that `pilot.summarise` gives), acceptance, the
greedy-equality evidence (n equal / n compared), the representative run drawn as a timeline, the
G-device projection with its assumptions (kept apart: projected, not measured), and a
plain-language conclusion generated from those numbers, in English or Japanese.
What it is not: the HTML (that is `visualizations/report.py`, which adds the figures) or a place
where any number is typed in: everything comes from the runs given.
"""
from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Sequence

from ..i18n import check_lang, text
from .criteria import Criteria, judge
from .pilot import PilotGrid, PilotRun, summarise
from . import fitting, hardware
from .projection import Setting, project, project_pilot, session_shapes
from .shapes import ModelShape

REPORT_VERSION = 1


@dataclass(frozen=True)
class ReportContext:
    """Where and how the pilot ran (all from the session and the machine, never typed in)."""

    models: dict  # base, draft, dtype, device, devices (Session.info as a dict)
    machine: str  # bench.machine()
    commit: str
    date: str  # ISO date and time (UTC) of the pilot's start
    command: str = "easyspec app: Pilot screen"
    prompts: tuple[str, ...] = ()
    shapes: tuple[ModelShape, ModelShape] | None = None  # (base, draft) for the projection
    hardware: str = "a100-80gb"  # the projection's device preset (core/evaluation/hardware.py)
    notes: tuple[str, ...] = field(default_factory=tuple)  # what the caller left out (e.g. sampled runs)
    criteria: Criteria = field(default_factory=Criteria)  # the team's targets (criteria.py)


def context_for(session, prompts: Sequence[str], command: str, hardware: str = "a100-80gb", date: str | None = None,
                notes: Sequence[str] = (), criteria: Criteria | None = None) -> ReportContext:
    """The report's context from a loaded session and this machine."""
    from .bench import git_commit, machine

    shapes = session_shapes(session) if session.draft is not None else None
    when = date or datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return ReportContext(models=asdict(session.info), machine=machine(), commit=git_commit(), date=when,
                         command=command, prompts=tuple(prompts), shapes=shapes, hardware=hardware, notes=tuple(notes),
                         criteria=criteria or Criteria())


def _spread(values: Sequence[float]) -> dict | None:
    if not values:
        return None
    return {"median": round(statistics.median(values), 4), "min": round(min(values), 4),
            "max": round(max(values), 4), "n": len(values)}


def setting_rows(runs: Sequence[PilotRun]) -> list[dict]:
    """`summarise` per setting, plus the spread of per-prompt tokens/s and speedup and the equality counts."""
    rows = [r.row for r in runs]
    out = []
    for s in summarise(rows):
        mine = [r for r in rows if r["setting"] == s["setting"]]
        equal = [r["equal_to_vanilla"] for r in mine if r["equal_to_vanilla"] is not None]
        out.append({**s, "runs": len(mine),
                    "tokens_per_s_spread": _spread([r["tokens_per_s"] for r in mine]),
                    "speedup_spread": _spread([r["speedup"] for r in mine if r["speedup"] is not None]),
                    "equal_count": sum(bool(e) for e in equal), "compared_count": len(equal),
                    # of the differing runs: rounding ties and real differences (lossless.py)
                    "tie_count": s["greedy_tie"] or 0, "different_count": s["greedy_different"] or 0})
    return out


def representative(runs: Sequence[PilotRun], settings: Sequence[dict]) -> PilotRun | None:
    """The run to draw: of the fastest EasySpec setting (else the fastest non-vanilla one, else vanilla),
    the prompt whose speedup is nearest that setting's median."""
    def best(mode: str | None):
        pool = [s for s in settings if (mode is None or s["mode"] == mode) and s["speedup"] is not None]
        return max(pool, key=lambda s: s["speedup"], default=None)

    chosen = best("easyspec") or best("speculative") or best(None)
    if chosen is None:
        return runs[0] if runs else None
    mine = [r for r in runs if r.setting.label == chosen["setting"]]
    spread = chosen["speedup_spread"]
    if spread is None:
        return mine[0]
    return min(mine, key=lambda r: abs((r.row["speedup"] or 0.0) - spread["median"]))


def _median_speedup(settings: Sequence[dict], label: str) -> float | None:
    spread = next(s["speedup_spread"] for s in settings if s["setting"] == label)
    return spread["median"] if spread else None


def projection_data(runs: Sequence[PilotRun], ctx: ReportContext) -> dict:
    """Projected rows for G devices of `ctx.hardware` (the hardware model fed with the pilot's accepted lengths),
    its assumptions and its validation error, or the reason there are none."""
    if ctx.shapes is None:
        return {"unavailable": "the model shapes are unknown"}
    device = hardware.device(ctx.hardware)
    try:
        rows = project_pilot(runs, *ctx.shapes, device)
    except ValueError as exc:
        return {"unavailable": str(exc)}
    return {"rows": rows, "hardware": asdict(device), "efficiency": asdict(hardware.FITTED),
            "validation": fitting.validation(), "context": 1024, "batch": 1, "cuda_graphs": True,
            "base_shape": asdict(ctx.shapes[0]), "draft_shape": asdict(ctx.shapes[1]),
            "batches": batch_rows(rows, ctx.shapes, device)}


BATCHES = (1, 4, 16, 64)


def batch_rows(rows: Sequence[dict], shapes, device) -> list[dict]:
    """The fastest projected setting at the largest G again for B sequences per step (BATCHES): weights are
    read once per step whatever B, FLOPs and KV reads grow with it, so the verify turns compute-bound and
    the speedup shrinks (projected; the engine itself measures B = 1)."""
    if not rows:
        return []
    g = max(r["devices"] for r in rows)
    best = max((r for r in rows if r["devices"] == g), key=lambda r: r["easyspec_tokens_per_s"])
    out = []
    for b in BATCHES:
        p = project(*shapes, device, Setting(**{**best["setting_values"], "batch": b}))
        out.append({"batch": b, "devices": g, "setting": best["setting"],
                    "easyspec_speedup": round(p["easyspec"]["tokens_per_s"] / p["vanilla"]["tokens_per_s"], 3),
                    "speculative_speedup": round(p["speculative"]["tokens_per_s"] / p["vanilla"]["tokens_per_s"], 3),
                    "verify_bound": p["verify_bound"]})
    return out


def projected_criteria(settings: Sequence[dict], projection: dict, criteria: Criteria) -> dict:
    """The criteria on the projected speedups at the projection's largest G (acceptance and equality as
    measured): {"projected": [...], "projected_devices": G}, or {} without a projection."""
    rows = projection.get("rows") or []
    if not rows:
        return {}
    g = max(r["devices"] for r in rows)
    mine = [r for r in rows if r["devices"] == g]
    speedups = {r["setting"]: r["easyspec_speedup"] for r in mine}
    speedups.update({s["setting"]: mine[0]["speculative_speedup"] for s in settings if s["mode"] == "speculative"})
    judged = [j for j in judge(settings, criteria, speedups) if j.setting in speedups]
    return {"projected": [{**asdict(j), "met": j.met} for j in judged], "projected_devices": g}


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def conclusion(settings: Sequence[dict], grid: dict, models: dict, projection: dict, lang: str) -> list[str]:
    """Plain sentences from the numbers: what improved, by how much, where, and what was not measured."""
    t = lambda key, **kw: text(f"report.c.{key}", lang, **kw)  # noqa: E731
    out = []
    vanilla = next((s for s in settings if s["mode"] == "vanilla"), None)
    easy = [s for s in settings if s["mode"] == "easyspec" and s["speedup"] is not None]
    spec = [s for s in settings if s["mode"] == "speculative" and s["speedup"] is not None]
    if easy and vanilla:
        best = max(easy, key=lambda s: s["speedup"])
        sp = best["speedup_spread"]
        key = "faster" if best["speedup"] > 1 else "not_faster"
        out.append(t(key, setting=best["setting"], tps=f"{best['tokens_per_s']:.1f}",
                     vanilla=f"{vanilla['tokens_per_s']:.1f}", speedup=f"{best['speedup']:.2f}",
                     median=f"{sp['median']:.2f}", lo=f"{sp['min']:.2f}", hi=f"{sp['max']:.2f}", n=sp["n"]))
        faster = [s for s in easy if s["speedup"] > 1]
        out.append(t("count_faster", faster=len(faster), total=len(easy)))
        if spec:
            ref = max(spec, key=lambda s: s["speedup"])
            out.append(t("vs_speculative", setting=ref["setting"], speedup=f"{ref['speedup']:.2f}",
                         ratio=f"{best['speedup'] / ref['speedup']:.2f}"))
    contexts = sorted({s.get("context", 0) for s in easy})
    if len(contexts) > 1:  # EasySpec's gain against the prompt length (the grid's context axis)
        bests = [max((s for s in easy if s.get("context", 0) == c), key=lambda s: s["speedup"]) for c in contexts]
        items = [t("at_context", length=t("as_given") if not c else t("tokens", n=b["mean_prompt_tokens"]),
                   speedup=f"{b['speedup']:.2f}", setting=b["setting"]) for c, b in zip(contexts, bests)]
        out.append(t("by_context", items="; ".join(items)))
    pairs = {}
    shortest = [s for s in easy if s.get("context", 0) == min(contexts, default=0)]
    for s in (s for s in shortest if s["layer_parallel"] is not None):  # equal groups; plans have no N
        pairs.setdefault((s["layer_parallel"], s["draft_len"]), {})[s["calibration"]] = s
    for (n, k), by_policy in sorted(pairs.items()):  # one sentence per N (and k): the effect differs by N
        if "none" in by_policy and "every-round" in by_policy:
            a, b = by_policy["none"]["acceptance_rate"], by_policy["every-round"]["acceptance_rate"]
            if a is not None and b is not None:
                out.append(t("calibration" if b > a else "calibration_no_gain", n=n, k=k, without=_pct(a),
                             with_=_pct(b)))
    with_ar = [s for s in settings if s["acceptance_rate"] is not None]
    if with_ar:
        hi = max(with_ar, key=lambda s: s["acceptance_rate"])
        lo = min(with_ar, key=lambda s: s["acceptance_rate"])
        out.append(t("acceptance", hi_setting=hi["setting"], hi=_pct(hi["acceptance_rate"]),
                     lo_setting=lo["setting"], lo=_pct(lo["acceptance_rate"])))
    equal = sum(s["equal_count"] for s in settings)
    compared = sum(s["compared_count"] for s in settings)
    ties, different = (sum(s[k] for s in settings) for k in ("tie_count", "different_count"))
    if compared:  # a real difference is a bug; a rounding tie is what bf16 allows (README, "What is guaranteed")
        key = ("equal_different" if different else "equal_ties" if ties else
               "equal_all" if equal == compared else "equal_not_all")
        out.append(t(key, equal=equal, compared=compared, ties=ties, different=different,
                     dtype=models.get("dtype", "?")))
    else:
        out.append(t("equal_none"))
    out.append(t("not_measured" if models.get("devices", 1) == 1 else "not_measured_multi",
                 prompts=max((s["prompts"] for s in settings), default=0),
                 tokens=grid.get("max_new_tokens", "?"), device=models.get("device", "?"),
                 devices=models.get("devices", 1)))
    if "rows" in projection:
        rows = [r for r in projection["rows"] if r["devices"] > 1]
        if rows:
            top = max(rows, key=lambda r: r["easyspec_speedup"])
            out.append(t("projection", devices=top["devices"], setting=top["setting"],
                         speedup=f"{top['easyspec_speedup']:.2f}", hardware=projection["hardware"]["name"]))
    return out


def report_data(runs: Sequence[PilotRun], grid: PilotGrid, ctx: ReportContext, lang: str = "en") -> dict:
    """Everything the report shows, as plain values (the HTML embeds this dict too)."""
    check_lang(lang)
    if not runs:
        raise ValueError("the report needs a finished pilot with at least one run")
    settings = setting_rows(runs)
    rep = representative(runs, settings)
    grid_d = asdict(grid)
    projection = projection_data(runs, ctx)
    return {
        "version": REPORT_VERSION, "lang": lang,
        "question": text("report.question", lang),
        "context": {"machine": ctx.machine, "commit": ctx.commit, "date": ctx.date, "command": ctx.command,
                    **{k: ctx.models.get(k) for k in ("base", "draft", "dtype", "device", "devices")}},
        "grid": {**grid_d, "prompts": len({r.prompt_index for r in runs}),
                 "settings": [{"label": s["setting"], "mode": s["mode"], "layer_parallel": s["layer_parallel"],
                               "calibration": s["calibration"], "draft_len": s["draft_len"]} for s in settings]},
        "prompts": list(ctx.prompts),
        "settings": settings,
        "representative": None if rep is None else {"setting": rep.setting.label, "prompt": rep.prompt_index + 1,
                                                    "speedup": rep.row["speedup"],
                                                    "setting_median": _median_speedup(settings, rep.setting.label)},
        "projection": projection,
        "criteria": {"targets": asdict(ctx.criteria),
                     "measured": [{**asdict(j), "met": j.met} for j in judge(settings, ctx.criteria)],
                     **projected_criteria(settings, projection, ctx.criteria)},
        "conclusion": conclusion(settings, grid_d, ctx.models, projection, lang),
        "notes": list(ctx.notes),
    }
