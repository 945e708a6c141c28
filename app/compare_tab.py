"""The Compare screen: two to four settings on the same prompt and seed, run one after another.

Each column streams its own text, timeline and metric cards; at the end a summary table gives
speedup over the vanilla column measured in the same comparison, and a badge says whether every
column produced identical tokens (greedy decoding is lossless, so it should say yes), and otherwise how
many columns differ by a rounding tie and how many by a real difference (a bug; `lossless.py`). API: `compare`.
What the screen shows is written in the language of the switch (the handler's last input, `lang`);
the JSON details stay English. `compare(values, state, lang)` takes the screen's values as one dict by name
(each column's settings from `panel.column_panel`), callable as such by tests.
What it is not: the decoding (each column is a session run) or a speed benchmark with repeats
(`easyspec bench speed`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import gradio as gr

from easyspec.core.i18n import msg, tr
from easyspec.core.engine.lossless import compare_greedy
from easyspec.core.engine.verdicts import GreedyCheck, count_verdicts, counts_text
from easyspec.visualizations.cards import badge_html, metric_cards_html
from easyspec.visualizations.timeline import timeline_figure
from easyspec.visualizations.tokens import tokens_html
from easyspec.visualizations.translate import translate_figure

from .common import arm_stop, dict_event, friendly_stream, keep_run, stopped_in_queue
from .context import AppContext
from .generate_tab import DEFAULT_PROMPT
from .i18n import page_lang
from .live import LiveRun
from .panel import WIDE, Panel, column_panel, column_values
from .settings import GROUPINGS, as_int, check_choice, check_prompt_text, describe_config, run_settings, spec_config
from .state import UserState
from .worker import DeviceJob

MAX_COLUMNS = 4
DEFAULT_COLUMNS = (("vanilla", 4, "every-round", 5), ("speculative", 4, "every-round", 5),
                   ("easyspec", 4, "every-round", 5), ("easyspec", 2, "on-mismatch", 5))
SUMMARY_HEADERS = ["column", "setting", "tokens", "seconds", "tok/s", "speedup vs vanilla", "AR", "AL",
                   "draft s", "verify s", "calibrate s", "same tokens as column 1"]


@dataclass
class Column:
    settings: Panel  # "mode_1", ... -> component (panel.column_panel)
    container: gr.Column
    header: gr.Markdown
    text: gr.HTML
    cards: gr.HTML
    timeline: gr.Plot


def _r(x, digits=3):
    return None if x is None else round(x, digits)


def summary_table(rows: list[list], lang: str) -> dict:
    """A Dataframe value: the summary rows under headers in `lang`, yes/no cells in `lang`."""
    return {"data": [[tr(v, lang) if v in ("yes", "no", "rounding tie") else v for v in row] for row in rows],
            "headers": [tr(h, lang) for h in SUMMARY_HEADERS]}


def greedy_checks(session, prompt_ids, lives: list[LiveRun]) -> list[GreedyCheck | None]:
    """Each column's greedy check against column 1 (lossless.py); None where it does not apply (column 1
    itself, sampling, a run stopped early). Column 1 is the reference even when it is not vanilla: at the
    first differing token both sides' tokens must be within rounding of the fp32 base's best either way."""
    if len(lives) < 2 or any(lv.stopped_early or not lv.greedy for lv in lives):
        return [None] * len(lives)
    first = lives[0].token_ids
    return [None] + [compare_greedy(session, prompt_ids, lv.token_ids, first) for lv in lives[1:]]


SAME_CELL = {"equal": "yes", "tie": "rounding tie", "different": "no"}


def summary_rows(lives: list[LiveRun], checks: list[GreedyCheck | None] | None = None
                 ) -> tuple[list[list], bool | str | None, list[str]]:
    """Table rows, whether all columns produced identical tokens (True, "tie" when they differ only by rounding
    ties, False for a real difference, None: not applicable), and the note's parts (English)."""
    checks = checks or [None] * len(lives)
    vanilla = next((lv for lv in lives if lv.mode == "vanilla" and lv.records), None)
    v_rate = vanilla.metrics().tokens_per_s if vanilla else None
    first = lives[0].token_ids if lives else []
    rows = []
    for i, (live, check) in enumerate(zip(lives, checks), start=1):
        m = live.metrics()
        if m is None:
            continue
        speedup = _r(m.tokens_per_s / v_rate, 3) if v_rate else None
        same = SAME_CELL[check.verdict] if check else ("yes" if live.token_ids == first else "no")
        rows.append([i, live.label, m.new_tokens, _r(m.total_s), _r(m.tokens_per_s), speedup,
                     _r(m.acceptance_rate), _r(m.mean_accepted_length), _r(m.draft_s), _r(m.verify_s),
                     _r(m.calibrate_s), same])
    return rows, *_equality(lives, checks)


