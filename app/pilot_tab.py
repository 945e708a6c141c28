"""The Pilot screen: a batch evaluation over prompts x a settings grid, for ROI decisions.

The evaluation itself is `core.evaluation.pilot` (shared with `easyspec bench`); this screen picks the
prompts (a built-in set, an uploaded JSONL/CSV, or typed prompts), shows the estimated duration
before the start, streams progress and results, draws the charts and offers CSV, JSON and Chrome
trace downloads. API: `pilot` (its `prompt` parameter holds typed prompts, one per line), `tune`.
The handlers take the screen's values as one dict by name (`pilot(values, state, lang)`), callable as such
by tests; the events pass Gradio's inputs by the same names, which the API shows.
What it is not: the evaluation (`core.evaluation.pilot`) or the report's content (`core.evaluation.report`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from typing import Callable, Mapping

import gradio as gr

from easyspec.core.settings import CALIBRATION_POLICIES, DRAFT_DTYPES
from easyspec.core.i18n import check_lang, msg, text, tr
from easyspec.core.files import write_text_atomic
from easyspec.core.engine.verdicts import VERDICTS
from easyspec.core.evaluation import fitting, shapes
from easyspec.core.evaluation.criteria import EQUALITY, Criteria, judge
from easyspec.core.evaluation.hardware import DEVICES
from easyspec.core.evaluation.pilot import (CONTEXTS, DEFAULT_PROMPTS, MAX_CONTEXT, PilotGrid, PilotProgress,
                                            PilotRun, check_pilot, describe_seconds, estimate_seconds, pilot_json,
                                            pilot_prompt_ids, rows_to_csv, run_pilot, summarise)
from easyspec.core.evaluation.projection import (Setting, project, project_entered, project_pilot, round_spans,
                                                session_shapes)
from easyspec.core.evaluation.report import context_for, projected_criteria
from easyspec.core.evaluation.prompt_sets import BUILTIN_SETS, builtin_prompts, read_prompt_file
from easyspec.core.tuner.report import markdown as tuning_markdown
from easyspec.core.tuner.types import TuneConfig, TuneResult
from easyspec.visualizations.pilot_charts import pilot_figure
from easyspec.visualizations.projection import round_figure, utilisation_figure
from easyspec.visualizations.report import pilot_report_html
from easyspec.visualizations.translate import translate_figure

from .common import (arm_stop, by_component, file_size_ok, friendly, friendly_stream, named_inputs, stopped_in_queue,
                     write_trace)
from .context import AppContext
from .i18n import page_lang
from .panel import AUTO, grid_panel
from .settings import as_float, as_int, check_choice
from .state import LastRun, RunSummary, UserState, prompt_key
from .worker import DeviceJob

SOURCES = ("built-in set", "uploaded file", "typed prompts")
RUN_COLUMNS = ["prompt", "setting", "prompt_tokens", "new_tokens", "tokens_per_s", "speedup", "acceptance_rate",
               "mean_accepted_length", "draft_s", "verify_s", "calibrate_s", "sample_s", "overhead_s",
               "memory_source", "run_peak_memory_mib", "run_memory_growth_mib", "greedy_check"]
SUMMARY_COLUMNS = ["setting", "prompts", "mean_prompt_tokens", "new_tokens", "tokens_per_s", "speedup",
                   "acceptance_rate", "mean_accepted_length", "draft_s", "verify_s", "calibrate_s", "sample_s", "overhead_s",
                   "memory_source", "largest_run_peak_memory_mib", "largest_run_memory_growth_mib",
                   "greedy_equal", "greedy_tie", "greedy_different"]  # the greedy checks against vanilla


CRITERIA_COLUMNS = ["setting", "speedup", "speedup_met", "acceptance_drop", "acceptance_met", "equality_met", "met"]


def make_criteria(values: Mapping) -> Criteria:
    """The team's targets from the screen's values: min_speedup (x), max_acceptance_drop (%) and equality;
    each left out takes its default."""
    default = Criteria()
    drop = values.get("max_acceptance_drop")
    return Criteria(min_speedup=as_float(values.get("min_speedup", default.min_speedup), "minimum speedup"),
                    max_acceptance_drop=default.max_acceptance_drop if drop is None else
                    as_float(drop, "maximum acceptance drop") / 100,
                    equality=check_choice(values.get("equality", default.equality), "equality", EQUALITY))


def criteria_view(settings: list[dict], criteria: Criteria, lang: str) -> dict:
    """The criteria table (one row per setting, met or not on each target) and its one-line verdict."""
    verdicts = judge(settings, criteria)
    rows = [{**asdict(j), "met": j.met} for j in verdicts]
    judged = [j for j in verdicts if j.met is not None]
    targets = dict(speedup=f"{criteria.min_speedup:g}", drop=f"{criteria.max_acceptance_drop:.0%}",
                   equality=tr(criteria.equality, lang))
    note = text("pilot.criteria_met", lang, met=sum(j.met for j in judged), total=len(judged), **targets) \
        if judged else text("pilot.criteria_none", lang, **targets)
    return {"criteria_table": _table(rows, CRITERIA_COLUMNS, lang), "criteria_note": note}


PROJECTION_COLUMNS = ["devices", "setting", "vanilla_tokens_per_s", "speculative_tokens_per_s",
                      "easyspec_tokens_per_s", "easyspec_speedup", "drafting_speedup", "accepted_length",
                      "speculative_utilisation", "easyspec_utilisation"]
THIS_PAIR = "this pair"
CLUSTER_DEVICES = (1, 2, 4, 8)
EXECUTION = ("CUDA graphs", "eager")
MAX_CONFIG_BYTES = 1_000_000


def cluster_shape(ctx: AppContext, choice, upload, which: str) -> shapes.ModelShape:
    """The base's or draft's shape: an uploaded config.json, else a preset, else this session's pair."""
    if upload:
        return shapes.from_config(file_size_ok(upload, MAX_CONFIG_BYTES, f"{which} config.json"))
    choice = check_choice(choice or THIS_PAIR, f"{which} model", (THIS_PAIR, *shapes.PRESETS))
    if choice != THIS_PAIR:
        return shapes.PRESETS[choice]
    if ctx.info.draft is None:
        raise ValueError(f"this session has no draft: pick a {which} model preset or upload its config.json")
    return session_shapes(ctx.session)[0 if which == "base" else 1]


