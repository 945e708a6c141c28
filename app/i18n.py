"""The dashboard's language switch (English / 日本語).

Why not `gr.I18n`: Gradio 6 translates `i18n("key")` labels in the browser, from the browser's
locale (or the language picked in Gradio's own settings panel); the app can neither switch it from a
control on its page nor know the choice on the server, where the report and the handlers' own
sentences are written. So the screens keep writing plain English, and after the layout is built
`translatable(demo)` walks every component and collects the strings the translation table
(`core.i18n`, `assets/i18n_ja.json`) knows: labels, info lines, placeholders, button texts, tab
titles, choice labels (values stay English, so handlers are unchanged) and static Markdown (a
Markdown that an event writes to is live output: left alone). The language radio in the header
returns one update per collected component, and re-runs the views that write their own text in the
user's language. The page opens in Japanese for `?lang=ja` or a browser whose first language is
Japanese (its Accept-Language header), as `gr.I18n` would. Gradio's own strings follow the browser
locale. Handlers that write text take the switch as an input (the pilot screen, the report export,
the explainer).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import gradio as gr

from easyspec.core.i18n import LANG_NAMES, LANGS, tr, ui_translation

from .state import UserState

TEXT_ATTRS = ("label", "info", "placeholder")


@dataclass(frozen=True)
class Translatable:
    block: gr.blocks.Block
    english: dict  # attribute -> English value (a string, or a list of (label, value) choices)


def _written_by_handlers(demo: gr.Blocks) -> set[int]:
    """ids of the components some event writes to: their value is live output, not a static text."""
    return {id(block) for fn in demo.fns.values() for block in fn.outputs}


def _strings(block, live: set[int]) -> dict:
    out = {}
    for attr in TEXT_ATTRS:
        value = getattr(block, attr, None)
        if isinstance(value, str) and value.strip():
            out[attr] = value
    value = getattr(block, "value", None)
    if isinstance(value, str) and value.strip() and (
            isinstance(block, gr.Button) or (isinstance(block, gr.Markdown) and id(block) not in live)):
        out["value"] = value  # a button's text; a static Markdown
    choices = getattr(block, "choices", None)
    if isinstance(block, (gr.Radio, gr.Dropdown, gr.CheckboxGroup)) and choices:
        if any(isinstance(c[0], str) and ui_translation(c[0], "ja") for c in choices):
            out["choices"] = [tuple(c) for c in choices]
    return out


def english_strings(demo: gr.Blocks) -> list[tuple[str, str | None, str, str]]:
    """(component type, elem_id, attribute, English text) of every label-like string in the app."""
    out, live = [], _written_by_handlers(demo)
    for block in demo.blocks.values():
        for attr, value in _strings(block, live).items():
            if attr != "choices":
                out.append((type(block).__name__, getattr(block, "elem_id", None), attr, value))
    return out


def translatable(demo: gr.Blocks) -> list[Translatable]:
    """The components with at least one string that the translation table knows."""
    found, live = [], _written_by_handlers(demo)
    for block in demo.blocks.values():
        known = {a: v for a, v in _strings(block, live).items()
                 if a == "choices" or ui_translation(v, "ja") is not None}
        if known:
            found.append(Translatable(block, known))
    return found


def updates(items: list[Translatable], lang: str) -> list[dict]:
    out = []
    for item in items:
        attrs = {}
        for attr, value in item.english.items():
            if attr == "choices":
                attrs[attr] = [(tr(label, lang) if isinstance(label, str) else label, v) for label, v in value]
            else:
                attrs[attr] = tr(value, lang)
        out.append(gr.update(**attrs))
    return out


def page_lang(lang) -> str:
    """The language a handler writes in: `lang` when the table has it, else English (an API client may send
    anything; a wrong language is no reason to fail a run)."""
    return lang if lang in LANGS else "en"


def requested_lang(request: gr.Request | None) -> str:
    """`?lang=ja|en` wins; else the browser's first language; else English."""
    if request is None:
        return "en"
    asked = request.query_params.get("lang", "")
    if asked in LANGS:
        return asked
    first = (request.headers.get("accept-language") or "").split(",")[0].strip().lower()
    return "ja" if first.startswith("ja") else "en"


def language_switch() -> gr.Radio:
    return gr.Radio([(LANG_NAMES[lang], lang) for lang in LANGS], value="en", label="Language / 言語",
                    elem_id="es-lang", container=False)


def wire(demo: gr.Blocks, switch: gr.Radio, state: gr.State,
         refreshers: Sequence[tuple[Callable, Mapping[str, gr.blocks.Block], Mapping[str, gr.blocks.Block]]] = ()
         ) -> None:
    """Connect the switch (and the page load) to every translatable component. Call after the layout.
    `refreshers`: (handler, its inputs by name, its outputs by name) of views that write their own text in
    the language the switch (one of their inputs) says: the pilot estimate, How it works. Re-run on a
    switch, each handler is called with its inputs' values as keyword arguments and returns the outputs
    it redraws as a dict by name."""
    redrawn = [block for _, _, blocks in refreshers for block in blocks.values()]
    found = [i for i in translatable(demo) if i.block is not switch]
    items = [i for i in found if i.block not in redrawn]
    labelled = {id(i.block): i for i in found if i.block in redrawn}  # a redrawn plot's own label
    translated = [i.block for i in items]
    outputs = translated + redrawn

    def redraw(data: dict, lang: str) -> dict:
        out = {}
        for fn, ins, outs in refreshers:
            # on page load the user's state may not be made yet: a fresh one has no runs either
            named = {name: (data[b] if isinstance(data[b], UserState) else UserState()) if b is state else data[b]
                     for name, b in ins.items()}
            for name, value in fn(**named).items():  # the outputs it redraws, by name
                block = outs[name]
                item = labelled.get(id(block))
                out[block] = {**updates([item], lang)[0], "value": value} if item else value
        return out

    # A set of inputs: Gradio passes one dict, component -> value; the outputs go back the same way.
    def on_switch(data: dict) -> dict:
        lang = page_lang(data[switch])
        return {**dict(zip(translated, updates(items, lang))), **redraw({**data, switch: lang}, lang)}

    def on_load(data: dict, request: gr.Request) -> dict:
        lang = requested_lang(request)
        if lang == "en":  # the page is drawn in English already; leave a switch clicked before the load alone
            return {}
        return {switch: gr.update(value=lang), **dict(zip(translated, updates(items, lang))),
                **redraw({**data, switch: lang}, lang)}

    inputs = {switch, *(b for _, ins, _ in refreshers for b in ins.values())}
    switch.input(on_switch, inputs, outputs, api_visibility="private", queue=False, show_progress="hidden")
    demo.load(on_load, inputs, [switch] + outputs, api_visibility="private", queue=False, show_progress="hidden")
