"""Turning the dashboard's inputs into engine settings, with messages a person can act on.

Each screen's handler gets its inputs as one dict of values by name; the run settings among them are
named as `spec_config` names its keywords (`RUN_SETTINGS`), and turned into a `SpecConfig` here only.
Inputs arrive from the browser or from `gradio_client` scripts, so any of them may be missing,
of the wrong type or out of range: each is checked here and a `ValueError` says which field is
wrong, in the dashboard's own words (not the command line's flag names).
"""
from __future__ import annotations

import inspect
import math
from typing import Mapping

from easyspec.core.settings import CALIBRATION_CHOICES, MODES, SamplingConfig, SettingsError, SpecConfig

MAX_NEW_TOKENS_LIMIT = 2048
MAX_DRAFT_LEN = 16
MAX_TREE_DEPTH = 8
MAX_TREE_WIDTH = 8
MAX_PROMPT_CHARS = 20_000
# The dashboard's name of each run setting (SettingsError.field), as its labels say it.
LABELS = {"mode": "mode", "layer_parallel": "layer-parallel size N", "draft_len": "draft length k",
          "max_new_tokens": "max new tokens", "temperature": "temperature", "top_p": "top-p", "top_k": "top-k",
          "seed": "seed", "sequential_head": "sequential head layers", "sequential_tail": "sequential tail layers",
          "groups": "layer plan", "tree_depth": "tree depth", "tree_width": "tree width",
          "calibration": "calibration policy", "adaptive": "adaptive draft length", "stop_strings": "stop strings",
          "on_low_acceptance": "on low acceptance", "draft_dtype": "draft precision", "prompt": "the prompt"}


def ui_message(exc: Exception) -> str:
    """An error's message in the dashboard's words: a SettingsError names its fields by their labels."""
    return exc.render(LABELS) if isinstance(exc, SettingsError) else str(exc)


def as_int(value, name: str, lo: int | None = None, hi: int | None = None) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        n = value  # exact: a float would round a large seed
    else:
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a whole number; got {value!r}") from None
        if not math.isfinite(f) or f != int(f):  # int(inf) and int(nan) would raise Python's own errors
            raise ValueError(f"{name} must be a whole number; got {value!r}")
        n = int(f)
    if lo is not None and n < lo or hi is not None and n > hi:
        raise ValueError(f"{name} must be between {lo} and {hi}; got {n}")
    return n


def as_float(value, name: str) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number; got {value!r}") from None
    if not math.isfinite(x):
        raise ValueError(f"{name} must be a finite number; got {value!r}")
    return x


def check_prompt_text(prompt) -> str:
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("the prompt is empty: type some text to continue")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ValueError(f"the prompt has {len(prompt)} characters; the limit is {MAX_PROMPT_CHARS}")
    return prompt


def as_bool(value, name: str) -> bool:
    if value is None or isinstance(value, bool):
        return bool(value)
    raise ValueError(f"{name} must be true or false; got {value!r}")


def check_choice(value, name: str, choices) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(str, choices))}; got {value!r}")
    return value


GROUPINGS = ("equal groups of N", "auto (tuned)", "custom plan")


def groups_text(grouping, plan) -> str:
    """SpecConfig.groups from the grouping choice: '' (equal groups of N), 'auto' or the typed plan."""
    grouping = check_choice(grouping, "layer grouping", GROUPINGS)
    if grouping == GROUPINGS[1]:
        return "auto"
    if grouping == GROUPINGS[2]:
        if not isinstance(plan, str) or not plan.strip():
            raise ValueError("custom plan is empty: write the draft's layers as groups, e.g. '0|1-4|5-8|...'")
        return plan.strip()
    return ""


def spec_config(mode, layer_parallel, calibration, draft_len, temperature, top_p, top_k, seed,
                max_new_tokens, grouping=GROUPINGS[0], plan="", tree_depth=0, tree_width=4, adaptive=False) -> SpecConfig:
    """A validated SpecConfig from raw input values (ValueError with a field name otherwise)."""
    try:
        sampling = SamplingConfig(temperature=as_float(temperature, "temperature"), top_p=as_float(top_p, "top-p"),
                                  top_k=as_int(top_k, "top-k", 0, 10**6), seed=as_int(seed, "seed", 0, 2**63 - 1))
        return SpecConfig(mode=check_choice(mode, "mode", MODES),
                          layer_parallel=as_int(layer_parallel, "layer-parallel size N", 1, 64),
                          calibration=check_choice(calibration, "calibration policy", CALIBRATION_CHOICES),
                          draft_len=as_int(draft_len, "draft length k", 1, MAX_DRAFT_LEN),
                          max_new_tokens=as_int(max_new_tokens, "max new tokens", 1, MAX_NEW_TOKENS_LIMIT),
                          sampling=sampling, groups=groups_text(grouping, plan),
                          tree_depth=as_int(tree_depth, "tree depth", 0, MAX_TREE_DEPTH),
                          tree_width=as_int(tree_width, "tree width", 1, MAX_TREE_WIDTH),
                          adaptive=as_bool(adaptive, "adaptive draft length"))
    except ValueError as exc:
        raise ValueError(ui_message(exc)) from None


# The dashboard's run settings by name: spec_config's keywords, so that the panels' components, the handlers'
# values and the conversion all use one set of names (the API's parameter names too).
RUN_SETTINGS = tuple(inspect.signature(spec_config).parameters)


def run_settings(values: Mapping) -> dict:
    """The run settings among a form's values (the prompt, the state and the rest left out), for spec_config."""
    return {name: values[name] for name in RUN_SETTINGS if name in values}


def describe_config(cfg: SpecConfig) -> str:
    """A short label: 'easyspec N=4 every-round k=5', 'speculative k=5', 'vanilla'."""
    if cfg.mode == "vanilla":
        text = "vanilla"
    elif cfg.mode == "speculative":
        text = f"speculative k={cfg.draft_len}"
    elif cfg.groups:
        text = f"easyspec plan {cfg.groups} {cfg.calibration} k={cfg.draft_len}"
    else:
        text = f"easyspec N={cfg.layer_parallel} {cfg.calibration} k={cfg.draft_len}"
    if cfg.tree:
        text = f"{text.rsplit(' k=', 1)[0]} tree {cfg.tree_depth}x{cfg.tree_width}"
    if cfg.adaptive and cfg.mode != "vanilla":
        text += " adaptive"
    s = cfg.sampling
    return text if s.greedy else f"{text} T={s.temperature:g}"