def cluster_view(ctx: AppContext, state: UserState, values: Mapping, lang: str) -> dict:
    """'Projected for your cluster': the hardware model for the chosen GPU, G, pair, context and execution, fed
    with the latest pilot's accepted lengths (or an entered one): the table, its assumptions, the utilisation
    per device, one simulated round of speculative and of easyspec decoding, and the criteria on the projected
    speedups. Projected, never mixed with measurements."""
    empty = {"projected": _table([], PROJECTION_COLUMNS, lang), "utilisation": utilisation_figure(None),
             "round_speculative": round_figure([], 1, "speculative"), "round_easyspec": round_figure([], 1, "easyspec"),
             "projected_criteria": ""}
    try:
        device = DEVICES[check_choice(values.get("hardware") or "a100-80gb", "projection hardware", tuple(DEVICES))]
        g = check_choice(as_int(values.get("devices") or 8, "devices G", 1, 8), "devices G", CLUSTER_DEVICES)
        context = as_int(values.get("context") or 1024, "context length", 1, 131_072)
        graphs = check_choice(values.get("execution") or EXECUTION[0], "execution", EXECUTION) == EXECUTION[0]
        entered = as_float(values.get("accepted_length") or 0, "mean accepted length")
        base = cluster_shape(ctx, values.get("base_model"), values.get("base_config"), "base")
        draft = cluster_shape(ctx, values.get("draft_model"), values.get("draft_config"), "draft")
        runs = state.pilot_report[0] if state.pilot_report else []
        if runs:
            rows = project_pilot(runs, base, draft, device, devices=(g,), context=context, cuda_graphs=graphs,
                                 accepted_length=entered or None)
        elif entered:
            grid = make_grid(values)
            rows = project_entered(base, draft, device, g, [n for n in grid.layer_parallel], grid.draft_len[0],
                                   entered, context, graphs)
        else:
            return {**empty, "projected_note": text("pilot.projection_needs", lang)}
        if not rows:
            raise ValueError(f"no setting of this pilot fits G = {g} (N <= G)")
    except ValueError as exc:
        return {**empty, "projected_note": text("pilot.no_projection", lang, reason=exc)}
    best = max(rows, key=lambda r: r["easyspec_tokens_per_s"])
    setting = Setting(**best["setting_values"])
    p, spans = project(base, draft, device, setting), round_spans(base, draft, device, setting)
    end = max(s.end_ns for s in spans["speculative"] + spans["easyspec"]) / 1e6 * 1.02
    v = fitting.validation()
    note = text("pilot.projection_note", lang, g_note=g, hardware=device.name,
                bandwidth_tbs=f"{device.bandwidth / 1e12:.2f}",
                link=device.link_name, context=context, median=f"{v['median_abs']:.1%}",
                loo=f"{v['loo_median_abs']:.1%}", base=base.name, draft=draft.name,
                execution=tr(EXECUTION[0] if graphs else EXECUTION[1], lang),
                al=tr("entered" if entered else "measured by the pilot", lang),
                limit=f"{device.bandwidth / p['vanilla']['per_device_bytes']:.0f}", setting=best["setting"])
    view = {"projected": _table(rows, PROJECTION_COLUMNS, lang), "projected_note": note,
            "utilisation": translate_figure(utilisation_figure(p), lang),
            "round_speculative": translate_figure(round_figure(spans["speculative"], g, "speculative", (0, end)), lang),
            "round_easyspec": translate_figure(round_figure(spans["easyspec"], g, "easyspec", (0, end)), lang),
            "projected_criteria": ""}
    if runs:  # the team's targets on the projected speedups (acceptance and equality stay the measured ones)
        summary = summarise([r.row for r in runs])
        judged = projected_criteria(summary, {"rows": rows}, state.pilot_report[2].criteria)["projected"]
        verdicts = [j for j in judged if j["met"] is not None]
        view["projected_criteria"] = text("pilot.criteria_projected", lang, met=sum(j["met"] for j in verdicts),
                                          total=len(verdicts), g=g, hardware=device.name)
    return view


