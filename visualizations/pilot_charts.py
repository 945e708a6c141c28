"""Pilot charts: speedup over vanilla and acceptance rate against the layer-parallel size N.

Input: the pilot's per-setting summary rows (plain dicts, `core.evaluation.pilot.summarise`). One line per
calibration policy and draft length, so "with and without calibration" reads off directly; a
layer plan (tuned or typed) is a star at its largest group;
vanilla (1.0x) and sequential speculative decoding are drawn as reference lines.
What it is not: the pilot or its summary (`core.evaluation.pilot`): only figures from its rows.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from easyspec.core.i18n import msg

from .palette import GREY, OKABE_ITO, POLICY_COLOURS

DASHES = ("solid", "dot", "dash", "longdash", "dashdot")


def largest_group_text(plan: str) -> int:
    """The largest group of a plan written '0|1-4|5-8|9'."""
    return max(int(p.split("-")[-1]) - int(p.split("-")[0]) + 1 for p in plan.split("|"))


def pilot_figure(summary: Sequence[Mapping], height: int = 340) -> go.Figure:
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Speedup over vanilla (same run)",
                                                        "Acceptance rate (AR)"), horizontal_spacing=0.12)
    easy = [r for r in summary if r.get("mode") == "easyspec"]
    ks = sorted({r["draft_len"] for r in easy})
    contexts = sorted({r.get("context", 0) for r in easy})
    lines = [(k, c) for k in ks for c in contexts]  # one line per policy, k and prompt length
    for policy in ("none", "on-mismatch", "every-round"):
        for j, (k, c) in enumerate(lines):
            rows = sorted((r for r in easy if r["calibration"] == policy and r["draft_len"] == k
                           and r.get("context", 0) == c and r["layer_parallel"] is not None),
                          key=lambda r: r["layer_parallel"])
            if not rows:
                continue
            variant = (f", k={k}" if len(ks) > 1 else "") + (f" · ctx {c}" if len(contexts) > 1 else "")
            name = msg("calibration {policy}{variant}", policy=policy, variant=variant)
            style = dict(color=POLICY_COLOURS[policy], dash=DASHES[j % len(DASHES)])
            for col, key in ((1, "speedup"), (2, "acceptance_rate")):
                fig.add_trace(go.Scatter(
                    x=[r["layer_parallel"] for r in rows], y=[r.get(key) for r in rows], mode="lines+markers",
                    name=name, legendgroup=name, showlegend=col == 1, line=style, marker=dict(size=8),
                    hovertemplate=f"{name}<br>N=%{{x}}<br>{key.replace('_', ' ')} %{{y:.3f}}<extra></extra>"),
                    row=1, col=col)
    for r in easy:  # layer plans (tuned or typed): a star at their largest group, the N they run at most
        if r["layer_parallel"] is None and r.get("groups"):
            name = f"{r['setting'].removeprefix('easyspec ')}"
            for col, key in ((1, "speedup"), (2, "acceptance_rate")):
                fig.add_trace(go.Scatter(
                    x=[largest_group_text(r["groups"])], y=[r.get(key)], mode="markers", name=name, legendgroup=name,
                    showlegend=col == 1, marker=dict(symbol="star", size=13, color=POLICY_COLOURS[r["calibration"]]),
                    hovertemplate=f"{name}<br>plan {r['groups']}<br>{key.replace('_', ' ')} %{{y:.3f}}<extra></extra>"),
                    row=1, col=col)
    for r in summary:
        if r.get("mode") == "speculative":
            variant = f" · ctx {r['context']}" if r.get("context") else ""
            label = msg("speculative (sequential draft, k={k}){variant}", k=r["draft_len"], variant=variant)
            for col, key in ((1, "speedup"), (2, "acceptance_rate")):
                if r.get(key) is not None:
                    fig.add_hline(y=r[key], line=dict(color=OKABE_ITO["black"], dash="dot", width=1),
                                  annotation_text=label if col == 1 else "", annotation_font_size=10,
                                  annotation_position="top left", row=1, col=col)
    if any(r.get("mode") == "vanilla" for r in summary):
        fig.add_hline(y=1.0, line=dict(color=GREY, width=1), annotation_text="vanilla = 1.0x",
                      annotation_font_size=10, annotation_position="bottom right", row=1, col=1)
    fig.update_xaxes(title_text="layer-parallel size N", dtick=1)
    fig.update_yaxes(title_text="speedup (x)", row=1, col=1, rangemode="tozero", gridcolor="#eee")
    fig.update_yaxes(title_text="accepted / drafted", row=1, col=2, range=[0, 1.05], gridcolor="#eee")
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=40, b=40), plot_bgcolor="white",
                      legend=dict(orientation="h", y=-0.25, font=dict(size=11)))
    if not summary:
        fig.add_annotation(text="no pilot results yet", showarrow=False, x=0.5, y=0.5, xref="paper",
                           yref="paper", font=dict(size=12, color="#777"))
    return fig
