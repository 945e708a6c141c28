"""The growing view of one run: its records, its coloured text, its figures and metric cards.

Generate, Compare and replay all feed records into a `LiveRun` as they arrive and draw from it;
the drawing itself is done by the pure builders in `easyspec.visualizations`. What it draws is in
the page's language (`lang`); `details()` stays English (it is data).
What it is not: a handler (the screens own those) or a figure builder.
"""
from __future__ import annotations

from typing import Iterable

import html

from easyspec.core.i18n import check_lang, msg, tr
from easyspec.core.engine.metrics import Metrics, compute
from easyspec.core.engine.monitor import ALERT, expectation, low_acceptance, rolling_acceptance
from easyspec.core.engine.records import RoundRecord
from easyspec.core.models.text import TextStream
from easyspec.visualizations.acceptance import (accepted_histogram_figure, per_position_figure,
                                                rolling_acceptance_figure)
from easyspec.visualizations.cards import metric_cards_html
from easyspec.visualizations.timeline import timeline_figure
from easyspec.visualizations.tokens import TokenPiece, tokens_html
from easyspec.visualizations.translate import translate_figure


class LiveRun:
    def __init__(self, tokenizer, mode: str, device: str = "cpu", devices: int = 1, label: str = "",
                 greedy: bool = True, settings: dict | None = None, largest_group: int = 1, lang: str = "en"):
        self.tokenizer, self.mode, self.device, self.devices, self.label = tokenizer, mode, device, devices, label
        self.greedy, self.lang = greedy, check_lang(lang)
        self.settings, self.largest_group = settings or {}, largest_group  # for the alert's likely cause
        self.records: list[RoundRecord] = []
        self.pieces: list[TokenPiece] = []
        self._stream = TextStream(tokenizer)
        self._vocab = len(tokenizer)
        self.finished = False

    def add(self, records: Iterable[RoundRecord]) -> None:
        """Append rounds; each token's text is what it added to the decoded text so far."""
        for rec in records:
            self.records.append(rec)
            for tid, origin in zip(rec.token_ids, rec.origins):
                if 0 <= tid < self._vocab:
                    text = self._stream.push([tid], final=False)
                else:  # a replayed run from another tokenizer: show the id, never fail
                    text = f"⟨{tid}⟩"
                self.pieces.append(TokenPiece(text, origin, rec.index))

    def finish(self) -> None:
        """Flush text held back for an incomplete character into the last token."""
        tail = self._stream.push([], final=True)
        if tail and self.pieces:
            last = self.pieces[-1]
            self.pieces[-1] = TokenPiece(last.text + tail, last.origin, last.round)
        self.finished = True

    @property
    def token_ids(self) -> list[int]:
        return [t for r in self.records for t in r.token_ids]

    @property
    def text(self) -> str:
        return "".join(p.text for p in self.pieces)

    @property
    def stopped_early(self) -> bool:
        return bool(self.records) and self.records[-1].stop is None

    def metrics(self) -> Metrics | None:
        return compute(self.records) if self.records else None

    def text_html(self) -> str:
        return tokens_html(self.pieces, self.mode, running=bool(self.records) and not self.finished, lang=self.lang)

    def cards_html(self) -> str:
        return metric_cards_html(self.metrics(), self.mode, running=not self.finished, lang=self.lang)

    def timeline(self, x_range: tuple[float, float] | None = None, title: str | None = None, max_bars: int = 2500,
                 legend: str = "top"):
        return translate_figure(timeline_figure(self.records, self.device, self.devices, self.mode, title=title,
                                                x_range=x_range, max_bars=max_bars, legend=legend), self.lang)

    def per_position(self):
        return translate_figure(per_position_figure(self.records), self.lang)

    def histogram(self):
        return translate_figure(accepted_histogram_figure(self.records), self.lang)

    def watch(self) -> tuple[str, object]:
        """The acceptance watch: an alert box (empty while acceptance is healthy; it stays once raised)
        and the rolling-acceptance chart."""
        points = rolling_acceptance(self.records)
        flagged = [r.index for r in self.records if ALERT in r.flags]
        exp = expectation(float(self.settings.get("expected_acceptance", 0.0)))
        expected = exp.rate if exp.source != "floor" else None
        figure = translate_figure(rolling_acceptance_figure(points, flagged, expected, exp.threshold), self.lang)
        if not flagged:
            return "", figure
        alert = low_acceptance(self.records, self.settings, self.largest_group)
        return (f'<div class="es-alert" role="alert" style="border:2px solid #D55E00;background:#fff4ec;'
                f'border-radius:8px;padding:8px 12px;margin:4px 0;color:#5a2200">'
                f"<b>⚠ {self.translate('Low acceptance')}</b> "
                f"{self.translate(msg('({n} rounds flagged).', n=alert.flagged))} "
                f"{html.escape(self.translate(alert.message))}</div>"), figure

    def translate(self, english: str) -> str:
        """What the run shows, in its language: the translation table's entry for `english`, else `english`."""
        return tr(english, self.lang)

    def end_ms(self) -> float:
        return self.records[-1].end_ns / 1e6 if self.records else 0.0

    def details(self) -> dict:
        """Plain JSON for the details panel and API clients: text, token ids, metrics, stop reason."""
        m = self.metrics()
        return {"label": self.label, "mode": self.mode, "text": self.text, "token_ids": self.token_ids,
                "new_tokens": len(self.token_ids), "rounds": len(self.records),
                "stop": self.records[-1].stop if self.records else None,
                "stopped_early": self.stopped_early, "metrics": m.as_dict() if m else None}
