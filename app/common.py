"""Shared pieces of the dashboard's handlers: error wrapping, run files, run summaries.

Handlers take at most three positional parameters: the form's values as one dict by name, the
user's state and the language (`named_inputs` splits an event's named inputs so), and return or
yield their outputs as one dict by name (`dict_event` maps the names to the components).
Every handler is wrapped so that bad input shows as a clear message (gr.Error with the
ValueError's text) and an unexpected failure shows its type and message, with the traceback
going to the server log only: the browser never sees a stack trace, and the app stays up.
"""
from __future__ import annotations

import functools
import inspect
import sys
import traceback
from pathlib import Path
from typing import Callable, Mapping

import gradio as gr

from easyspec.core.engine.chrome_trace import write_chrome_trace
from easyspec.core.i18n import tr
from easyspec.core.runtime.parallel import DistributedError
from easyspec.core.engine.records import save_run
from easyspec.core.session import DeviceMemoryError

from .context import AppContext
from .live import LiveRun
from .settings import ui_message
from .state import LastRun, RunSummary, UserState, prompt_key


def _as_gr_error(exc: Exception) -> gr.Error:
    if isinstance(exc, gr.Error):
        return exc
    if isinstance(exc, ValueError):
        return gr.Error(ui_message(exc), title="Please check the input", print_exception=False)
    if isinstance(exc, (DeviceMemoryError, DistributedError)):  # faults with a message of their own
        print(f"easyspec app: run failed: {exc}", file=sys.stderr)
        return gr.Error(f"{ui_message(exc)} The app is still running.", title="Run failed", print_exception=False)
    print(f"easyspec app: unexpected error\n{traceback.format_exc()}", file=sys.stderr)
    return gr.Error(f"The run failed: {type(exc).__name__}: {exc}. The app is still running; see the server "
                    f"log for details.", title="Run failed", print_exception=False)


def friendly(fn: Callable) -> Callable:
    """Wrap a plain handler: ValueError -> its message, anything else -> a short failure message."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            raise _as_gr_error(exc) from None

    return wrapper


def friendly_stream(fn: Callable) -> Callable:
    """The same for a streaming (generator) handler; Gradio must still see a generator function."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            yield from fn(*args, **kwargs)
        except GeneratorExit:
            raise
        except Exception as exc:
            raise _as_gr_error(exc) from None

    return wrapper


def named_inputs(values: dict) -> tuple[dict, UserState, str]:
    """An event's inputs, which Gradio passes by name (`inputs_kwargs`), as the handlers take them: the
    form's values, the user's state and the language of the switch."""
    form = dict(values)
    state = form.pop("state")
    lang = form.pop("lang", "en")
    return form, state, lang


STOPPED_IN_QUEUE = "Stopped before it started: the run was still waiting for the device."


def arm_stop(screen: str) -> Callable[[UserState], None]:
    """The Run button's first, unqueued step: arm the run's stop flag (UserState.arm)."""
    def arm(state: UserState) -> None:
        state.arm(screen)
    return arm


def stopped_in_queue(lang: str) -> dict:
    """What a handler shows when Stop came while its run waited in the device queue: the status line,
    every other output left as it was."""
    return {"status": tr(STOPPED_IN_QUEUE, lang)}


def dict_event(handler: Callable, outputs: Mapping[str, gr.components.Component]) -> Callable:
    """The event function of a handler that takes (values, state, lang) and returns or yields its outputs by
    name: Gradio's dict form, {component: value}, from `outputs` (name -> component). An output the handler
    leaves out keeps its value; the event passes its inputs by name (`inputs_kwargs`)."""
    if inspect.isgeneratorfunction(handler):
        def event(**inputs):
            for view in handler(*named_inputs(inputs)):
                yield by_component(view, outputs)
    else:
        def event(**inputs):
            return by_component(handler(*named_inputs(inputs)), outputs)
    return event


def by_component(view: Mapping, outputs: Mapping[str, gr.components.Component]) -> dict:
    """A handler's outputs by name as Gradio's dict form, {component: value}."""
    return {outputs[name]: value for name, value in view.items()}


def write_run_files(ctx: AppContext, live: LiveRun, settings: dict, prompt_ids, stem: str = "run") -> dict[str, str]:
    """The run as a replayable JSON Lines file and as a Chrome trace; returns kind -> path."""
    folder = ctx.new_files_dir()
    header = ctx.session.run_header(settings, prompt_ids, source="dashboard", label=live.label)
    run_path, trace_path = folder / f"{stem}.jsonl", folder / f"{stem}_trace.json"
    save_run(run_path, header, live.records)
    write_chrome_trace(trace_path, live.records, ctx.info.device)
    return {"run": str(run_path), "trace": str(trace_path)}


def write_trace(ctx: AppContext, records, stem: str = "trace") -> str:
    path = ctx.new_files_dir() / f"{stem}.json"
    write_chrome_trace(path, records, ctx.info.device)
    return str(path)


def keep_run(state: UserState, screen: str, source: str, live: LiveRun, prompt_ids, prompt: str, settings: dict,
             greedy: bool, files: dict[str, str] | None = None) -> None:
    """Record a finished run in the user's state (downloads, inspector, equality evidence)."""
    state.keep(screen, LastRun(live.label, live.mode, list(live.records), tuple(prompt_ids), settings, files or {}))
    state.remember(RunSummary(source, prompt_key(prompt_ids), prompt[:60], live.label, live.mode, greedy,
                              tuple(live.token_ids), complete=not live.stopped_early, prompt_ids=tuple(prompt_ids)))


def safe_stem(text: str) -> str:
    keep = "".join(c if c.isalnum() or c in "-_" else "_" for c in text)
    return keep.strip("_")[:60] or "run"


def file_size_ok(path: str | Path, limit_bytes: int, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what}: the uploaded file is missing; upload it again")
    size = path.stat().st_size
    if size > limit_bytes:
        raise ValueError(f"{what}: the file is {size / 1e6:.1f} MB; the limit is {limit_bytes / 1e6:.0f} MB")
    return path
