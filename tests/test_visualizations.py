"""Pure figure and HTML builders: lanes, spans, hover, merging, acceptance counts, token colouring."""
from __future__ import annotations

import ast
import html
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from easyspec.core.engine.metrics import compute
from easyspec.core.engine.records import RoundRecord, Span
from easyspec.visualizations.acceptance import (accepted_histogram_figure, per_position_counts,
                                               per_position_figure)
from easyspec.visualizations.cards import badge_html, metric_cards_html
from easyspec.visualizations.palette import OKABE_ITO, ORIGIN_COLOURS
from easyspec.visualizations.pilot_charts import pilot_figure
from easyspec.visualizations.timeline import TOKENS_LANE, coalesce, fit_bars, lanes_for, span_bars, timeline_figure
from easyspec.visualizations.tokens import TokenPiece, legend_html, tokens_html

ROOT = Path(__file__).resolve().parents[1]


def two_rank_records() -> list[RoundRecord]:
    """A prefill round and two drafting rounds on 2 ranks, with nested comm/idle spans."""
    ms = 1_000_000
    prefill = RoundRecord(0, (5,), ("prefill",), (), 0, {"verify": 0.002}, (
        Span("verify", 0, 2 * ms, 0, "prefill"), Span("verify", 0, 2 * ms, 1, "prefill"),
        Span("verify.comm", ms, ms + ms // 2, 0), Span("verify.comm", ms, ms + ms // 2, 1)), end_ns=2 * ms)
    r1 = RoundRecord(1, (7, 8, 9), ("accepted", "accepted", "recovered"), (7, 8, 3), 2, {"draft.attn": 0.001}, (
        Span("calibrate", 2 * ms, 3 * ms, 0, "3 tokens"), Span("calibrate", 2 * ms, 3 * ms, 1, "3 tokens"),
        Span("draft.attn", 3 * ms, 4 * ms, 0, "L1-2"), Span("draft.comm", 3 * ms + 500_000, 4 * ms, 0, "L1-2"),
        Span("draft.attn", 3 * ms, 4 * ms, 1, "L1-2"), Span("idle", 3 * ms + 200_000, 4 * ms, 1, "L1-2"),
        Span("draft.mlp", 4 * ms, 5 * ms, 0, "L1-2"), Span("draft.mlp", 4 * ms, 5 * ms, 1, "L1-2"),
        Span("verify", 5 * ms, 7 * ms, 0), Span("verify", 5 * ms, 7 * ms, 1),
        Span("sample", 7 * ms, 7 * ms + 100_000, 0, "verify")), end_ns=7 * ms + 200_000, calibrated=True)
    r2 = RoundRecord(2, (1, 2, 3, 4), ("accepted",) * 3 + ("bonus",), (1, 2, 3), 3, {"verify": 0.001}, (
        Span("draft.attn", 8 * ms, 9 * ms, 0, "L1-2"), Span("verify", 9 * ms, 10 * ms, 0)), end_ns=10 * ms)
    return [prefill, r1, r2]


def test_timeline_has_one_lane_group_per_device_and_every_span():
    records = two_rank_records()
    fig = timeline_figure(records, device="cuda", devices=2, mode="easyspec")
    lanes = list(fig.layout.yaxis.categoryarray)[::-1]
    assert lanes[0] == TOKENS_LANE
    for rank in (0, 1):
        for lane in ("draft attention", "draft MLP", "communication", "idle", "calibrate", "verify"):
            assert f"GPU {rank} · {lane}" in lanes
    # rank 0's lanes come before rank 1's (lane groups), top to bottom
    assert max(i for i, name in enumerate(lanes) if name.startswith("GPU 0")) < \
        min(i for i, name in enumerate(lanes) if name.startswith("GPU 1"))
    bars = [t for t in fig.data if t.type == "bar"]
    assert sum(len(t.x) for t in bars) == sum(len(r.spans) for r in records)
    assert all(t.orientation == "h" for t in bars)
    attn = next(t for t in bars if t.name == "draft attention")
    assert attn.base[0] == pytest.approx(3.0) and attn.x[0] == pytest.approx(1.0)  # ms, base=start, x=duration
    round_, phase, label, duration = attn.customdata[0][:4]
    assert (round_, phase, label, duration) == (1, "draft.attn", "L1-2", pytest.approx(1.0))
    assert "layer group" in attn.hovertemplate and "round" in attn.hovertemplate
    # nested spans sit on their own lanes
    comm = next(t for t in bars if t.name == "verify all-reduce")
    assert set(comm.y) == {"GPU 0 · communication", "GPU 1 · communication"}
    tokens = next(t for t in fig.data if t.type == "scatter")
    assert list(tokens.x) == [r.end_ns / 1e6 for r in records]
    assert fig.layout.xaxis.title.text.endswith("(ms)")


def test_timeline_on_cpu_names_ranks_and_empty_figure_says_so():
    fig = timeline_figure(two_rank_records(), device="cpu", devices=2)
    assert "CPU rank 1 · verify" in fig.layout.yaxis.categoryarray
    single = timeline_figure(two_rank_records()[2:], device="cpu", devices=1)
    assert "CPU · verify" in single.layout.yaxis.categoryarray
    empty = timeline_figure([])
    assert not empty.data and "no rounds yet" in empty.layout.annotations[0].text


def test_timeline_lanes_only_for_phases_used():
    lanes = lanes_for(two_rank_records()[2:], "cpu", 1)
    assert lanes == [TOKENS_LANE, "CPU · draft attention", "CPU · verify"]


def test_merging_keeps_extent_and_counts_and_respects_budget():
    ms = 1_000_000
    spans = tuple(Span("draft.attn" if i % 2 == 0 else "draft.mlp", i * ms // 10, (i + 1) * ms // 10, 0, f"L{i}")
                  for i in range(400))
    rec = RoundRecord(1, (1,), ("bonus",), (1,), 1, {}, spans, end_ns=41 * ms)
    bars = span_bars([rec])
    assert len(bars) == 400
    merged = coalesce(bars, 0.2)  # gaps of 0.1 ms between same-phase spans
    assert len(merged) == 2 and sum(b.count for b in merged) == 400
    attn = next(b for b in merged if b.phase == "draft.attn")
    assert attn.start_ms == 0 and attn.end_ms == pytest.approx(39.9) and attn.label == "L0 … L398"
    fitted = fit_bars(bars, 50)
    assert len(fitted) <= 50 and sum(b.count for b in fitted) == 400
    fig = timeline_figure([rec], max_bars=50)
    assert sum(len(t.x) for t in fig.data if t.type == "bar") <= 50
    assert any("spans merged" in c[5] for t in fig.data if t.type == "bar" for c in t.customdata)


def test_per_position_acceptance_and_histogram():
    records = two_rank_records()
    assert per_position_counts(records) == [(2, 2), (2, 2), (1, 2)]
    fig = per_position_figure(records)
    assert list(fig.data[0].y) == [1.0, 1.0, 0.5] and list(fig.data[0].text) == ["2/2", "2/2", "1/2"]
    assert compute(records).per_position_acceptance == tuple(fig.data[0].y)  # same definition as core.engine.metrics
    hist = accepted_histogram_figure(records)
    assert list(hist.data[0].y) == [0, 0, 1, 1]
    assert not per_position_figure(records[:1]).data  # prefill only: nothing drafted


def test_token_colouring_escapes_and_colours_by_origin():
    pieces = [TokenPiece("<b>", "prefill", 0), TokenPiece(" x", "accepted", 1), TokenPiece("", "accepted", 1),
              TokenPiece("y\n", "recovered", 1), TokenPiece("z", "bonus", 2)]
    out = tokens_html(pieces, "easyspec")
    assert "&lt;b&gt;" in out and "<b>" not in out
    assert out.count('class="es-tok') == 5  # one span per token, the empty piece included
    for origin in ("prefill", "accepted", "recovered", "bonus"):
        colour = ORIGIN_COLOURS[origin]
        r, g, b = (int(colour[i:i + 2], 16) for i in (1, 3, 5))
        assert f'data-origin="{origin}"' in out and f"rgba({r}, {g}, {b}, 0.22)" in out
    assert "round 2: bonus" in html.unescape(out)
    assert "accepted draft token (2)" in out  # legend counts tokens, empty pieces included
    assert set(ORIGIN_COLOURS.values()) <= set(OKABE_ITO.values()) | {"#999999"}


def test_vanilla_tokens_are_shown_as_base_tokens():
    out = tokens_html([TokenPiece("a", "prefill", 0), TokenPiece("b", "bonus", 1)], "vanilla")
    assert 'data-origin="base"' in out and 'data-origin="bonus"' not in out
    assert "base model token (no draft) (2)" in out
    assert "accepted" not in legend_html("vanilla")
    assert "placeholder" not in tokens_html([], "easyspec") and "appears here" in tokens_html([], "easyspec")


def test_metric_cards_and_badge():
    m = compute(two_rank_records())
    out = metric_cards_html(m, "easyspec")
    assert 'data-metric="acceptance_rate"' in out and f"{m.acceptance_rate:.3f}" in out
    assert f"{m.mean_accepted_length:.2f}" in out and f"{m.tokens_per_s:.2f}" in out
    assert "Metrics appear" in metric_cards_html(None)
    assert 'data-equal="yes"' in badge_html(True) and 'data-equal="no"' in badge_html(False)
    assert 'data-equal="na"' in badge_html(None)


def test_pilot_figure_lines_per_policy_and_reference_lines():
    summary = [
        {"mode": "vanilla", "layer_parallel": None, "calibration": None, "draft_len": None, "speedup": 1.0,
         "acceptance_rate": None},
        {"mode": "speculative", "layer_parallel": None, "calibration": None, "draft_len": 5, "speedup": 1.4,
         "acceptance_rate": 0.8},
    ] + [{"mode": "easyspec", "layer_parallel": n, "calibration": c, "draft_len": 5, "speedup": 1 + n / 10,
          "acceptance_rate": 0.7 - n / 100} for c in ("none", "every-round") for n in (2, 4)]
    fig = pilot_figure(summary)
    names = {t.name for t in fig.data}
    assert names == {"calibration none", "calibration every-round"}
    every = [t for t in fig.data if t.name == "calibration every-round"]
    assert len(every) == 2 and list(every[0].x) == [2, 4] and list(every[0].y) == [1.2, 1.4]
    assert list(every[1].y) == [pytest.approx(0.68), pytest.approx(0.66)]
    assert len(fig.layout.shapes) == 3  # speculative on both charts, vanilla = 1.0x on the speedup chart


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(("." * node.level) + node.module)
    return names


def test_imports_point_one_way():
    """core never imports UI code; visualizations import neither gradio nor torch nor app."""
    for path in (ROOT / "core").glob("*.py"):
        bad = {n for n in _imports(path) if n.split(".")[0] in ("gradio", "plotly")
               or "visualizations" in n or n.startswith(("easyspec.app", "..app"))}
        assert not bad, f"{path.name} imports {bad}"
    for path in (ROOT / "visualizations").glob("*.py"):
        bad = {n for n in _imports(path) if n.split(".")[0] in ("gradio", "torch") or "easyspec.app" in n}
        assert not bad, f"{path.name} imports {bad}"
    code = ("import sys, easyspec.visualizations.timeline, easyspec.visualizations.acceptance, "
            "easyspec.visualizations.cards, easyspec.visualizations.tokens, easyspec.visualizations.pilot_charts; "
            "print(sorted(m for m in ('torch', 'gradio') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_rolling_acceptance_figure_marks_alerts():
    from easyspec.visualizations.acceptance import rolling_acceptance_figure

    fig = rolling_acceptance_figure([(1, 0.8), (2, 0.5), (3, 0.1)], [3], 0.8, 0.4)
    lines, marks = fig.data
    assert list(lines.y) == [0.8, 0.5, 0.1] and list(marks.x) == [3]
    assert {s.y0 for s in fig.layout.shapes} == {0.8, 0.4}
    empty = rolling_acceptance_figure([], [], None, 0.2)
    assert not empty.data and "no drafting rounds" in empty.layout.annotations[0].text


def test_memory_cards_say_what_they_measured():
    from helpers import untranslated

    from easyspec.core.engine.metrics import memory_label

    rounds = [RoundRecord(index=i, token_ids=(1,), origins=("prefill" if i == 0 else "bonus",), drafted=(),
                          accepted=0, phase_s={}, spans=(), end_ns=(i + 1) * 10**6, memory_source="rss",
                          run_start_memory_bytes=2**30, run_peak_memory_bytes=2**30 + i * 2**20) for i in range(4)]
    m = compute(rounds)
    assert (m.run_peak_memory_bytes, m.run_memory_growth_bytes) == (2**30 + 3 * 2**20, 3 * 2**20)
    out = metric_cards_html(m, "vanilla")
    assert "peak memory (this run)" in out and "1.00 GiB" in out and "+3 MiB" in out
    assert 'title="peak RSS during this run (process, incl. loaded models)"' in out
    assert memory_label("cuda") == "allocator peak during this run"
    japanese = metric_cards_html(m, "vanilla", lang="ja")
    assert "ピークメモリ（この実行）" in japanese and not untranslated([japanese])
    unknown = compute([replace(r, memory_source="", run_start_memory_bytes=0, run_peak_memory_bytes=0)
                       for r in rounds])
    assert 'data-metric="peak_memory"' not in metric_cards_html(unknown, "vanilla")  # an old run file: no figure
