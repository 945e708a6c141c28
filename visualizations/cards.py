"""Small HTML panels from plain data: metric cards, the time split, the device panel, badges.

Pure functions returning HTML strings with inline styles (they render the same anywhere). Values
follow the metric definitions of `core.engine.metrics` (AR, AL as docs/conventions.md#metrics defines them). A `lang`
argument translates the words a person reads (labels, hints) through the translation table; the
`data-*` attributes stay English for scripts and tests.
What it is not: a Gradio component: plain strings, no gradio import.
"""
from __future__ import annotations

import html
from typing import Sequence

from easyspec.core.runtime.device_stats import DeviceReading
from easyspec.core.i18n import msg, tr
from easyspec.core.engine.metrics import GROWTH_LABEL, Metrics, memory_label

from .palette import OKABE_ITO, PHASE_COLOURS, PHASE_LABELS

_CARD = ("display:inline-block;min-width:92px;margin:0 8px 8px 0;padding:6px 10px;border-radius:8px;"
         "border:1px solid rgba(128,128,128,0.3);vertical-align:top")


def _fmt(x: float | None, digits: int = 2, suffix: str = "") -> str:
    return "—" if x is None else f"{x:.{digits}f}{suffix}"


def _card(label: str, value: str, hint: str, key: str, lang: str) -> str:
    return (f'<div class="es-card" data-metric="{html.escape(key)}" style="{_CARD}" '
            f'title="{html.escape(tr(hint, lang))}"><div style="font-size:0.75em;opacity:0.7">'
            f'{html.escape(tr(label, lang))}</div>'
            f'<div class="es-card-value" style="font-size:1.35em;font-weight:600">{html.escape(value)}</div></div>')


def time_split_html(phase_s: dict[str, float], lang: str = "en") -> str:
    """A stacked bar of where the time went, phase by phase, with seconds in the tooltip."""
    total = sum(phase_s.values())
    if total <= 0:
        return ""
    label = {phase: html.escape(tr(PHASE_LABELS[phase], lang)) for phase in phase_s}
    parts = []
    for phase, seconds in phase_s.items():
        if seconds <= 0:
            continue
        pct = 100 * seconds / total
        parts.append(f'<div title="{label[phase]}: {seconds:.3f} s ({pct:.1f}%)" '
                     f'style="width:{pct:.3f}%;background:{PHASE_COLOURS[phase]};height:14px"></div>')
    legend = " · ".join(f'<span style="color:{PHASE_COLOURS[p]}">■</span> {label[p]} '
                        f'{100 * s / total:.0f}%' for p, s in phase_s.items() if s / total >= 0.01)
    return (f'<div style="display:flex;width:100%;border-radius:4px;overflow:hidden;margin:2px 0">{"".join(parts)}'
            f'</div><div style="font-size:0.78em;opacity:0.85">{legend}</div>')


def metric_cards_html(m: Metrics | None, mode: str | None = None, running: bool = False, lang: str = "en") -> str:
    """The live metric cards: tokens/s, AR, AL, rounds, time to first token, draft/verify/calibrate."""
    if m is None:
        return f'<div class="es-cards" style="opacity:0.6">{tr("Metrics appear after the first round.", lang)}</div>'
    spec = mode != "vanilla"
    cards = [  # (label, value, hint, key)
        ("tokens/s", _fmt(m.tokens_per_s, 2), "new tokens / wall time since the run started", "tokens_per_s"),
        ("new tokens", str(m.new_tokens), "", "new_tokens"),
        ("AR", _fmt(m.acceptance_rate, 3) if spec else "—", "acceptance rate = accepted / drafted",
         "acceptance_rate"),
        ("AL", _fmt(m.mean_accepted_length, 2) if spec else "—",
         "mean accepted length = tokens emitted per round, bonus/recovered included", "mean_accepted_length"),
        ("rounds", str(m.rounds), "drafting rounds (vanilla: base steps), prefill excluded", "rounds"),
        ("first token", _fmt(m.time_to_first_token_s * 1e3, 0, " ms"), "time to first token", "ttft"),
        ("draft", _fmt(m.draft_s, 2, " s"), "draft attention + MLP + all-gathers", "draft_s"),
        ("verify", _fmt(m.verify_s, 2, " s"), "base forwards + all-reduces", "verify_s"),
        ("calibrate", _fmt(m.calibrate_s, 2, " s"), msg("{n} calibration passes", n=m.calibrations), "calibrate_s"),
    ]
    if m.run_peak_memory_bytes:  # the run's own figures (0: an old run file without them)
        cards += [("peak memory (this run)", f"{m.run_peak_memory_bytes / 2**30:.2f} GiB",
                   memory_label(m.memory_source), "peak_memory"),
                  ("memory growth", f"+{m.run_memory_growth_bytes / 2**20:.0f} MiB",
                   f"{GROWTH_LABEL} (its KV caches were allocated just before)", "memory_growth")]
    status = f' <span style="font-size:0.8em;opacity:0.7">{tr("(live)", lang)}</span>' if running else ""
    return (f'<div class="es-cards">{"".join(_card(*card, lang) for card in cards)}{status}'
            f'<div style="margin-top:2px">{time_split_html(m.phase_s, lang)}</div></div>')


def device_panel_html(readings: Sequence[DeviceReading], note: str = "") -> str:
    rows = []
    for r in readings:
        util = 0.0 if r.utilisation_pct is None else r.utilisation_pct
        mem = ("—" if r.memory_used_bytes is None or not r.memory_total_bytes else
               f"{r.memory_used_bytes / 2**30:.1f} / {r.memory_total_bytes / 2**30:.1f} GiB")
        bar = (f'<div style="background:rgba(128,128,128,0.2);border-radius:3px;height:8px;width:100%">'
               f'<div style="width:{min(util, 100):.0f}%;background:{OKABE_ITO["blue"]};height:8px;'
               f'border-radius:3px"></div></div>')
        rows.append(f'<div style="margin-bottom:6px"><b>{html.escape(r.name)}</b> '
                    f'<span style="opacity:0.75">{_fmt(r.utilisation_pct, 0, "%")} busy · memory {mem}</span>'
                    f'{bar}<div style="font-size:0.75em;opacity:0.65">{html.escape(r.detail)}</div></div>')
    foot = f'<div style="font-size:0.75em;opacity:0.6">{html.escape(note)}</div>' if note else ""
    return f'<div class="es-devices" style="font-size:0.85em">{"".join(rows)}{foot}</div>'


def badge_html(equal: bool | str | None, detail: str = "", lang: str = "en") -> str:
    """The greedy-equality badge: identical tokens yes (green) / only rounding ties ("tie", orange) / no, a
    real difference (vermillion) / not applicable."""
    if equal is None:
        colour, text = "#777777", "identical tokens: n/a"
    elif equal == "tie":
        colour, text = OKABE_ITO["orange"], "identical tokens: up to rounding ties"
    elif equal:
        colour, text = OKABE_ITO["bluish_green"], "identical tokens: YES"
    else:
        colour, text = OKABE_ITO["vermillion"], "identical tokens: NO"
    state = "na" if equal is None else ("tie" if equal == "tie" else "yes" if equal else "no")
    return (f'<div class="es-badge" data-equal="{state}" style="display:inline-block;padding:6px 12px;'
            f'border-radius:14px;background:{colour};color:white;font-weight:600">{html.escape(tr(text, lang))}</div>'
            f'<span style="margin-left:10px;font-size:0.9em;opacity:0.8">{html.escape(tr(detail, lang))}</span>')
