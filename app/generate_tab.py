"""The Generate screen: one prompt, live coloured text, live timeline, metric cards, replay of saved runs.

Handlers are generators that yield once per batch of rounds (at most once per round); the device
work runs in a `DeviceJob` so that Stop ends the run within one round. API names: `generate`, `replay`.
Each handler takes the screen's values as one dict by name (`generate(values, state, lang)`), callable
as such by tests; the events pass Gradio's inputs by the same names, which the API shows.
What the screen shows is written in the language of the switch (the handlers' last input, `lang`);
the run files and the JSON details stay English.
What it is not: the engine (`core.session`) or the drawing (`visualizations/`, through `live.py`).
"""
from __future__ import annotations

import html
import math
import time
from dataclasses import dataclass, fields, replace
from typing import Callable, Mapping

import gradio as gr

from easyspec.core.i18n import msg
from easyspec.core.settings import ON_LOW_ACCEPTANCE, SpecConfig
from easyspec.core.engine.grouping import largest_group, plan_of
from easyspec.core.engine.monitor import fallback_summary
from easyspec.core.engine.records import load_run
from easyspec.visualizations.acceptance import accepted_histogram_figure, per_position_figure, rolling_acceptance_figure
from easyspec.visualizations.cards import device_panel_html, metric_cards_html
from easyspec.visualizations.timeline import round_range_ms, timeline_figure
from easyspec.visualizations.tokens import tokens_html
from easyspec.visualizations.translate import translate_figure

from .common import (arm_stop, dict_event, file_size_ok, friendly, friendly_stream, keep_run, stopped_in_queue,
                     write_run_files)
from .context import AppContext
from .i18n import page_lang
from .live import LiveRun
from .panel import settings_panel
from .settings import check_prompt_text, describe_config, run_settings, spec_config
from .state import UserState
from .worker import DeviceJob, record_stream

DEFAULT_PROMPT = "Write a Python function that checks whether a number is prime."
REPLAY_SPEEDS = {"recorded pace": 1.0, "4x faster": 4.0, "instant": math.inf}
MAX_RUN_FILE_BYTES = 50_000_000


@dataclass
class GenerateOutputs:
    status: gr.Markdown
    text: gr.HTML
    cards: gr.HTML
    timeline: gr.Plot
    per_position: gr.Plot
    histogram: gr.Plot
    details: gr.JSON
    run_file: gr.File
    trace_file: gr.File
    round_slider: gr.Slider
    alert: gr.HTML
    rolling: gr.Plot

    def by_name(self) -> dict[str, gr.components.Component]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _view(live: LiveRun, status: str, final: bool = False, files: dict | None = None) -> dict:
    """Output values by GenerateOutputs' names; files, details and the round slider change only at the end."""
    alert, rolling = live.watch()
    view = dict(status=status, text=live.text_html(), cards=live.cards_html(), timeline=live.timeline(),
                per_position=live.per_position(), histogram=live.histogram(), alert=alert, rolling=rolling)
    if final:
        files = files or {}
        last = max(0, len(live.records) - 1)
        view.update(details=live.details(), run_file=files.get("run"), trace_file=files.get("trace"),
                    round_slider=gr.Slider(minimum=0, maximum=max(1, last), value=min(1, last), step=1,
                                           interactive=last > 0))
    return view


def _running_status(live: LiveRun) -> str:
    m = live.metrics()
    if m is None:
        return live.translate(msg("**Running** {label} …", label=live.label))
    return live.translate(msg("**Running** {label} · round {index} · {tokens} tokens · {rate} tok/s",
                              label=live.label, index=live.records[-1].index, tokens=m.new_tokens,
                              rate=f"{m.tokens_per_s:.2f}"))


def _final_status(live: LiveRun, what: str = "Done") -> str:
    m, what = live.metrics(), live.translate(what)  # the word first: the sentence's template fills it in as is
    if m is None:
        return live.translate(msg("**{what}**: no rounds", what=what))
    fallback = fallback_summary(live.records)
    fallback = f" · {fallback}" if fallback else ""  # data, as the stop reason is: the flags' own words
    if live.stopped_early:
        return live.translate(msg("**Stopped** after round {index}: {tokens} tokens in {seconds} s",
                                  index=live.records[-1].index, tokens=m.new_tokens,
                                  seconds=f"{m.total_s:.2f}")) + fallback
    return live.translate(msg("**{what}**: {label} · {tokens} tokens in {seconds} s ({rate} tok/s) · stop: {stop}",
                              what=what, label=live.label, tokens=m.new_tokens, seconds=f"{m.total_s:.2f}",
                              rate=f"{m.tokens_per_s:.2f}", stop=live.records[-1].stop)) + fallback


