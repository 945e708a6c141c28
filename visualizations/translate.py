"""A figure's own words (titles, axis titles, annotations, legend names) in another language.

The figure builders write English; `translate_figure` swaps every string the translation table
(`core.i18n`) knows, so the builders stay language-free. Hover texts stay English.
What it is not: the translation table (`core.i18n` holds it) or a translator of free text.
"""
from __future__ import annotations

import plotly.graph_objects as go

from easyspec.core.i18n import tr


def translate_figure(fig: go.Figure, lang: str) -> go.Figure:
    """Titles, axis titles, annotations and trace names that the translation table knows, in `lang`."""
    if lang == "en":
        return fig
    for trace in fig.data:
        if trace.name:
            trace.name = tr(trace.name, lang)
    for ann in fig.layout.annotations or ():
        if ann.text:
            ann.text = tr(ann.text, lang)
    if fig.layout.title and fig.layout.title.text:
        fig.layout.title.text = tr(fig.layout.title.text, lang)
    def axis(ax) -> None:
        if ax.title and ax.title.text:
            ax.title.text = tr(ax.title.text, lang)
        if ax.ticktext:  # timeline lanes: "CPU · draft attention"
            ax.ticktext = [" · ".join(tr(part, lang) for part in str(t).split(" · ")) for t in ax.ticktext]

    fig.for_each_xaxis(axis)
    fig.for_each_yaxis(axis)
    return fig
