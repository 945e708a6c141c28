"""The pilot report as ONE self-contained HTML file: opens offline, plotly.js inlined, figures interactive.

Input: `core.evaluation.report.report_data(...)` (every number, already computed from the pilot's runs) and
the round records of the representative run (for its per-device timeline). Output: an HTML string
in English or Japanese. The data dict is embedded as JSON (`<script id="report-data">`), so a
reader or a test can check every shown figure against it. Japanese pages name CJK fonts first in
the font stack (Noto Sans CJK JP, as Debian's fonts-noto-cjk installs it, then common OS fonts).
What it is not: a computation of any figure (that is `core/evaluation/report.py`).
"""
from __future__ import annotations

import html
import json
from typing import Mapping, Sequence

import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs

from easyspec.core.i18n import msg, text, tr
from easyspec.core.engine.metrics import memory_label
from easyspec.core.evaluation.pilot import PilotGrid, PilotRun
from easyspec.core.engine.records import RoundRecord
from easyspec.core.evaluation.report import ReportContext, report_data

from .pilot_charts import pilot_figure
from .timeline import timeline_figure
from .translate import translate_figure

CSS = """
body {font-family: "Noto Sans", "Noto Sans CJK JP", "Hiragino Sans", "Yu Gothic", "Meiryo", Arial, sans-serif;
      margin: 0 auto; max-width: 1200px; padding: 24px; color: #222; line-height: 1.5}
body:lang(ja) {font-family: "Noto Sans CJK JP", "Hiragino Sans", "Yu Gothic", "Meiryo", "Noto Sans", sans-serif}
h1 {margin-bottom: 4px} h2 {margin-top: 32px; border-bottom: 1px solid #ddd; padding-bottom: 4px}
.question {background: #eef5fb; border-left: 4px solid #0072B2; padding: 10px 14px; font-size: 1.15em}
.conclusion li {margin: 4px 0}
.projected {border: 2px dashed #E69F00; padding: 4px 16px 12px; background: #fffaf0}
.projected h2 {border: none}
.tag {display: inline-block; background: #E69F00; color: #000; font-weight: bold; padding: 1px 8px;
      border-radius: 3px; font-size: 0.85em}
table {border-collapse: collapse; margin: 8px 0; font-size: 0.92em}
th, td {border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top}
td.num {text-align: right; font-variant-numeric: tabular-nums}
th {background: #f4f4f4}
.note {color: #555; font-size: 0.92em}
.bad {color: #b00020; font-weight: bold}
"""


def _e(x) -> str:
    return html.escape(str(x))


def _num(x, digits: int = 2, suffix: str = "") -> str:
    return "-" if x is None else f"{x:.{digits}f}{suffix}"


def _spread(s: Mapping | None, digits: int = 2, suffix: str = "") -> str:
    if not s:
        return "-"
    return f"{s['median']:.{digits}f}{suffix} ({s['min']:.{digits}f}-{s['max']:.{digits}f})"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], numeric: Sequence[int] = (),
           elem_id: str = "") -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f'<td{" class=num" if i in numeric else ""}>{c}</td>' for i, c in enumerate(r))
                   + "</tr>" for r in rows)
    ident = f' id="{elem_id}"' if elem_id else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _pairs(items: Sequence[tuple[str, str]]) -> str:
    return "<table>" + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in items) + "</table>"


def _figure(fig: go.Figure, elem_id: str) -> str:
    return pio.to_html(fig, full_html=False, include_plotlyjs=False, div_id=elem_id,
                       config={"displaylogo": False, "responsive": True})