def _equality(lives: list[LiveRun], checks: list[GreedyCheck | None]) -> tuple[bool | str | None, list[str]]:
    if any(lv.stopped_early for lv in lives) or len(lives) < 2:
        return None, ["stopped early: the columns are not complete"]
    same = all(lv.token_ids == lives[0].token_ids for lv in lives)
    if not all(lv.greedy for lv in lives):
        return None, ["sampling: tokens differ by design; speculative sampling preserves the base's distribution, "
                      f"not the exact tokens ({'identical anyway' if same else 'they differ'})"]
    n = len(lives[0].token_ids)
    if same:
        return True, [msg("all {columns} columns emitted the same {tokens} tokens (greedy decoding is lossless)",
                           columns=len(lives), tokens=n)]
    done = [c for c in checks if c is not None]
    counts = counts_text(count_verdicts(done))
    worst = next((c for c in done if c.verdict == "different"), None)
    if worst is not None:
        return False, [counts, msg("a real difference at new token {i}: the fp32 base rates a token further below its "
                                   "best than {dtype} rounding explains; this is a bug", i=worst.index,
                                   dtype=worst.dtype)]
    tie = min((c for c in done if c.verdict == "tie"), key=lambda c: c.index)
    return "tie", [counts, msg("rounding tie at new token {i}: recomputed in fp32 from the same weights, both tokens "
                               "are within {allowed} of the best logit, so {dtype} rounding may pick either; not a bug",
                               i=tie.index, allowed=f"{tie.allowed:.2g}", dtype=tie.dtype)]


def equality_note(parts: list[str], lang: str) -> str:
    """The badge's note in `lang`: each part translated on its own (the JSON details keep the English)."""
    return "; ".join(tr(p, lang) for p in parts)


COLUMN_OUTPUTS = ("header", "text", "cards", "timeline")  # each column's outputs, named header_1, text_1, ...


def empty_view(modes: list[str], lang: str) -> dict:
    """The screen before a comparison, in `lang`, by output name: status, summary, badge, and each column's
    header, text, cards and timeline (the layout's first values, and what the language switch redraws until
    a comparison ran)."""
    out = {"status": tr("Pick two to four settings, then **Run comparison**.", lang),
           "summary": summary_table([], lang), "badge": badge_html(None, "run a comparison to check", lang)}
    for c, mode in enumerate(modes, start=1):
        out.update({f"header_{c}": f"**{c}.** {tr('waiting', lang)}", f"text_{c}": tokens_html([], mode, lang=lang),
                    f"cards_{c}": metric_cards_html(None, lang=lang),
                    f"timeline_{c}": translate_figure(timeline_figure([], legend="bottom"), lang)})
    return out