def _table(rows: list[dict], columns: list[str], lang: str = "en") -> dict:
    """A Dataframe value: the rows' cells in `columns` order under headers in `lang`."""
    def cell(v):
        if isinstance(v, bool):
            return tr("yes" if v else "no", lang)
        if isinstance(v, str) and v in VERDICTS:  # a run's greedy check
            return tr(v, lang)
        return "" if v is None else v
    return {"data": [[cell(r.get(c)) for c in columns] for r in rows], "headers": [tr(c, lang) for c in columns]}


def pick_prompts(values: Mapping) -> list[str]:
    """The pilot's prompts from the chosen source (ValueError with a clear message otherwise). `values`: source,
    prompt_set, n_prompts, and prompt (typed, one per line) or upload (a file's path)."""
    source = check_choice(values.get("source"), "prompt source", SOURCES)
    if source == "built-in set":
        prompts = builtin_prompts(check_choice(values.get("prompt_set"), "prompt set", BUILTIN_SETS))
    elif source == "uploaded file":
        if not values.get("upload"):
            raise ValueError("choose a JSONL or CSV file to upload first (or pick another prompt source)")
        prompts = read_prompt_file(values["upload"])
    else:
        prompts = [line.strip() for line in (values.get("prompt") or "").splitlines() if line.strip()]
        if not prompts:
            raise ValueError("type at least one prompt (one per line), or pick another prompt source")
    n = as_int(values.get("n_prompts"), "number of prompts", 1, 1000)
    return prompts[:n]


def make_grid(values: Mapping) -> PilotGrid:
    """The settings grid from the screen's values: layer_parallel, calibration, draft_len and draft_dtypes (lists
    of ticked values; no draft precision ticked: the session's own), speculative, max_new_tokens, chat,
    temperature."""
    layer_parallel, calibration, draft_len = (values.get(name) for name in ("layer_parallel", "calibration",
                                                                            "draft_len"))
    if not layer_parallel:
        raise ValueError("tick at least one layer-parallel size N")
    plans = ("auto",) if AUTO in layer_parallel else ()
    layer_parallel = [n for n in layer_parallel if n != AUTO]
    if not calibration:
        raise ValueError("tick at least one calibration policy")
    if not draft_len:
        raise ValueError("tick at least one draft length k")
    return PilotGrid(layer_parallel=tuple(as_int(n, "N", 1, 64) for n in layer_parallel), plans=plans,
                     calibration=tuple(check_choice(c, "calibration policy", CALIBRATION_POLICIES)
                                       for c in calibration),
                     draft_len=tuple(as_int(k, "k", 1, 16) for k in draft_len),
                     speculative=bool(values.get("speculative")), chat=bool(values.get("chat")),
                     max_new_tokens=as_int(values.get("max_new_tokens"), "max new tokens", 1, 2048),
                     temperature=as_float(values.get("temperature"), "temperature"),
                     draft_dtypes=tuple(check_choice(d, "draft precision", DRAFT_DTYPES)
                                        for d in values.get("draft_dtypes") or ()),
                     contexts=tuple(check_choice(as_int(c, "context length", 0, MAX_CONTEXT), "context length",
                                                 CONTEXTS) for c in values.get("contexts") or (0,)))


@dataclass(frozen=True)
class PilotHandlers:
    """The screen's handlers by name (tests call them directly)."""

    estimate: Callable
    pilot: Callable
    trace_of: Callable
    request_stop: Callable
    export_report: Callable
    tune: Callable
    rejudge: Callable
    project_cluster: Callable