def report_html(data: Mapping, records: Sequence[RoundRecord] = ()) -> str:
    """The whole report; `records` are the representative run's rounds (drawn as its timeline)."""
    lang = data["lang"]
    t = lambda key, **kw: text(key, lang, **kw)  # noqa: E731
    ctx, grid, settings = data["context"], data["grid"], data["settings"]
    yes_no = lambda b: t("report.yes") if b else t("report.no")  # noqa: E731
    parts = [f"<h1>{_e(t('report.title'))}</h1>",
             f'<p class="note">{_e(ctx["date"])} · {_e(ctx["base"])} / {_e(ctx["draft"])}</p>',
             f'<div class="question" id="question"><b>{_e(t("report.question_label"))}:</b> '
             f'{_e(data["question"])}</div>',
             f"<h2>{_e(t('report.h.answer'))}</h2>",
             '<ul class="conclusion" id="conclusion">' + "".join(f"<li>{_e(s)}</li>" for s in data["conclusion"])
             + "</ul>"]

    parts += [f"<h2>{_e(t('report.h.setup'))}</h2>", _pairs([
        (t("report.k.machine"), ctx["machine"]), (t("report.k.base"), ctx["base"]),
        (t("report.k.draft"), ctx["draft"]), (t("report.k.dtype"), ctx["dtype"]),
        (t("report.k.device"), ctx["device"]), (t("report.k.devices"), ctx["devices"]),
        (t("report.k.date"), ctx["date"]), (t("report.k.commit"), ctx["commit"]),
        (t("report.k.command"), ctx["command"])])]

    runs = sum(s["runs"] for s in settings)
    source = next((s["memory_source"] for s in settings if s.get("memory_source")), "")
    parts += [f"<h2>{_e(t('report.h.grid'))}</h2>", _pairs([
        (t("report.k.prompts"), grid["prompts"]), (t("report.k.max_new_tokens"), grid["max_new_tokens"]),
        (t("report.k.temperature"), grid["temperature"]), (t("report.k.chat"), yes_no(grid["chat"])),
        (t("report.k.layer_parallel"), ", ".join(map(str, [*grid["layer_parallel"], *grid.get("plans", ())]))),
        (t("report.k.calibration"), ", ".join(grid["calibration"])),
        (t("report.k.draft_len"), ", ".join(map(str, grid["draft_len"]))),
        (t("report.k.contexts"), ", ".join(map(str, grid.get("contexts", (0,))))), (t("report.k.runs"), runs)]),
        f'<p class="note">{_e(t("report.grid_note"))}</p>']
    if data.get("prompts"):
        items = "".join(f"<li><code>{_e(p[:300])}</code></li>" for p in data["prompts"])
        parts.append(f"<details><summary>{_e(t('report.prompt_list'))}</summary><ol>{items}</ol></details>")

    parts += [f"<h2>{_e(t('report.h.measured'))}</h2>",
              f'<p class="note">{_e(t("report.measured_note", prompts=grid["prompts"]))}</p>',
              _table([t(f"report.col.{c}") for c in ("setting", "prompts", "tokens_per_s", "tokens_per_s_spread",
                                                       "speedup", "speedup_spread", "acceptance_rate",
                                                       "mean_accepted_length", "time_split")]
                     + [t("report.col.run_peak_memory", what=tr(memory_label(source), lang)),
                        t("report.col.run_memory_growth")],
                     [[_e(s["setting"]), str(s["prompts"]), _num(s["tokens_per_s"]),
                       _spread(s["tokens_per_s_spread"]), _num(s["speedup"], 2, "x"),
                       _spread(s["speedup_spread"], 2, "x"), _num(s["acceptance_rate"], 3),
                       _num(s["mean_accepted_length"]),
                       f"{s['draft_s']:.2f} / {s['verify_s']:.2f} / {s['calibrate_s']:.2f}",
                       _num(s.get("largest_run_peak_memory_mib"), 0), _num(s.get("largest_run_memory_growth_mib"), 0)]
                      for s in settings],
                     numeric=range(1, 11), elem_id="measured")]
    applied = [(s["setting"], s["applied"]) for s in settings if s.get("applied")]
    if applied:  # what the run plan chose beyond the setting's words (RunPlan.applied): a tuned plan or policy
        items = "".join(f"<li>{_e(setting)}: {_e(what)}</li>" for setting, what in applied)
        parts.append(f'<div class="note" id="applied">{_e(t("report.applied_note"))}<ul>{items}</ul></div>')
    if any(s["mode"] == "easyspec" for s in settings):
        chart = translate_figure(pilot_figure(settings), lang)
        chart.update_layout(title=dict(text=t("report.chart_title"), x=0.01, font=dict(size=14)),
                            margin=dict(t=70))
        parts.append(_figure(chart, "chart-pilot"))

    parts.append(f"<h2>{_e(t('report.h.equality'))}</h2>")
    if grid["temperature"] > 0:
        parts.append(f"<p>{_e(t('report.equality_sampled', temperature=grid['temperature']))}</p>")
    else:
        parts.append(f'<p class="note">{_e(t("report.equality_note"))}</p>')
        rows = []
        for s in settings:
            if s["compared_count"]:
                ties, different = s.get("tie_count", 0), s.get("different_count", 0)
                explained = s["equal_count"] + ties == s["compared_count"]
                cell = f"{s['equal_count']} / {s['compared_count']}"
                rows.append([_e(s["setting"]), cell if explained else f'<span class="bad">{cell}</span>', str(ties),
                             f'<span class="bad">{different}</span>' if different else "0"])
        parts.append(_table([t("report.col.setting"), t("report.col.equal"), t("report.col.ties"),
                             t("report.col.different")], rows, numeric=[1, 2, 3], elem_id="equality"))

    parts += _criteria(data.get("criteria"), t)

    parts.append(f"<h2>{_e(t('report.h.timeline'))}</h2>")
    rep = data.get("representative")
    if rep and records:
        note = t("report.timeline_note", setting=rep["setting"], prompt=rep["prompt"], speedup=_num(rep["speedup"]),
                 median=_num(rep.get("setting_median")))
        parts.append(f'<p class="note">{_e(note)}</p>')
        mode = next((s["mode"] for s in settings if s["setting"] == rep["setting"]), None)
        fig = timeline_figure(records, ctx["device"] or "cpu", ctx["devices"] or 1, mode,
                              title=msg("{setting} · prompt {prompt}", setting=rep["setting"], prompt=rep["prompt"]))
        parts.append(_figure(translate_figure(fig, lang), "chart-timeline"))
    else:
        parts.append(f"<p>{_e(t('report.timeline_none'))}</p>")

    parts.append(_projection(data["projection"], lang))
    about = f"<h2>{_e(t('report.h.about'))}</h2><p class=\"note\">{_e(t('report.about'))}</p>"
    if data.get("notes"):
        about += f"<p class=\"note\"><b>{_e(t('report.notes'))}:</b> " + " ".join(_e(n) for n in data["notes"]) + "</p>"
    parts.append(about)

    # Every "<" as its JSON escape: the user's prompts are in the data, and neither "</script>" nor
    # "<!--<script>" (which would keep the element open past its end tag) may reach the HTML parser.
    payload = json.dumps(data, ensure_ascii=False).replace("<", "\\u003c")
    return (f'<!DOCTYPE html>\n<html lang="{lang}"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_e(t('report.title'))}</title><style>{CSS}</style>"
            f'<script type="text/javascript">{get_plotlyjs()}</script></head>\n<body>\n'
            + "\n".join(parts)
            + f'\n<script type="application/json" id="report-data">{payload}</script>\n</body></html>\n')


