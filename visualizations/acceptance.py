"""Acceptance figures from per-round records: per-position acceptance, the accepted-count histogram
and the rolling acceptance rate with its alert line.

Per-position acceptance (vLLM's definition, docs/conventions.md#per-position-acceptance): rounds that accepted draft position i /
rounds that drafted position i. The histogram counts rounds by how many drafts the base accepted.
Prefill and vanilla rounds draft nothing and are left out.
What it is not: the alert's rule (`core.engine.monitor` decides when acceptance has collapsed); this
only draws it.
"""
from __future__ import annotations

from typing import Sequence

import plotly.graph_objects as go

from easyspec.core.engine.records import RoundRecord
from easyspec.core.i18n import msg

from .palette import OKABE_ITO


def drafting_rounds(records: Sequence[RoundRecord]) -> list[RoundRecord]:
    return [r for r in records if r.drafted and r.index > 0 and "prefill" not in r.origins]


def per_position_counts(records: Sequence[RoundRecord]) -> list[tuple[int, int]]:
    """[(accepted, drafted)] for draft positions 1..k."""
    rounds = drafting_rounds(records)
    depth = max((len(r.drafted) for r in rounds), default=0)
    return [(sum(r.accepted > i for r in rounds), sum(len(r.drafted) > i for r in rounds)) for i in range(depth)]


def _empty(fig: go.Figure, text: str) -> go.Figure:
    fig.add_annotation(text=text, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper",
                       font=dict(size=12, color="#777"))
    return fig


def _layout(fig: go.Figure, title: str, x_title: str, y_title: str, height: int) -> go.Figure:
    fig.update_layout(title=dict(text=title, x=0.01, font=dict(size=13)), height=height,
                      margin=dict(l=10, r=10, t=36, b=36), plot_bgcolor="white", showlegend=False,
                      xaxis=dict(title=x_title, dtick=1), yaxis=dict(title=y_title, automargin=True,
                                                                      gridcolor="#eee"))
    return fig


def per_position_figure(records: Sequence[RoundRecord], height: int = 260) -> go.Figure:
    counts = per_position_counts(records)
    fig = go.Figure()
    if counts:
        rates = [a / d if d else 0.0 for a, d in counts]
        fig.add_trace(go.Bar(x=list(range(1, len(counts) + 1)), y=rates, marker_color=OKABE_ITO["bluish_green"],
                             text=[f"{a}/{d}" for a, d in counts], textposition="outside",
                             hovertemplate="draft position %{x}<br>acceptance %{y:.2f}<br>%{text} rounds"
                                           "<extra></extra>"))
    _layout(fig, "Per-position acceptance", "draft position", "accepted / drafted", height)
    fig.update_yaxes(range=[0, 1.15])
    return fig if counts else _empty(fig, "no drafted tokens (vanilla, or no rounds yet)")


def accepted_histogram_figure(records: Sequence[RoundRecord], height: int = 260) -> go.Figure:
    rounds = drafting_rounds(records)
    fig = go.Figure()
    if rounds:
        k = max(len(r.drafted) for r in rounds)
        hist = [sum(r.accepted == a for r in rounds) for a in range(k + 1)]
        fig.add_trace(go.Bar(x=list(range(k + 1)), y=hist, marker_color=OKABE_ITO["blue"],
                             hovertemplate="%{y} rounds accepted %{x} drafts<extra></extra>"))
    _layout(fig, "Accepted drafts per round", "drafts accepted", "rounds", height)
    return fig if rounds else _empty(fig, "no drafting rounds yet")


def acceptance_summary_figure(items: Sequence[tuple[str, float | None, float | None]], height: int = 280) -> go.Figure:
    """AR and AL side by side for a few labelled runs: items are (label, AR, AL)."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("acceptance rate (AR)", "mean accepted length (AL)"))
    labels = [label for label, _, _ in items]
    colours = [OKABE_ITO["bluish_green"], OKABE_ITO["blue"], OKABE_ITO["vermillion"], OKABE_ITO["reddish_purple"],
               OKABE_ITO["orange"], OKABE_ITO["sky_blue"]]
    for col, idx in ((1, 1), (2, 2)):
        values = [item[idx] for item in items]
        fig.add_trace(go.Bar(x=labels, y=values, marker_color=[colours[i % len(colours)] for i in range(len(items))],
                             text=[("—" if v is None else f"{v:.2f}") for v in values], textposition="outside",
                             hovertemplate="%{x}<br>%{y:.3f}<extra></extra>", showlegend=False), row=1, col=col)
    fig.update_yaxes(range=[0, 1.15], row=1, col=1, gridcolor="#eee")
    top = max([v for _, _, v in items if v is not None] or [1.0])
    fig.update_yaxes(range=[0, top * 1.2], row=1, col=2, gridcolor="#eee")
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=36, b=10), plot_bgcolor="white")
    if not items:
        fig.add_annotation(text="no runs yet", showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    return fig


def rolling_acceptance_figure(points: Sequence[tuple[int, float]], flagged: Sequence[int], expected: float | None,
                              threshold: float, height: int = 260) -> go.Figure:
    """The rolling acceptance rate per round (core.engine.monitor), the run's expectation and its alert line.

    points: (round index, rolling AR); flagged: round indices whose record carries the alert flag;
    expected: the measured expectation (None when only the fixed floor applies).
    """
    fig = go.Figure()
    if points:
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line=dict(color=OKABE_ITO["blue"], width=2),
                                 hovertemplate="round %{x}<br>rolling acceptance %{y:.2f}<extra></extra>"))
        bad = [(x, y) for x, y in points if x in set(flagged)]
        if bad:
            fig.add_trace(go.Scatter(x=[b[0] for b in bad], y=[b[1] for b in bad], mode="markers",
                                     marker=dict(color=OKABE_ITO["vermillion"], size=7, symbol="x"),
                                     hovertemplate="round %{x}: alert<extra></extra>"))
        if expected is not None:
            fig.add_hline(y=expected, line=dict(color=OKABE_ITO["bluish_green"], dash="dot"),
                          annotation_text=msg("expected {rate}", rate=f"{expected:.2f}"), annotation_position="top left")
        fig.add_hline(y=threshold, line=dict(color=OKABE_ITO["vermillion"], dash="dash"),
                      annotation_text=msg("alert below {rate}", rate=f"{threshold:.2f}"), annotation_position="bottom left")
    _layout(fig, "Rolling acceptance (last 12 rounds)", "round", "accepted / drafted", height)
    fig.update_xaxes(dtick=None)
    fig.update_yaxes(range=[0, 1.05])
    return fig if points else _empty(fig, "no drafting rounds yet")
