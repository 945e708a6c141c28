"""Generated text as HTML with every token coloured by its origin, plus the legend.

Input is plain data: a list of `TokenPiece`s (the text a token added, its origin, its round).
Colours come from the Okabe-Ito palette (`palette.py`) with an underline style as a second cue,
so accepted / recovered / bonus stay apart without colour vision. All styles are inline, so the
HTML renders the same in the dashboard, a notebook or a saved report. `lang` translates the
legend, the tooltips and the placeholder; `data-origin` stays English.
What it is not: detokenization (`core.models.text`): it colours pieces already decoded.
"""
from __future__ import annotations

import html
from typing import NamedTuple, Sequence

from easyspec.core.i18n import tr

from .palette import ORIGIN_COLOURS, ORIGIN_LABELS, ORIGIN_UNDERLINES, rgba


class TokenPiece(NamedTuple):
    text: str  # the text this token added (may be "" while a multi-byte character is incomplete)
    origin: str  # prefill | accepted | recovered | bonus | base
    round: int


def display_origin(origin: str, mode: str | None) -> str:
    """Vanilla decoding tags its tokens `bonus`; show them as plain base-model tokens."""
    return "base" if mode == "vanilla" and origin in ("bonus", "prefill") else origin


def legend_origins(mode: str | None) -> tuple[str, ...]:
    return ("base",) if mode == "vanilla" else ("prefill", "accepted", "recovered", "bonus")


def _style(origin: str) -> str:
    colour = ORIGIN_COLOURS[origin]
    return (f"background:{rgba(colour, 0.22)};border-bottom:2px {ORIGIN_UNDERLINES[origin]} {colour};"
            f"border-radius:2px")


def legend_html(mode: str | None = None, counts: dict[str, int] | None = None, lang: str = "en") -> str:
    """One swatch per origin that the mode can produce, with counts when given."""
    items = []
    for origin in legend_origins(mode):
        n = f" ({counts.get(origin, 0)})" if counts is not None else ""
        items.append(f'<span class="es-legend-item" style="white-space:nowrap">'
                     f'<span style="{_style(origin)};padding:0 7px">&nbsp;</span> '
                     f'{html.escape(tr(ORIGIN_LABELS[origin], lang))}{n}</span>')
    return (f'<div class="es-legend" style="display:flex;flex-wrap:wrap;gap:4px 14px;font-size:0.85em;'
            f'margin:4px 0 8px 0">{"".join(items)}</div>')


def tokens_html(pieces: Sequence[TokenPiece], mode: str | None = None, legend: bool = True,
                placeholder: str = "The generated text appears here, coloured by token origin.",
                running: bool = False, lang: str = "en") -> str:
    """The coloured text (each token a <span> with a tooltip) and, optionally, its legend."""
    counts: dict[str, int] = {}
    spans, labels, round_word = [], {o: tr(label, lang) for o, label in ORIGIN_LABELS.items()}, tr("round", lang)
    for piece in pieces:
        origin = display_origin(piece.origin, mode)
        counts[origin] = counts.get(origin, 0) + 1
        # A token whose bytes do not finish a character yet adds no text; its (empty) span still
        # stands for it, so that the page holds one span per token.
        tip = f"{round_word} {piece.round}: {labels[origin]}"
        spans.append(f'<span class="es-tok es-{origin}" data-origin="{origin}" title="{html.escape(tip)}" '
                     f'style="{_style(origin)}">{html.escape(piece.text)}</span>')
    body = "".join(spans) if spans else f'<span style="opacity:0.55">{html.escape(tr(placeholder, lang))}</span>'
    cursor = '<span class="es-cursor" style="opacity:0.6">▍</span>' if running else ""
    text = (f'<div class="es-text" style="white-space:pre-wrap;word-break:break-word;font-family:ui-monospace,'
            f'SFMono-Regular,Menlo,Consolas,monospace;font-size:0.92em;line-height:1.55;min-height:4em;'
            f'max-height:28em;overflow-y:auto;padding:8px;border:1px solid rgba(128,128,128,0.3);'
            f'border-radius:6px">{body}{cursor}</div>')
    return (legend_html(mode, counts, lang) if legend else "") + text
