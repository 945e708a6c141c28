"""The per-device timeline: one lane group per device (rank), one lane per phase family.

Spans are drawn as horizontal bars with `base = start` and `x = duration` on a numeric millisecond
axis (docs/conventions.md#dashboard-timeline); nested spans (a verify and its all-reduces, a draft attention and
its all-gather) sit on separate lanes, as in the Chrome trace (`core.engine.chrome_trace.LANES`). A
`tokens` lane on top marks when each round's tokens were emitted, tying the timeline to the text.

A long run holds tens of thousands of layer spans, far below one pixel each at full-run zoom: when
there are more than `max_bars`, neighbouring spans of the same phase, device and round that are
closer than the display resolution are merged (the hover says how many); the Chrome trace keeps
every span.
What it is not: a tracer (the spans come from the records, `core.engine.tracing`) or the trace file
(`core.engine.chrome_trace`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import plotly.graph_objects as go

from easyspec.core.engine.chrome_trace import LANES
from easyspec.core.engine.monitor import OFF, SEQUENTIAL
from easyspec.core.engine.records import PHASES, RoundRecord
from easyspec.core.i18n import msg

from .palette import ORIGIN_COLOURS, PHASE_COLOURS, PHASE_LABELS

TOKENS_LANE = "tokens"


@dataclass(frozen=True)
class Bar:
    """One drawn bar: a span, or several neighbouring spans merged."""

    rank: int
    phase: str
    start_ms: float
    end_ms: float
    round: int
    label: str
    count: int = 1


def device_name(rank: int, device: str = "cpu", devices: int = 1) -> str:
    """How a lane group is titled: 'GPU 2' on CUDA, 'CPU' or 'CPU rank 1' otherwise."""
    if device.startswith("cuda"):
        return msg("GPU {r}", r=rank)
    return "CPU" if devices <= 1 and rank == 0 else msg("CPU rank {r}", r=rank)


def lane_label(rank: int, phase: str, device: str = "cpu", devices: int = 1) -> str:
    return f"{device_name(rank, device, devices)} · {LANES[phase][1]}"


def span_bars(records: Sequence[RoundRecord]) -> list[Bar]:
    """Every span of every round as a bar, times in ms from the run's t0."""
    return [Bar(s.rank, s.phase, s.start_ns / 1e6, s.end_ns / 1e6, rec.index, s.label)
            for rec in records for s in rec.spans]


def _merge_label(first: str, last: str) -> str:
    if first == last:
        return first
    return f"{first or '—'} … {last or '—'}"


def coalesce(bars: Sequence[Bar], resolution_ms: float) -> list[Bar]:
    """Merge bars of the same device, phase and round whose gap is at most `resolution_ms`."""
    out: list[Bar] = []
    key_of = lambda b: (b.rank, b.phase, b.round)  # noqa: E731
    for b in sorted(bars, key=lambda b: (b.rank, b.phase, b.round, b.start_ms)):
        prev = out[-1] if out else None
        if prev is not None and key_of(prev) == key_of(b) and b.start_ms - prev.end_ms <= resolution_ms:
            first = prev.label.split(" … ")[0]
            out[-1] = Bar(b.rank, b.phase, prev.start_ms, max(prev.end_ms, b.end_ms), b.round,
                          _merge_label(first, b.label), prev.count + b.count)
        else:
            out.append(b)
    return out


def fit_bars(bars: Sequence[Bar], max_bars: int) -> list[Bar]:
    """At most `max_bars` bars: merge at a resolution that doubles until they fit (or one per round)."""
    bars = list(bars)
    if len(bars) <= max_bars:
        return bars
    total = max(b.end_ms for b in bars) - min(b.start_ms for b in bars)
    resolution = max(total / 4000, 1e-6)
    while len(bars) > max_bars and resolution < total:
        bars = coalesce(bars, resolution)
        resolution *= 2
    return bars if len(bars) <= max_bars else coalesce(bars, float("inf"))