def make_handlers(ctx: AppContext) -> PilotHandlers:
    session = ctx.session

    def estimate(values: Mapping, lang: str = "en") -> str:
        """The pilot's size and duration for the screen's values (the form's, as `pilot` takes them)."""
        try:
            prompts = pick_prompts(values)
            grid = make_grid(values)
            lengths = [len(session.encode(p, grid.chat)) for p in prompts]  # each brought to its context length
        except ValueError as exc:
            return f"⚠️ {exc}"
        settings = len(grid.settings())
        runs = settings * len(prompts)
        size = text("pilot.size", lang, runs=runs, settings=settings, prompts=len(prompts), tokens=grid.max_new_tokens)
        if ctx.throughput is None:
            return size + text("pilot.no_estimate", lang)
        seconds = estimate_seconds(lengths, grid, ctx.throughput)
        return size + text("pilot.estimate", lang, time=describe_seconds(seconds), rates=ctx.throughput.describe())

    @friendly_stream
    def pilot(values: Mapping, state: UserState | None = None, lang: str = "en", *, progress=gr.Progress()):
        """`values`: the prompts' source (`pick_prompts`), the grid (`make_grid`) and hardware, the device preset
        of the projection (a100-80gb when left out)."""
        state = state if state is not None else UserState()
        lang = check_lang(lang)
        stop = state.begin("pilot")
        if stop.is_set():  # Stop came while the pilot waited for the device
            yield stopped_in_queue(lang)
            return
        prompts = pick_prompts(values)
        grid = make_grid(values)
        criteria = make_criteria(values)
        hardware = check_choice(values.get("hardware", "a100-80gb"), "projection hardware", tuple(DEVICES))
        # Every check (the grid's run limit, each setting on each prompt) before the screen is cleared:
        # a refused pilot leaves the previous pilot's results and report in place.
        planned = check_pilot(session, pilot_prompt_ids(session, prompts, grid), grid)  # one plan a run
        started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        state.pilot_runs = {}
        state.pilot_report = None
        rows: list[dict] = []
        kept: list[PilotRun] = []
        yield dict(status=text("pilot.starting", lang), summary=_table([], SUMMARY_COLUMNS, lang),
                   runs=_table([], RUN_COLUMNS, lang), chart=translate_figure(pilot_figure([]), lang), csv_file=None,
                   json_file=None, trace_pick=gr.Dropdown(choices=[], value=None), trace_file=None,
                   report_file=None, **criteria_view([], criteria, lang), **cluster_view(ctx, state, values, lang))
        job = DeviceJob(lambda ev: run_pilot(session, prompts, grid, should_stop=ev.is_set, planned=planned), stop)
        status, last, prompt_ids = "", None, {}
        for batch in job.batches(min_interval_s=0.3):
            for item in batch:
                if isinstance(item, PilotProgress):
                    last, remaining = item, ""
                    if 0 < item.done < item.total:
                        left = item.elapsed_s / item.done * (item.total - item.done)
                        remaining = text("pilot.remaining", lang, time=describe_seconds(left))
                    status = text("pilot.progress", lang, done=item.done, total=item.total,
                                  elapsed=describe_seconds(item.elapsed_s), remaining=remaining, label=item.label)
                    progress((item.done, item.total), desc=item.label, unit="runs")
                elif isinstance(item, PilotRun):
                    rows.append(item.row)
                    kept.append(item)
                    ctx.exporter.record_run(item.records, item.setting.config.as_dict(), item.row["greedy_check"])
                    i = item.prompt_index
                    if i not in prompt_ids:
                        prompt_ids[i] = session.encode(prompts[i], grid.chat)
                    _keep_pilot_run(state, item, prompts[i], prompt_ids[i])
            summary = summarise(rows) if rows else []
            yield dict(status=status, summary=_table(summary, SUMMARY_COLUMNS, lang),
                       runs=_table(rows, RUN_COLUMNS, lang), chart=translate_figure(pilot_figure(summary), lang))
        summary = summarise(rows)
        folder = ctx.new_files_dir()
        csv_path, json_path = folder / "pilot_runs.csv", folder / "pilot.json"
        write_text_atomic(csv_path, rows_to_csv(rows))
        write_text_atomic(json_path, pilot_json(rows, grid, prompts, dataclasses.asdict(ctx.info)))
        report_path = None
        if kept:
            notes = ["runs not made: the pilot was stopped early"] if len(kept) < len(grid.settings()) * len(prompts) \
                else []
            state.pilot_report = (kept, grid, context_for(session, prompts, "easyspec app: Pilot screen", hardware,
                                                          started, notes, criteria))
            report_path = write_report(ctx, state, lang)
        cluster = cluster_view(ctx, state, values, lang)
        labels = list(state.pilot_runs)
        stopped = last is not None and last.label == "stopped"
        took = text("pilot.took", lang, time=describe_seconds(last.elapsed_s)) if last else ""
        yield dict(status=text("pilot.stopped" if stopped else "pilot.done", lang, n=len(rows),
                               total=last.total if last else len(rows), took=took),
                   summary=_table(summary, SUMMARY_COLUMNS, lang), runs=_table(rows, RUN_COLUMNS, lang),
                   chart=translate_figure(pilot_figure(summary), lang), csv_file=str(csv_path),
                   json_file=str(json_path),
                   trace_pick=gr.Dropdown(choices=labels, value=labels[-1] if labels else None),
                   trace_file=None, report_file=report_path, **cluster,
                   **criteria_view(summary, criteria, lang))

    @friendly
    def trace_of(label, state: UserState):
        run = state.pilot_runs.get(label)
        if run is None:
            return None
        return write_trace(ctx, run.records, "pilot_trace")

    @friendly
    def project_cluster(values: Mapping, state: UserState, lang: str = "en") -> dict:
        """`cluster_view` for the screen's values (the cluster's, and the grid's N and k when no pilot ran)."""
        return cluster_view(ctx, state, values, page_lang(lang))

    def rejudge(values: Mapping, state: UserState, lang: str = "en") -> dict:
        """The criteria table again for new targets (`make_criteria`'s values), on the latest pilot's numbers;
        its report, exported next, states the new targets."""
        lang = page_lang(lang)
        try:
            criteria = make_criteria(values)
        except ValueError as exc:
            return {"criteria_note": f"⚠️ {exc}"}
        if state.pilot_report is None:
            return criteria_view([], criteria, lang)
        runs, grid, report_ctx = state.pilot_report
        state.pilot_report = (runs, grid, replace(report_ctx, criteria=criteria))
        return criteria_view(summarise([r.row for r in runs]), criteria, lang)

    @friendly
    def export_report(state: UserState, lang: str):
        if state.pilot_report is None:
            raise ValueError("run a pilot first: the report is built from its results")
        return write_report(ctx, state, check_lang(lang))

    def request_stop(state: UserState) -> None:
        if state.request_stop("pilot"):
            gr.Info("Stopping after the current round.")

    @friendly_stream
    def tune(values: Mapping, state: UserState | None = None):
        """The auto-tuner on the pilot's prompts (`pick_prompts`); the result is cached for "auto" grouping.
        `values` also: chat, tolerance, tokens (per prompt) and draft_len (k)."""
        state = state if state is not None else UserState()
        prompts = pick_prompts(values)
        tol = as_float(values.get("tolerance", 0.05), "tolerance")
        if not 0 < tol < 1:
            raise ValueError(f"tolerance must be between 0 and 1 (a relative loss of acceptance); got {tol}")
        cfg = TuneConfig(tolerance=tol, max_new_tokens=as_int(values.get("tokens", 32), "tokens per prompt", 4, 256),
                         draft_len=as_int(values.get("draft_len", 5), "draft length k", 1, 16),
                         max_group=min(8, ctx.max_layer_parallel) if ctx.info.devices == 1 else ctx.info.devices)
        ids = [session.encode(p, bool(values.get("chat", True))) for p in prompts]
        steps = session.tune_steps(ids, cfg)  # validates now: a bad setting never reaches the device
        stop = state.begin("pilot")

        def produce(ev):
            for step in steps:
                yield step
                if ev.is_set():
                    steps.close()
                    return

        yield {"tune_status": f"**Tuning** on {len(ids)} prompts …"}
        for batch in DeviceJob(produce, stop).batches(min_interval_s=0.3):
            for step in batch:
                if isinstance(step, TuneResult):
                    yield {"tune_status": f"**Done**: plan `{step.plan}` is cached for this pair; choose "
                                          f"*auto (tuned)* as the layer grouping on the Generate screen.",
                           "tune_result": tuning_markdown(step)}
                    return
            yield {"tune_status": f"**Tuning** ({len(ids)} prompts): {batch[-1]} …"}
        yield {"tune_status": "**Stopped**: the tuner did not finish, nothing was cached."}

    return PilotHandlers(estimate, pilot, trace_of, request_stop, export_report, tune, rejudge, project_cluster)