def pilot_report_html(runs: Sequence[PilotRun], grid: PilotGrid, ctx: ReportContext, lang: str = "en") -> str:
    """A finished pilot's report: its data (`core.evaluation.report.report_data`) and its representative run's timeline."""
    data = report_data(runs, grid, ctx, lang)
    rep = data["representative"]
    chosen = next((r for r in runs if rep and r.setting.label == rep["setting"]
                   and r.prompt_index + 1 == rep["prompt"]), None)
    return report_html(data, chosen.records if chosen else ())


def _criteria(criteria: Mapping | None, t) -> list[str]:
    """The team's targets and each setting met or not (criteria.py), on the measured numbers."""
    if not criteria:
        return []
    targets, measured = criteria["targets"], criteria["measured"]
    judged = [j for j in measured if j["met"] is not None]

    def verdict(met) -> str:
        if met is None:
            return "—"
        return _e(t("report.met")) if met else f'<span class="bad">{_e(t("report.not_met"))}</span>'

    rows = [[_e(j["setting"]), _num(j["speedup"], 2, "x"), verdict(j["speedup_met"]),
             "—" if j["acceptance_drop"] is None else f"{j['acceptance_drop']:.1%}", verdict(j["acceptance_met"]),
             verdict(j["equality_met"]), verdict(j["met"])] for j in measured]
    note = t("report.criteria_targets", speedup=f"{targets['min_speedup']:g}",
             drop=f"{targets['max_acceptance_drop']:.0%}",
             equality=t("report.equality." + targets["equality"].replace(" ", "_")),
             met=sum(j["met"] for j in judged), total=len(judged))
    out = [f"<h2>{_e(t('report.h.criteria'))}</h2>", f'<p class="note">{_e(note)}</p>',
            _table([t(f"report.col.{c}") for c in ("setting", "speedup", "speedup_met", "acceptance_drop",
                                                    "acceptance_met", "equality_met", "met")],
                   rows, numeric=[1, 3], elem_id="criteria")]
    projected = criteria.get("projected")
    if projected:  # the same targets on the projected speedups: labelled, apart from the measured verdicts
        judged = [j for j in projected if j["met"] is not None]
        sentence = t("report.criteria_projected", g=criteria["projected_devices"], met=sum(j["met"] for j in judged),
                     total=len(judged))
        items = "; ".join(f"{_e(j['setting'])}: {_num(j['speedup'], 2, 'x')} {verdict(j['met'])}" for j in projected)
        out.append(f'<p class="projected-note" id="criteria-projected"><span class="tag">'
                   f'{_e(t("report.projected_tag"))}</span> {_e(sentence)} {items}</p>')
    return out


