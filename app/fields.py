"""Input checks that name the field: Gradio's own checks of sliders, numbers and choices, reworded.

Gradio checks a slider's range or a radio's choices before a handler runs, and says only
"Value 70 is greater than maximum value 6." (or, for a value that is not a number at all, nothing
useful). Requests from `gradio_client` scripts reach those checks as easily as clicks do, so each
checked component of the dashboard reports its own label and what it accepts instead.
"""
from __future__ import annotations

import functools
import math

import gradio as gr

CHECKED = (gr.Slider, gr.Number, gr.Radio, gr.Dropdown, gr.CheckboxGroup)


def _allowed(component) -> list:
    return [value for _, value in component.choices]


def field_message(component, payload) -> str:
    """What is wrong with `payload` for `component`, in the dashboard's words."""
    name = component.label or "a field"
    if isinstance(component, (gr.Radio, gr.Dropdown, gr.CheckboxGroup)):
        allowed = ", ".join(map(str, _allowed(component)))
        if isinstance(component, gr.CheckboxGroup):
            return f"{name}: every ticked value must be one of {allowed}; got {payload!r}"
        return f"{name} must be one of {allowed}; got {payload!r}"
    lo, hi = component.minimum, component.maximum
    if isinstance(payload, bool) or not isinstance(payload, (int, float)):
        return f"{name} must be a number; got {payload!r}"
    if not math.isfinite(payload):  # NaN passes the range check; rounding it (precision 0) fails
        return f"{name} must be a finite number; got {payload!r}"
    if lo is not None and hi is not None:
        return f"{name} must be between {lo:g} and {hi:g}; got {payload:g}"
    if lo is not None:
        return f"{name} must be at least {lo:g}; got {payload:g}"
    return f"{name} must be at most {hi:g}; got {payload:g}"


def name_input_errors(demo: gr.Blocks) -> None:
    """Wrap the input check (preprocess) of every slider, number and choice component of `demo`."""
    for block in demo.blocks.values():
        if isinstance(block, CHECKED) and getattr(block, "interactive", None) is not False:
            block.preprocess = _checked(block, block.preprocess)


def _checked(component, preprocess):
    @functools.wraps(preprocess)
    def wrapper(payload):
        try:
            return preprocess(payload)
        except Exception:
            raise gr.Error(field_message(component, payload), title="Please check the input",
                           print_exception=False) from None

    return wrapper