def write_report(ctx: AppContext, state: UserState, lang: str) -> str:
    """The latest pilot's report in `lang`, as a file to download."""
    runs, grid, report_ctx = state.pilot_report
    path = ctx.new_files_dir() / f"easyspec_pilot_report_{lang}.html"
    write_text_atomic(path, pilot_report_html(runs, grid, report_ctx, lang))
    return str(path)


def _keep_pilot_run(state: UserState, item: PilotRun, prompt: str, prompt_ids: list[int]) -> None:
    """Keep a pilot run for its trace download, How it works and the equality evidence."""
    cfg = item.setting.config
    label = f"prompt {item.prompt_index + 1} · {item.setting.label}"
    run = LastRun(label, cfg.mode, list(item.records), tuple(prompt_ids), cfg.as_dict())
    state.pilot_runs[label] = run
    state.keep("pilot", run)
    state.remember(RunSummary("pilot", prompt_key(prompt_ids), prompt[:60], item.setting.label, cfg.mode,
                              cfg.sampling.greedy, item.token_ids, complete=item.records[-1].stop is not None,
                              prompt_ids=tuple(prompt_ids)))


def _tuned_note(ctx: AppContext, lang: str = "en") -> str:
    """What the tuning cache holds for this pair, read when the screen is opened (another page may have tuned)."""
    result = ctx.session.tuning() if ctx.info.draft else None
    if result is None:
        return tr("This pair has not been tuned yet.", lang)
    return tr(msg("Cached for this pair: plan `{plan}` ({steps} draft steps, acceptance {rate} vs {baseline} for N = 1 "
                  "at draft length k = {k}, tuned {created}).", plan=result.plan, steps=result.steps,
                  rate=f"{result.acceptance_rate:.2f}", baseline=f"{result.baseline_rate:.2f}", k=result.draft_len,
                  created=result.created), lang)