def _projection(p: Mapping, lang: str) -> str:
    t = lambda key, **kw: text(key, lang, **kw)  # noqa: E731
    out = [f'<div class="projected" id="projection"><h2><span class="tag">{_e(tr("projected, not measured", lang))}'
           f"</span> {_e(t('report.h.projection'))}</h2>", f"<p>{_e(t('report.projection_note'))}</p>"]
    if "rows" not in p:
        out.append(f"<p>{_e(t('report.projection_unavailable', reason=p.get('unavailable', '?')))}</p></div>")
        return "".join(out)
    hw, eff, v = p["hardware"], p["efficiency"], p["validation"]
    rules = t("report.projection_rules", hardware=hw["name"], bandwidth_tbs=f"{hw['bandwidth'] / 1e12:.2f}",
              link=hw["link_name"], efficiency=f"{eff['bandwidth']:.0%}", replay_us=f"{eff['replay_s'] * 1e6:.0f}",
              collective_us=f"{eff['collective_s'] * 1e6:.1f}", context=p["context"], rows=v["rows"],
              median=f"{v['median_abs']:.1%}", worst=f"{v['worst_abs']:.1%}", loo=f"{v['loo_median_abs']:.1%}")
    out.append(f'<p class="note">{_e(rules)}</p>')
    out.append(_table([t(f"report.col.{c}") for c in ("devices", "setting", "vanilla_tps", "speculative_tps",
                                                      "easyspec_tps", "easyspec_speedup", "accepted_length",
                                                      "utilisation")],
                      [[str(r["devices"]), _e(r["setting"]), _num(r["vanilla_tokens_per_s"]),
                        _num(r["speculative_tokens_per_s"]), _num(r["easyspec_tokens_per_s"]),
                        _num(r["easyspec_speedup"], 2, "x"), _e(r["accepted_length"]),
                        " ".join(f"{u:.2f}" for u in r["easyspec_utilisation"])]
                       for r in p["rows"]], numeric=[0, 2, 3, 4, 5], elem_id="projection-table"))
    batches = p.get("batches") or []
    if batches:  # the speedup against the batch size B (projected; the engine measures B = 1)
        note = t("report.projection_batch", g=batches[0]["devices"], setting=batches[0]["setting"])
        out.append(f'<p class="note">{_e(note)}</p>')
        out.append(_table([t(f"report.col.{c}") for c in ("batch", "easyspec_speedup", "speculative_speedup",
                                                          "verify_bound")],
                          [[str(r["batch"]), _num(r["easyspec_speedup"], 2, "x"),
                            _num(r["speculative_speedup"], 2, "x"), _e(t(f"report.bound.{r['verify_bound']}"))]
                           for r in batches], numeric=[0, 1, 2], elem_id="projection-batch"))
    inputs = [(f"base {k}", str(x)) for k, x in p["base_shape"].items()] + \
        [(f"draft {k}", str(x)) for k, x in p["draft_shape"].items()] + [(k, str(x)) for k, x in eff.items()]
    out.append(f"<details><summary>{_e(t('report.latencies'))}</summary>" + _pairs(inputs) + "</details></div>")
    return "".join(out)
