"""English and Japanese text: one translation table for the dashboard, the explainer and the report.

What it is: a loader over two JSON files shipped in `assets/` (`i18n_en.json`, `i18n_ja.json`).
Each has
- `text`: keyed texts (the explainer's paragraphs, the report's sentences with `{placeholders}`),
  the same keys in both languages;
- `ui` (Japanese file only): short dashboard strings keyed by their English text, gettext style, so
  a screen module writes plain English labels and the switch finds them (`ui_translation`);
- `glossary` (Japanese file only): the fixed Japanese term for each technical English term, and
  `avoid`, the variants that must not appear (tests check both across every Japanese string).
Adding a string = adding one entry to `ui` (or one key to `text` in both files).
What it is not: a UI (no gradio); the dashboard's switch lives in `app/i18n.py`.
"""
from __future__ import annotations

import json
import re
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


@lru_cache(maxsize=None)
def _english_to_japanese() -> tuple[dict[str, str], list[tuple[re.Pattern, str]]]:
    """Exact entries, and templates: a `ui` key with `{name}` fields matches strings made from it
    (e.g. "(1..{n} middle layers)") and fills the same fields into the Japanese."""
    en, ja = table("en")["text"], table("ja")
    exact = {en[k]: ja["text"][k] for k in en if k in ja["text"] and not _FIELD.search(en[k])}
    exact.update({k: v for k, v in ja["ui"].items() if not _FIELD.search(k)})  # a label's own entry wins
    templates = []
    for english, japanese in ja["ui"].items():
        if _FIELD.search(english):
            pattern = "".join(f"(?P<{part[1:-1]}>.+?)" if _FIELD.fullmatch(part) else re.escape(part)
                              for part in _FIELD.split(english) if part)
            templates.append((re.compile(pattern, re.S), japanese))
    return exact, templates


def ui_translation(english: str, lang: str) -> str | None:
    """`english` (a label, a button text, a keyed text's English form) in `lang`; None if the table lacks it."""
    if check_lang(lang) == "en":
        return english
    exact, templates = _english_to_japanese()
    if english in exact:
        return exact[english]
    for pattern, japanese in templates:
        match = pattern.fullmatch(english)
        if match:
            return _FIELD.sub(lambda m: match.group(m.group(1)[1:-1]), japanese)
    return None


def tr(english: str, lang: str) -> str:
    """Like `ui_translation`, falling back to the English text."""
    return ui_translation(english, lang) or english