def lanes_for(records: Sequence[RoundRecord], device: str = "cpu", devices: int = 1,
              tokens_lane: bool = True) -> list[str]:
    """Lane labels top to bottom: the tokens lane, then per rank the lanes that any rank used."""
    ranks = sorted({s.rank for r in records for s in r.spans} | set(range(devices)))
    used = {s.phase for r in records for s in r.spans}
    lane_ids = sorted({LANES[p][0] for p in used})
    order = [TOKENS_LANE] if tokens_lane and records else []
    for rank in ranks:
        for lane_id in lane_ids:
            phase = next(p for p in PHASES if LANES[p][0] == lane_id)
            order.append(lane_label(rank, phase, device, devices))
    return order


def _tokens_trace(records: Sequence[RoundRecord], mode: str | None) -> go.Scatter:
    xs, sizes, colours, hover = [], [], [], []
    for rec in records:
        n = len(rec.token_ids)
        xs.append(rec.end_ns / 1e6)
        sizes.append(6 + 2.5 * min(n, 10))
        if mode == "vanilla":
            colour, kind = ORIGIN_COLOURS["base"], "base token"
        elif "prefill" in rec.origins:
            colour, kind = ORIGIN_COLOURS["prefill"], "prefill"
        elif rec.origins and rec.origins[-1] == "bonus":
            colour, kind = ORIGIN_COLOURS["bonus"], "all drafts accepted + bonus"
        else:
            colour, kind = ORIGIN_COLOURS["recovered"], "recovered at a rejected draft"
        colours.append(colour)
        drafted = f", {rec.accepted}/{len(rec.drafted)} drafts accepted" if rec.drafted else ""
        if rec.tree_tokens:
            drafted = f", tree of {len(rec.tree_tokens)} nodes: path of {rec.accepted} accepted"
        cal = ", calibrated" if rec.calibrated else ""
        hover.append(f"round {rec.index}: {n} token{'s' if n != 1 else ''} emitted ({kind}{drafted}{cal})"
                     f"<br>at {rec.end_ns / 1e6:.2f} ms")
    return go.Scatter(x=xs, y=[TOKENS_LANE] * len(xs), mode="markers", name="tokens emitted",
                      marker=dict(size=sizes, color=colours, line=dict(width=0.5, color="#333")),
                      hovertext=hover, hoverinfo="text", showlegend=False)


