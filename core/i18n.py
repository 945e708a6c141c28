"""English and Japanese text: one translation table for the dashboard, the explainer and the report.

What it is: a loader over two JSON files shipped in `assets/` (`i18n_en.json`, `i18n_ja.json`).
Each has
- `text`: keyed texts (the explainer's paragraphs, the report's sentences with `{placeholders}`),
  the same keys in both languages;
- `ui` (Japanese file only): short dashboard strings keyed by their English text, gettext style, so
  a screen module writes plain English labels and the switch finds them (`ui_translation`); a sentence
  with values is made with `msg(template, **values)`, and is translated by its template, never by
  matching the English it became;
- `glossary` (Japanese file only): the fixed Japanese term for each technical English term, and
  `avoid`, the variants that must not appear (tests check both across every Japanese string).
Adding a string = adding one entry to `ui` (or one key to `text` in both files).
What it is not: a UI (no gradio); the dashboard's switch lives in `app/i18n.py`.
"""
from __future__ import annotations

import json
import re
import threading
from functools import lru_cache
from importlib import resources

LANGS = ("en", "ja")
LANG_NAMES = {"en": "English", "ja": "日本語"}
_FIELD = re.compile(r"(\{\w+\})")  # a {placeholder}


def check_lang(lang: str) -> str:
    if lang not in LANGS:
        raise ValueError(f"unknown language {lang!r}: choose from {', '.join(LANGS)}")
    return lang


@lru_cache(maxsize=None)
def table(lang: str) -> dict:
    """The whole table of one language (text, and for Japanese ui, glossary, avoid)."""
    name = f"i18n_{check_lang(lang)}.json"
    return json.loads(resources.files("easyspec.assets").joinpath(name).read_text(encoding="utf-8"))


def text(key: str, lang: str = "en", **values) -> str:
    """The keyed text in `lang`, with `{placeholders}` filled from `values`."""
    template = table(lang)["text"].get(key)
    if template is None:
        raise KeyError(f"no text {key!r} in the {lang} table")
    return template.format(**values) if values else template


class Msg(str):
    """A sentence made from a `ui` template: the English text, carrying its table key (`template`) and its
    `values`, so that `tr` looks the template up and fills the values, instead of parsing English back."""

    template: str
    values: dict

    def __new__(cls, template: str, **values) -> "Msg":
        self = super().__new__(cls, template.format(**values) if values else template)
        self.template, self.values = template, values
        with _made_lock:
            _made[str(self)] = self
            if len(_made) > _MADE_LIMIT:
                del _made[next(iter(_made))]
        return self

    def __reduce__(self):  # copies and pickles keep the key
        return _remake, (self.template, self.values)


def _remake(template: str, values: dict) -> "Msg":
    return Msg(template, **values)


# The messages made in this process, by their English text, for the text that reaches `tr` as a plain
# string: through a Plotly figure or a Gradio component, which keep the text but not the Msg (oldest dropped).
_made: dict[str, Msg] = {}
_made_lock = threading.Lock()
_MADE_LIMIT = 4096


def msg(template: str, **values) -> Msg:
    """The English sentence `template.format(**values)`, translatable by its template (a `ui` key)."""
    return Msg(template, **values)


@lru_cache(maxsize=None)
def _english_to_japanese() -> dict[str, str]:
    """Every English text with its Japanese: the keyed texts without placeholders, then the `ui` entries
    (a label's own entry wins); the templates with {placeholders} are reached through `Msg`."""
    en, ja = table("en")["text"], table("ja")
    exact = {en[k]: ja["text"][k] for k in en if k in ja["text"] and not _FIELD.search(en[k])}
    exact.update(ja["ui"])
    return exact


def ui_translation(english: str, lang: str) -> str | None:
    """`english` (a label, a button text, a keyed text's English form, a `Msg`) in `lang`; None if the table
    lacks it. A `Msg` (or a plain string that is the text of one made in this process) is translated by its
    template, with its `Msg` values translated in turn."""
    if check_lang(lang) == "en":
        return english
    exact = _english_to_japanese()
    made = english if isinstance(english, Msg) else _made.get(english)
    if made is not None:
        template = exact.get(made.template)
        if template is None:
            return None
        values = {k: tr(v, lang) if isinstance(v, Msg) else v for k, v in made.values.items()}
        return template.format(**values) if values else template
    return exact.get(english)


def tr(english: str, lang: str) -> str:
    """Like `ui_translation`, falling back to the English text."""
    return ui_translation(english, lang) or english
