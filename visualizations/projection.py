"""Figures of a projection for the user's cluster: utilisation per device, and one simulated round.

Input: plain values from `core.evaluation.projection` (`project`'s dict, `round_spans`' spans). The round
is drawn by the run timeline's own code (timeline.py), one lane group per GPU, so a projected round reads
like a measured one: the speculative draft on GPU 0 while the others idle, against one attention per GPU.
Every figure says it is projected, not measured.
What it is not: the hardware model (`core.evaluation.projection`).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import plotly.graph_objects as go

from easyspec.core.engine.records import RoundRecord, Span
from easyspec.core.i18n import msg

from .palette import OKABE_ITO
from .timeline import timeline_figure

MODE_COLOURS = {"vanilla": OKABE_ITO["black"], "speculative": OKABE_ITO["orange"], "easyspec": OKABE_ITO["blue"]}


def utilisation_figure(p: Mapping | None, height: int = 260) -> go.Figure:
    """Busy share of each device during a round (projected): vanilla, speculative and easyspec side by side."""
    fig = go.Figure()
    if p:
        devices = list(range(p["devices"]))
        for mode, colour in MODE_COLOURS.items():
            fig.add_trace(go.Bar(x=[msg("GPU {r}", r=r) for r in devices], y=p[mode]["utilisation"], name=mode,
                                 marker_color=colour,
                                 hovertemplate=f"{mode}<br>%{{x}}: %{{y:.0%}} busy<extra></extra>"))
    fig.update_layout(barmode="group", height=height, margin=dict(l=50, r=10, t=40, b=40),
                      title=dict(text="Projected busy share per device", x=0.01, font=dict(size=14)),
                      legend=dict(orientation="h", y=1.12, x=1, xanchor="right"), template="plotly_white")
    fig.update_yaxes(range=[0, 1.05], tickformat=".0%", title_text="busy / round")
    return fig


def round_figure(spans: Sequence[Span], devices: int, mode: str, x_range: tuple[float, float] | None = None,
                 height: int | None = None) -> go.Figure:
    """One projected round of `mode` on `devices` GPUs, from `round_spans`' spans, drawn by the timeline code."""
    end = max((s.end_ns for s in spans), default=0)
    record = RoundRecord(index=1, token_ids=(), origins=(), drafted=(), accepted=0, phase_s={}, spans=tuple(spans),
                         end_ns=end)
    title = msg("Projected round: {mode} on {g} GPUs", mode=mode, g=devices)
    return timeline_figure([record] if spans else [], "cuda", devices, mode, title=title, x_range=x_range,
                           tokens_lane=False, height=height, legend="bottom")