def timeline_figure(records: Sequence[RoundRecord], device: str = "cpu", devices: int = 1,
                    mode: str | None = None, title: str | None = None, max_bars: int = 2500,
                    x_range: tuple[float, float] | None = None, tokens_lane: bool = True,
                    height: int | None = None, legend: str = "top") -> go.Figure:
    """The timeline of `records` (any subset of a run's rounds) as a Plotly figure.

    legend: "top" (one row above the lanes, for wide figures), "bottom" (wraps below the axis, for
    narrow ones) or "none".
    """
    assert legend in ("top", "bottom", "none"), legend
    lanes = lanes_for(records, device, devices, tokens_lane)
    bars = fit_bars(span_bars(records), max_bars)
    fig = go.Figure()
    for phase in PHASES:
        mine = [b for b in bars if b.phase == phase]
        if not mine:
            continue
        fig.add_trace(go.Bar(
            orientation="h", name=PHASE_LABELS[phase],
            y=[lane_label(b.rank, phase, device, devices) for b in mine],
            base=[b.start_ms for b in mine], x=[max(b.end_ms - b.start_ms, 1e-6) for b in mine],
            marker=dict(color=PHASE_COLOURS[phase], line=dict(width=0)), width=0.72,
            customdata=[[b.round, phase, b.label or "—", b.end_ms - b.start_ms, b.start_ms,
                         f"<br>{b.count} spans merged (the Chrome trace has each)" if b.count > 1 else ""]
                        for b in mine],
            hovertemplate=("round %{customdata[0]}<br>phase %{customdata[1]}<br>layer group %{customdata[2]}"
                           "<br>duration %{customdata[3]:.3f} ms<br>start %{customdata[4]:.2f} ms"
                           "%{customdata[5]}<extra></extra>")))
    if tokens_lane and records:
        fig.add_trace(_tokens_trace(records, mode))
    n_lanes = max(len(lanes), 1)
    top = (34 if title else 8) + (26 if legend == "top" else 0)
    bottom = 44 + (70 if legend == "bottom" else 0)
    legend_layout = (dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1.0, font=dict(size=10))
                     if legend == "top" else
                     dict(orientation="h", yanchor="top", y=-50 / (28 * n_lanes + 10), x=0, font=dict(size=10)))
    fig.update_layout(
        barmode="overlay", bargap=0.1, title=dict(text=title or "", x=0.01, y=0.98, yanchor="top",
                                                  font=dict(size=13)),
        height=height or top + bottom + 28 * n_lanes + 10, showlegend=legend != "none",
        margin=dict(l=10, r=10, t=top, b=bottom), legend=legend_layout,
        xaxis=dict(title="time since start of run (ms)", showgrid=True, zeroline=False,
                   range=list(x_range) if x_range else None),
        yaxis=dict(type="category", categoryorder="array", categoryarray=list(reversed(lanes)),
                   tickmode="array", tickvals=lanes, ticktext=lanes, automargin=True, tickfont=dict(size=11)),
        hoverlabel=dict(font_size=12), plot_bgcolor="white", uirevision="timeline")
    _shade_ranks(fig, lanes)
    _mark_fallbacks(fig, records)
    if not records:
        fig.add_annotation(text="no rounds yet: press Run", showarrow=False, x=0.5, y=0.5,
                           xref="paper", yref="paper", font=dict(size=13, color="#777"))
        fig.update_yaxes(showticklabels=False)
    return fig


# The sequential switch always comes first: its label sits left of its line and the later one's right of its
# line, so the two never overlap however close they are.
FALLBACK_MARKS = {SEQUENTIAL: ("fallback: sequential drafting (after round {n})", "#E69F00", "top left"),
                  OFF: ("fallback: drafting off (after round {n})", "#D55E00", "top right")}


def _mark_fallbacks(fig: go.Figure, records: Sequence[RoundRecord]) -> None:
    """A dashed vertical line with a label where the run's fallback switched (monitor.FallbackGuard)."""
    for r in records:
        for flag in r.flags:
            if flag in FALLBACK_MARKS:
                text, colour, position = FALLBACK_MARKS[flag]
                fig.add_vline(x=r.end_ns / 1e6, line=dict(color=colour, width=2, dash="dash"),
                              annotation_text=msg(text, n=r.index), annotation_position=position,
                              annotation_font=dict(size=11, color=colour))


def _shade_ranks(fig: go.Figure, lanes: Sequence[str]) -> None:
    """Light bands behind every other device's lane group, so that groups read apart."""
    bottom_up = list(reversed(lanes))
    devices: list[str] = []
    for lane in lanes:
        name = lane.split(" · ")[0]
        if lane != TOKENS_LANE and name not in devices:
            devices.append(name)
    for i, name in enumerate(devices):
        if i % 2 == 0 and len(devices) == 1:
            continue
        idx = [j for j, lane in enumerate(bottom_up) if lane.split(" · ")[0] == name]
        fig.add_shape(type="rect", xref="paper", x0=0, x1=1, yref="y", y0=min(idx) - 0.5, y1=max(idx) + 0.5,
                      fillcolor="rgba(0,114,178,0.05)" if i % 2 == 0 else "rgba(230,159,0,0.06)",
                      line=dict(width=0), layer="below")


def round_range_ms(records: Sequence[RoundRecord], index: int) -> tuple[float, float]:
    """[start, end] in ms of round `index` (its first span to its end), for zooming in on one round."""
    rec = next(r for r in records if r.index == index)
    start = min((s.start_ns for s in rec.spans), default=rec.end_ns) / 1e6
    return start, rec.end_ns / 1e6