def _largest_group(settings: dict, n_layers: int) -> int:
    """The run's largest layer group, for the alert's likely cause (1 when the settings do not say)."""
    try:
        return largest_group(plan_of(SpecConfig.from_dict(settings), n_layers or 1)) \
            if settings.get("mode", "easyspec") == "easyspec" else 1
    except Exception:  # settings from another version or another draft: the alert just names fewer causes
        return 1


@dataclass(frozen=True)
class GenerateHandlers:
    """The screen's handlers by name (tests call them directly)."""

    generate: Callable
    replay: Callable
    inspect_round: Callable
    request_stop: Callable
    devices_html: Callable
    redraw: Callable


def make_handlers(ctx: AppContext) -> GenerateHandlers:
    session = ctx.session

    @friendly_stream
    def generate(values: Mapping, state: UserState, lang: str = "en"):
        """`values`: the prompt, chat (use the chat template), the run settings (settings.RUN_SETTINGS) and
        on_low_acceptance (the launch's choice when left out)."""
        stop = state.begin("generate")
        if stop.is_set():  # Stop came while the run waited for the device
            yield stopped_in_queue(page_lang(lang))
            return
        prompt, lang = check_prompt_text(values.get("prompt")), page_lang(lang)
        cfg = spec_config(**run_settings(values))
        on_low = values.get("on_low_acceptance") or ctx.options.on_low_acceptance
        if on_low not in ON_LOW_ACCEPTANCE:
            raise ValueError(f"on low acceptance: choose one of {', '.join(ON_LOW_ACCEPTANCE)}; got {on_low!r}")
        cfg = replace(cfg, on_low_acceptance=on_low, base_token_s=ctx.base_token_s)  # the probe's base speed
        ids = session.encode(prompt, bool(values.get("chat")))
        plan = session.plan(cfg, ids)  # the one resolution: auto, N, the policy, the expected acceptance, limits
        cfg = plan.settings
        groups = largest_group(plan.layers) if plan.layers else 1
        live = LiveRun(session.tokenizer, cfg.mode, ctx.info.device, ctx.info.devices, describe_config(cfg),
                       settings=plan.as_dict(), largest_group=groups, lang=lang)
        yield {**_view(live, _running_status(live)), "details": None, "run_file": None, "trace_file": None}
        for batch in DeviceJob(record_stream(session, plan), stop).batches():
            live.add(batch)
            yield _view(live, _running_status(live))
        live.finish()
        ctx.exporter.record_run(live.records, plan.as_dict())
        files = write_run_files(ctx, live, plan.as_dict(), ids, "run")
        keep_run(state, "generate", "generate", live, ids, prompt, plan.as_dict(), cfg.sampling.greedy, files)
        yield _view(live, _final_status(live), final=True, files=files)

    @friendly_stream
    def replay(values: Mapping, state: UserState, lang: str = "en"):
        """`values`: run_file (the saved run's path) and speed (one of REPLAY_SPEEDS)."""
        run_file = values.get("run_file")
        if not run_file:
            raise ValueError("choose a saved run file (.jsonl, written by --save-run or the Download button) first")
        path = file_size_ok(run_file, MAX_RUN_FILE_BYTES, "saved run")
        try:
            header, records = load_run(path)
        except ValueError as exc:
            raise ValueError(f"not a replayable easyspec run: {exc}") from None
        except Exception as exc:  # malformed lines: wrong keys or types
            raise ValueError(f"not a replayable easyspec run ({type(exc).__name__}: {exc})") from None
        if not records:
            raise ValueError("the saved run has a header but no rounds")
        # The file's own strings (base, mode, date) reach a toast and the status line: shown as text, never markup.
        if header.base != ctx.info.base:
            gr.Warning(f"This run was recorded with base {html.escape(str(header.base))}; its tokens are decoded "
                       f"with this session's tokenizer ({ctx.info.base}), so the text may differ from the original.")
        mode = header.settings.get("mode", "easyspec")
        devices = int(header.extra.get("devices", 1)) if isinstance(header.extra, dict) else 1
        label = html.escape(f"replay ({header.settings.get('mode', '?')}, recorded {header.created or 'unknown date'})")
        settings = header.settings if isinstance(header.settings, dict) else {}
        live = LiveRun(session.tokenizer, mode, header.device, devices, label, settings=settings,
                       largest_group=_largest_group(settings, ctx.info.draft_layers), lang=page_lang(lang))
        stop = state.begin("generate")
        pace = REPLAY_SPEEDS.get(values.get("speed"), 1.0)
        t0, last_yield = time.monotonic(), 0.0
        for i, rec in enumerate(records):
            if stop.is_set():
                break
            wait = rec.end_ns / 1e9 / pace - (time.monotonic() - t0)
            if wait > 0 and stop.wait(wait):  # wakes at once on Stop
                break
            live.add([rec])
            if pace != math.inf and (time.monotonic() - last_yield > 0.15 or i == len(records) - 1):
                last_yield = time.monotonic()
                yield _view(live, live.translate(msg("**Replaying** round {index} of {last} · {label}",
                                                     index=rec.index, last=records[-1].index, label=live.label)))
        live.finish()
        files = {"run": str(path), "trace": write_run_files(ctx, live, header.settings, header.prompt_ids,
                                                            "replay")["trace"]}
        keep_run(state, "generate", "replay", live, header.prompt_ids, "(replay)", header.settings, False, files)
        yield _view(live, _final_status(live, "Replayed"), final=True, files=files)

    @friendly
    def inspect_round(index, state: UserState, lang: str = "en"):
        run, lang = state.last.get("generate"), page_lang(lang)
        if run is None or not run.records:
            return translate_figure(timeline_figure([], ctx.info.device, ctx.info.devices), lang)
        index = max(0, min(int(index or 0), len(run.records) - 1))
        rec = run.records[index]
        lo, hi = round_range_ms(run.records, rec.index)
        return translate_figure(timeline_figure(
            [rec], ctx.info.device, ctx.info.devices, run.mode, max_bars=20000,
            title=msg("round {index}: {tokens} tokens, {accepted}/{drafted} drafts accepted, every span",
                      index=rec.index, tokens=len(rec.token_ids), accepted=rec.accepted, drafted=len(rec.drafted)),
            x_range=(lo - 0.02 * (hi - lo), hi + 0.02 * (hi - lo))), lang)

    def request_stop(state: UserState) -> None:
        if state.request_stop("generate"):
            gr.Info("Stopping after the current round.")

    def redraw(state: UserState, lang: str) -> dict:
        """The language switch: the user's last run, or the empty screen, drawn again in `lang`."""
        run = state.last.get("generate")
        live = LiveRun(session.tokenizer, run.mode if run else "easyspec", ctx.info.device, ctx.info.devices,
                       run.label if run else "", settings=run.settings if run else None,
                       largest_group=_largest_group(run.settings, ctx.info.draft_layers) if run else 1,
                       lang=page_lang(lang))
        if run:
            live.add(run.records)
            live.finish()
        status = _final_status(live) if run else live.translate("Press **Run** to generate.")
        return _view(live, status)

    def devices_html() -> str:
        return device_panel_html(ctx.monitor.read(), ctx.monitor.note)

    return GenerateHandlers(generate, replay, inspect_round, request_stop, devices_html, redraw)