def make_compare(ctx: AppContext):
    session = ctx.session

    @friendly_stream
    def compare(values: Mapping, state: UserState | None = None, lang: str = "en"):
        """`values`: prompt, chat, columns (how many), the shared max_new_tokens, temperature and seed, and each
        column's settings (`COLUMN_SETTINGS` suffixed with the column's number: mode_1, ...; grouping_c may be
        left out: equal groups of N)."""
        state, lang = state if state is not None else UserState(), page_lang(lang)
        stop = state.begin("compare")
        if stop.is_set():  # Stop came while the comparison waited for the device
            yield stopped_in_queue(lang)
            return
        prompt = check_prompt_text(values.get("prompt"))
        n_cols = as_int(values.get("columns"), "columns", 2, MAX_COLUMNS)
        ids = session.encode(prompt, bool(values.get("chat")))
        shared = run_settings({**values, "top_p": 1.0, "top_k": 0})  # sampling: temperature alone, on this screen
        plans = []
        for c in range(1, n_cols + 1):
            column = column_values(values, c)
            try:
                check_choice(column.get("grouping", GROUPINGS[0]), "layer grouping", GROUPINGS[:2])
                plans.append(session.plan(spec_config(**shared, **column), ids))
            except ValueError as exc:
                raise ValueError(f"column {c}: {exc}") from None
        configs = [plan.settings for plan in plans]
        lives = [LiveRun(session.tokenizer, cfg.mode, ctx.info.device, ctx.info.devices, describe_config(cfg),
                         greedy=cfg.sampling.greedy, lang=lang) for cfg in configs]

        def produce(stop_event):
            for c, plan in enumerate(plans):
                stream = session.generate(plan)
                try:
                    for rec in stream:
                        yield c, rec
                        if stop_event.is_set():
                            return
                finally:
                    stream.close()

        def view(draw: set[int], active: int | None, status: str, final: bool = False, x_range=None, reset=False):
            """Outputs by name for the columns in `draw` (the others are left as they are)."""
            out = {"status": tr(status, lang)}
            for c in sorted(draw):
                live = lives[c]
                state_word = "running" if c == active else ("done" if live.finished else "waiting")
                out.update({f"header_{c + 1}": f"**{c + 1}. {live.label}** · {tr(state_word, lang)}",
                            f"text_{c + 1}": live.text_html(), f"cards_{c + 1}": live.cards_html(),
                            f"timeline_{c + 1}": live.timeline(x_range=x_range, legend="bottom")})
            if final:
                checks = greedy_checks(session, ids, lives)
                for live, plan, check in zip(lives, plans, checks):  # the final view: each column counted once
                    ctx.exporter.record_run(live.records, plan.as_dict(), check.verdict if check else None)
                rows, equal, parts = summary_rows(lives, checks)
                out.update(summary=summary_table(rows, lang), badge=badge_html(equal, equality_note(parts, lang), lang),
                           details=details(equal, "; ".join(parts), checks))
            elif reset:
                out.update(summary=summary_table([], lang), badge=badge_html(None, "running …", lang), details=None)
            return out

        def details(equal, note, checks):
            return {"identical": None if equal is None else equal is True, "note": note,
                    "greedy_checks": [c.as_dict() if c else None for c in checks],
                    "counts": count_verdicts(checks) if any(checks) else None,
                    "columns": [lv.details() for lv in lives]}

        every = set(range(n_cols))
        yield view(every, None, msg("**Comparing** {n} settings on the same prompt …", n=n_cols), reset=True)
        active = 0
        for batch in DeviceJob(produce, stop).batches():
            touched = set()
            for c, rec in batch:
                if c != active:
                    lives[active].finish()
                    active = c
                lives[c].add([rec])
                touched.add(c)
            yield view(touched, active, msg("**Running** column {c} of {n}: {label}", c=active + 1, n=n_cols,
                                             label=lives[active].label))
        for live in lives:
            live.finish()
        x_range = (0.0, max(lv.end_ms() for lv in lives) * 1.02 or 1.0)
        for c, live in enumerate(lives):
            if live.records:
                keep_run(state, f"compare:{c + 1}", "compare", live, ids, prompt, plans[c].as_dict(),
                         configs[c].sampling.greedy)
        stopped = any(lv.stopped_early or not lv.records for lv in lives)
        yield view(every, None, "**Stopped** early." if stopped else "**Done**: all columns ran on the same "
                                                                     "prompt, one after another on the same devices.",
                   final=True, x_range=x_range)

    return compare