def build(ctx: AppContext, state: gr.State, tab: gr.Tab, lang: gr.Radio):
    """Lay the screen out (`lang`: the language switch, an input of every handler that writes text);
    returns (handler, its inputs by name, outputs) that the switch re-runs."""
    handlers = make_handlers(ctx)
    estimate, pilot, trace_of = handlers.estimate, handlers.pilot, handlers.trace_of
    request_stop, export_report, tune = handlers.request_stop, handlers.export_report, handlers.tune
    rejudge, project_cluster = handlers.rejudge, handlers.project_cluster
    gr.Markdown("Run every setting of a grid on a set of prompts. Vanilla decoding runs first on each prompt: "
                "speedups are measured against it in the same pilot, and greedy outputs are checked against it "
                "token for token.")
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=320):
            source = gr.Radio(list(SOURCES), value="built-in set", label="prompts from", elem_id="pilot-source")
            prompt_set = gr.Dropdown(list(BUILTIN_SETS), value="code", label="built-in set", elem_id="pilot-set")
            n_prompts = gr.Slider(1, 50, value=DEFAULT_PROMPTS, step=1, label="number of prompts (first n)",
                                  elem_id="pilot-n-prompts")
            upload = gr.File(label="upload JSONL ({\"prompt\": ...} per line) or CSV (a prompt column)",
                             file_types=[".jsonl", ".csv", ".json", ".txt"], elem_id="pilot-upload")
            prompt = gr.Textbox("", label="typed prompts (one per line)", lines=3, elem_id="pilot-prompt")
        with gr.Column(scale=1, min_width=320):
            grid = grid_panel(ctx)
            speculative = gr.Checkbox(True, label="also sequential speculative decoding (per k)")
            with gr.Row():
                max_new_tokens = gr.Slider(4, min(512, ctx.max_new_tokens), value=32, step=4,
                                           label="max new tokens per run", elem_id="pilot-max-new")
                temperature = gr.Slider(0, 2, value=0, step=0.05, label="temperature (0 = greedy)")
            chat = gr.Checkbox(True, label="use the chat template")
            with gr.Accordion("Acceptance criteria (your targets)", open=True):
                default = Criteria()
                with gr.Row():
                    min_speedup = gr.Number(default.min_speedup, label="minimum speedup over vanilla (x)",
                                            minimum=0.01, maximum=100, step=0.05, elem_id="pilot-min-speedup")
                    max_drop = gr.Slider(0, 100, value=default.max_acceptance_drop * 100, step=1,
                                         label="maximum acceptance drop against sequential drafting (%)",
                                         elem_id="pilot-max-drop")
                equality = gr.Radio(list(EQUALITY), value=default.equality, label="greedy output equality",
                                    info="required: token for token equal to vanilla; ties allowed: a measured bf16 "
                                         "rounding tie passes, a real difference never does",
                                    elem_id="pilot-equality")
    criteria_form = dict(min_speedup=min_speedup, max_acceptance_drop=max_drop, equality=equality)
    # Inputs by name (inputs_kwargs): the handlers get one dict of values, and the API the same names.
    form = dict(prompt=prompt, source=source, prompt_set=prompt_set, n_prompts=n_prompts, **grid,
                speculative=speculative, max_new_tokens=max_new_tokens, chat=chat, temperature=temperature,
                upload=upload)
    run_form = {**form, **criteria_form}
    estimate_md = gr.Markdown(estimate({name: c.value for name, c in form.items()}), elem_id="pilot-estimate")
    with gr.Row():
        run = gr.Button("Run pilot", variant="primary", elem_id="pilot-run")
        stop = gr.Button("Stop", variant="stop", elem_id="pilot-stop")
    status = gr.Markdown("", elem_id="pilot-status")
    summary = gr.Dataframe(headers=SUMMARY_COLUMNS, label="per setting (sums over prompts)", interactive=False,
                           elem_id="pilot-summary", wrap=True)
    chart = gr.Plot(pilot_figure([]), show_label=False, elem_id="pilot-chart")
    runs = gr.Dataframe(headers=RUN_COLUMNS, label="per run", interactive=False, elem_id="pilot-runs", wrap=True)
    gr.Markdown("### Against your acceptance criteria (measured)")
    first = criteria_view([], Criteria(), "en")
    criteria_note = gr.Markdown(first["criteria_note"], elem_id="pilot-criteria-note")
    criteria_table = gr.Dataframe(headers=CRITERIA_COLUMNS, label="met or not, per setting", interactive=False,
                                  elem_id="pilot-criteria", wrap=True)
    gr.Markdown("### Projected for your cluster (a model, not a measurement)")
    with gr.Row():
        hardware = gr.Dropdown(list(DEVICES), value="a100-80gb", label="GPU", elem_id="pilot-hardware")
        devices = gr.Radio(list(CLUSTER_DEVICES), value=8, label="devices G", elem_id="pilot-cluster-g")
        execution = gr.Radio(list(EXECUTION), value=EXECUTION[0], label="execution", elem_id="pilot-execution")
        context = gr.Number(1024, label="context length (cached tokens)", minimum=1, maximum=131_072, precision=0,
                            elem_id="pilot-cluster-context")
    with gr.Row():
        pair_choices = [THIS_PAIR, *shapes.PRESETS]
        base_model = gr.Dropdown(pair_choices, value=THIS_PAIR, label="base model", elem_id="pilot-cluster-base")
        draft_model = gr.Dropdown(pair_choices, value=THIS_PAIR, label="draft model", elem_id="pilot-cluster-draft")
        accepted_length = gr.Number(0, label="mean accepted length (0 = the pilot's measured)", minimum=0,
                                    maximum=17, elem_id="pilot-cluster-al")
    with gr.Accordion("or the models' config.json files", open=False):
        with gr.Row():
            base_config = gr.File(label="base config.json", file_types=[".json"], elem_id="pilot-cluster-base-config")
            draft_config = gr.File(label="draft config.json", file_types=[".json"],
                                   elem_id="pilot-cluster-draft-config")
    project_btn = gr.Button("Project", elem_id="pilot-project")
    projected_note = gr.Markdown(text("pilot.projection_needs", "en"), elem_id="pilot-projection-note")
    projected_criteria = gr.Markdown("", elem_id="pilot-projection-criteria")
    projected = gr.Dataframe(headers=PROJECTION_COLUMNS, label="projected (not measured)", interactive=False,
                             elem_id="pilot-projection", wrap=True)
    with gr.Row():
        utilisation = gr.Plot(utilisation_figure(None), show_label=False, elem_id="pilot-utilisation")
        round_speculative = gr.Plot(round_figure([], 1, "speculative"), show_label=False,
                                    elem_id="pilot-round-speculative")
        round_easyspec = gr.Plot(round_figure([], 1, "easyspec"), show_label=False, elem_id="pilot-round-easyspec")
    cluster_form = dict(hardware=hardware, devices=devices, execution=execution, context=context,
                        base_model=base_model, draft_model=draft_model, accepted_length=accepted_length,
                        base_config=base_config, draft_config=draft_config)
    cluster_outputs = dict(projected=projected, projected_note=projected_note, projected_criteria=projected_criteria,
                           utilisation=utilisation, round_speculative=round_speculative,
                           round_easyspec=round_easyspec)
    run_form.update(cluster_form)
    with gr.Row():
        with gr.Column():
            report_file = gr.File(label="report (one HTML file, opens offline)", interactive=False,
                                  elem_id="pilot-report")
            export = gr.Button("Export report", elem_id="pilot-export")
        csv_file = gr.File(label="results (CSV)", interactive=False, elem_id="pilot-csv")
        json_file = gr.File(label="results (JSON)", interactive=False, elem_id="pilot-json")
        with gr.Column():
            trace_pick = gr.Dropdown([], label="Chrome trace of run", elem_id="pilot-trace-pick")
            trace_file = gr.File(label="trace (.json, opens in Perfetto)", interactive=False, elem_id="pilot-trace")

    def on_estimate(*, lang: str, **values) -> str:
        return estimate(values, lang)

    # Gradio fills `progress` itself; `upload=None` makes the file optional in the API (a File has no value).
    # The API's output order: what came first stays first (clients index it), the newer outputs after.
    pilot_outputs = dict(status=status, summary=summary, runs=runs, chart=chart, csv_file=csv_file,
                         json_file=json_file, trace_pick=trace_pick, trace_file=trace_file, projected=projected,
                         projected_note=projected_note, report_file=report_file, criteria_table=criteria_table,
                         criteria_note=criteria_note)
    pilot_outputs.update(cluster_outputs)  # the projection's new outputs after those

    # Gradio fills `progress` itself; a file input defaulting to None is optional in the API (a File has no value).
    def on_pilot(progress=gr.Progress(), *, upload=None, base_config=None, draft_config=None, **inputs):
        values, state_, lang_ = named_inputs({**inputs, "upload": upload, "base_config": base_config,
                                              "draft_config": draft_config})
        for view in pilot(values, state_, lang_, progress=progress):
            yield by_component(view, pilot_outputs)

    def on_project(*, base_config=None, draft_config=None, **inputs):
        values = {**inputs, "base_config": base_config, "draft_config": draft_config}
        return by_component(project_cluster(*named_inputs(values)), cluster_outputs)

    for comp in form.values():
        comp.change(on_estimate, inputs_kwargs={**form, "lang": lang}, outputs=estimate_md, api_visibility="private",
                    queue=False, show_progress="hidden")
    run.click(arm_stop("pilot"), [state], None, queue=False, api_visibility="private", show_progress="hidden") \
        .then(on_pilot, inputs_kwargs={**run_form, "state": state, "lang": lang},
              outputs=list(pilot_outputs.values()),
              api_name="pilot", concurrency_id="device", concurrency_limit=1)
    stop.click(request_stop, [state], None, queue=False, api_visibility="private")
    export.click(export_report, [state, lang], report_file, api_visibility="private")
    trace_pick.change(trace_of, [trace_pick, state], trace_file, api_visibility="private")
    project_btn.click(on_project, inputs_kwargs={**form, **cluster_form, "state": state, "lang": lang},
                      outputs=list(cluster_outputs.values()), api_name="project", concurrency_id="views",
                      concurrency_limit=4)
    criteria_outputs = dict(criteria_table=criteria_table, criteria_note=criteria_note)

    def on_rejudge(**inputs):
        return by_component(rejudge(*named_inputs(inputs)), criteria_outputs)

    for comp in criteria_form.values():
        comp.change(on_rejudge, inputs_kwargs={**criteria_form, "state": state, "lang": lang},
                    outputs=list(criteria_outputs.values()), api_visibility="private", queue=False,
                    show_progress="hidden")
    with gr.Accordion("Tune the layer plan (auto grouping)", open=False):
        gr.Markdown("Measures, on the prompts chosen above (greedy), how similar each draft layer's input is to the "
                    "next layers' inputs, predicts the acceptance rate of candidate layer plans from simulated "
                    "drafting rounds and improves the best by moving group boundaries, then measures the acceptance "
                    "rate of the most promising plans against sequential drafting (N = 1), in one run; picks the plan "
                    "with the fewest sequential draft steps whose acceptance stays within the tolerance, then compares "
                    "the calibration policies on it. The result is cached for this model pair and used by "
                    "*auto (tuned)* on the Generate screen and in the pilot grid.")
        with gr.Row():
            tolerance = gr.Slider(0.01, 0.3, value=0.05, step=0.01, label="tolerance (relative acceptance loss)",
                                  elem_id="tune-tolerance")
            tune_tokens = gr.Slider(8, 128, value=32, step=8, label="tokens per prompt", elem_id="tune-tokens")
            tune_k = gr.Slider(1, 12, value=5, step=1, label="draft length k", elem_id="tune-k",
                               info="fuzzy errors grow along a round: a shorter k tolerates larger groups")
        tune_btn = gr.Button("Run the tuner", elem_id="tune-run")
        tune_status = gr.Markdown(_tuned_note(ctx), elem_id="tune-status")
        tune_result = gr.Markdown("", elem_id="tune-result")
    tune_form = dict(prompt=prompt, source=source, prompt_set=prompt_set, n_prompts=n_prompts, upload=upload, chat=chat,
                     tolerance=tolerance, tokens=tune_tokens, draft_len=tune_k, state=state)
    tune_outputs = dict(tune_status=tune_status, tune_result=tune_result)

    def on_tune(*, upload=None, **inputs):
        values, state_, _ = named_inputs({**inputs, "upload": upload})
        for view in tune(values, state_):
            yield by_component(view, tune_outputs)

    tune_btn.click(on_tune, inputs_kwargs=tune_form, outputs=list(tune_outputs.values()), api_name="tune",
                   concurrency_id="device", concurrency_limit=1)
    tab.select(lambda lang_: _tuned_note(ctx, lang_), lang, tune_status, api_visibility="private", queue=False,
               show_progress="hidden")

    def redraw(lang: str, state: UserState, **values):
        """The switch: the estimate, the tuning note and the criteria verdicts in the chosen language."""
        return {"estimate": estimate(values, lang), "tune_status": _tuned_note(ctx, lang),
                **rejudge(values, state, lang), **cluster_view(ctx, state, values, lang)}

    return redraw, {**form, **criteria_form, **cluster_form, "state": state, "lang": lang}, \
        {"estimate": estimate_md, "tune_status": tune_status, **criteria_outputs, **cluster_outputs}