def build(ctx: AppContext, state: gr.State, switch: gr.Radio):
    """The screen's layout and events; `switch` (the language radio) is the last input of every handler that
    writes text. Returns (handler, its inputs by name, outputs) that the switch re-runs."""
    handlers = make_handlers(ctx)
    generate, replay, inspect_round = handlers.generate, handlers.replay, handlers.inspect_round
    request_stop, devices_html, redraw = handlers.request_stop, handlers.devices_html, handlers.redraw
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=330):
            prompt = gr.Textbox(DEFAULT_PROMPT, label="Prompt", lines=4, elem_id="gen-prompt")
            chat = gr.Checkbox(True, label="use the chat template", elem_id="gen-chat")
            with gr.Row():
                run = gr.Button("Run", variant="primary", elem_id="gen-run")
                stop = gr.Button("Stop", variant="stop", elem_id="gen-stop")
            with gr.Accordion("Settings", open=True):
                settings = settings_panel(ctx, "gen")
                on_low = gr.Radio(list(ON_LOW_ACCEPTANCE), value=ctx.options.on_low_acceptance,
                                  label="on low acceptance", elem_id="gen-on-low",
                                  info="fallback: after 4 alerted rounds draft sequentially, then stop drafting if "
                                       "that is slower than the base alone (the output stays the same)")
                gr.Markdown(ctx.models_markdown(), elem_id="gen-models")
            with gr.Accordion("Devices", open=True):
                panel = gr.HTML(devices_html(), elem_id="gen-devices")
            with gr.Accordion("Replay a saved run", open=False):
                run_upload = gr.File(label="saved run (.jsonl from --save-run or Download)", file_types=[".jsonl"],
                                     elem_id="gen-replay-file")
                speed = gr.Radio(list(REPLAY_SPEEDS), value="4x faster", label="speed")
                replay_btn = gr.Button("Replay", elem_id="gen-replay")
        with gr.Column(scale=2, min_width=480):
            status = gr.Markdown("Press **Run** to generate.", elem_id="gen-status")
            alert = gr.HTML("", elem_id="gen-alert")
            text = gr.HTML(tokens_html([], "easyspec"), elem_id="gen-text")
            cards = gr.HTML(metric_cards_html(None), elem_id="gen-cards")
            timeline = gr.Plot(timeline_figure([]), label="Timeline (one lane group per device)",
                               elem_id="gen-timeline")
            with gr.Row():
                per_position = gr.Plot(per_position_figure([]), show_label=False, elem_id="gen-per-position")
                histogram = gr.Plot(accepted_histogram_figure([]), show_label=False, elem_id="gen-histogram")
                rolling = gr.Plot(rolling_acceptance_figure([], [], None, 0.2), show_label=False,
                                  elem_id="gen-rolling")
            with gr.Accordion("Inspect one round (every span)", open=False):
                round_slider = gr.Slider(0, 1, value=0, step=1, label="round", interactive=False,
                                         elem_id="gen-round")
                round_plot = gr.Plot(label="round detail", elem_id="gen-round-plot")
            with gr.Row():
                run_file = gr.File(label="saved run (.jsonl, replayable)", interactive=False, height=90,
                                   elem_id="gen-run-file")
                trace_file = gr.File(label="Chrome trace (.json, opens in Perfetto)", interactive=False, height=90,
                                     elem_id="gen-trace-file")
            with gr.Accordion("Run details (JSON)", open=False):
                details = gr.JSON(label="details", elem_id="gen-details")
    out = GenerateOutputs(status, text, cards, timeline, per_position, histogram, details, run_file, trace_file,
                          round_slider, alert, rolling)

    # Inputs by name (inputs_kwargs): the handlers get one dict of values, and the API the same names.
    form = dict(prompt=prompt, chat=chat, **settings, on_low_acceptance=on_low, state=state, lang=switch)

    outputs = out.by_name()
    run.click(arm_stop("generate"), [state], None, queue=False, api_visibility="private", show_progress="hidden") \
        .then(dict_event(generate, outputs), inputs_kwargs=form, outputs=list(outputs.values()), api_name="generate",
              concurrency_id="device", concurrency_limit=1, show_progress="hidden")
    stop.click(request_stop, [state], None, queue=False, api_visibility="private")
    replay_btn.click(dict_event(replay, outputs), inputs_kwargs=dict(run_file=run_upload, speed=speed, state=state,
                                                                      lang=switch),
                     outputs=list(outputs.values()), api_name="replay", concurrency_id="replay", concurrency_limit=4,
                     show_progress="hidden")
    out.round_slider.change(inspect_round, [out.round_slider, state, switch], round_plot, api_visibility="private",
                            concurrency_id="views", concurrency_limit=4, show_progress="hidden")
    timer = gr.Timer(2.0)
    timer.tick(devices_html, None, panel, api_visibility="private", queue=False, show_progress="hidden")
    redrawn = ("status", "text", "cards", "timeline", "per_position", "histogram", "alert", "rolling")
    return redraw, dict(state=state, lang=switch), {name: outputs[name] for name in redrawn}