def build(ctx: AppContext, state: gr.State, switch: gr.Radio):
    """The screen's layout and events; `switch` (the language radio) is the compare handler's `lang` input.
    Returns (handler, its inputs by name, outputs) that the switch re-runs."""
    compare = make_compare(ctx)
    with gr.Row():
        with gr.Column(scale=3):
            prompt = gr.Textbox(DEFAULT_PROMPT, label="Prompt (the same for every column)", lines=3,
                                elem_id="cmp-prompt")
        with gr.Column(scale=2):
            with gr.Row():
                chat = gr.Checkbox(True, label="use the chat template")
                columns = gr.Radio([2, 3, 4], value=3, label="columns", elem_id="cmp-columns")
            with gr.Row():
                new = gr.Slider(1, ctx.max_new_tokens, value=min(48, ctx.max_new_tokens), step=1,
                                label="max new tokens", elem_id="cmp-max-new", min_width=WIDE)
                temperature = gr.Slider(0, 2, value=0, step=0.05, label="temperature (0 = greedy)", min_width=WIDE)
                seed = gr.Number(0, label="seed", precision=0, minimum=0)
    with gr.Row():
        run = gr.Button("Run comparison", variant="primary", elem_id="cmp-run")
        stop = gr.Button("Stop", variant="stop", elem_id="cmp-stop")
    first = empty_view([mode for mode, *_ in DEFAULT_COLUMNS], "en")
    status = gr.Markdown(first["status"], elem_id="cmp-status")
    badge = gr.HTML(first["badge"], elem_id="cmp-badge")
    table = gr.Dataframe(headers=SUMMARY_HEADERS, label="summary (speedup measured in this comparison)",
                         interactive=False, elem_id="cmp-summary", wrap=True)
    cols: list[Column] = []
    with gr.Row(equal_height=False):
        for c, (mode, n, calibration, k) in enumerate(DEFAULT_COLUMNS):
            with gr.Column(visible=c < 3, min_width=260) as container:
                with gr.Group():
                    settings = column_panel(ctx, c + 1, mode, n, calibration, k)
                header = gr.Markdown(first[f"header_{c + 1}"], elem_id=f"cmp-header-{c + 1}")
                text = gr.HTML(first[f"text_{c + 1}"], elem_id=f"cmp-text-{c + 1}")
                cards = gr.HTML(first[f"cards_{c + 1}"], elem_id=f"cmp-cards-{c + 1}")
                plot = gr.Plot(first[f"timeline_{c + 1}"], show_label=False, elem_id=f"cmp-timeline-{c + 1}")
            cols.append(Column(settings, container, header, text, cards, plot))
    with gr.Accordion("Comparison details (JSON)", open=False):
        details = gr.JSON(elem_id="cmp-details")

    columns.change(lambda n: [gr.Column(visible=c < int(n)) for c in range(MAX_COLUMNS)], columns,
                   [c.container for c in cols], api_visibility="private", queue=False)
    # Inputs by name (inputs_kwargs): the handler gets one dict of values, and the API the same names.
    form = dict(prompt=prompt, chat=chat, max_new_tokens=new, temperature=temperature, seed=seed, columns=columns)
    for c in cols:
        form.update(c.settings)
    outputs = {"status": status, "summary": table, "badge": badge, "details": details}
    for c, col in enumerate(cols, start=1):
        outputs.update({f"{name}_{c}": getattr(col, name) for name in COLUMN_OUTPUTS})

    run.click(arm_stop("compare"), [state], None, queue=False, api_visibility="private", show_progress="hidden") \
        .then(dict_event(compare, outputs), inputs_kwargs={**form, "state": state, "lang": switch},
              outputs=list(outputs.values()), api_name="compare", concurrency_id="device", concurrency_limit=1,
              show_progress="hidden")
    stop.click(request_stop, [state], None, queue=False, api_visibility="private")

    def redraw(state: UserState, lang: str, **modes) -> dict:
        """The language switch: the empty screen in `lang`; a finished comparison stays as it was drawn.
        `modes`: each column's mode (mode_1, ...)."""
        if any(key.startswith("compare:") for key in state.last):
            return {}
        return empty_view(list(modes.values()), page_lang(lang))

    modes = {f"mode_{c}": col.settings[f"mode_{c}"] for c, col in enumerate(cols, start=1)}
    return redraw, dict(state=state, lang=switch, **modes), {k: v for k, v in outputs.items() if k != "details"}


def request_stop(state: UserState) -> None:
    if state.request_stop("compare"):
        gr.Info("Stopping after the current round.")
