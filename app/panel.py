"""The run-settings panel: the one definition of the components that set a run, shared by the screens.

Each builder returns its components by the names `spec_config` takes (`settings.RUN_SETTINGS`): the
screens pass them to Gradio as `inputs_kwargs`, so a handler gets one plain dict of values by name and
the API's parameters carry the same names. Generate shows every setting; each Compare column a reduced
set (`COLUMN_SETTINGS`, its names suffixed with the column's number); the Pilot screen its grid's axes
(N, calibration, k, draft precision), each a set of ticked values under the name `pilot_tab.make_grid` reads.
What it is not: the checks and the conversion to a `SpecConfig` (`settings.py`) or any handler.
"""
from __future__ import annotations

from typing import Mapping

import gradio as gr

from easyspec.core.i18n import msg
from easyspec.core.settings import CALIBRATION_CHOICES, CALIBRATION_POLICIES, DRAFT_DTYPES, MODES

from .context import AppContext
from .settings import GROUPINGS, MAX_TREE_DEPTH, MAX_TREE_WIDTH, RUN_SETTINGS

WIDE = 220  # px: a slider narrower than this squeezes its label (Japanese ones most) into a column
COLUMN_SETTINGS = ("mode", "layer_parallel", "calibration", "draft_len", "grouping")  # per Compare column
AUTO = GROUPINGS[1]  # "auto (tuned)": the tuned plan, ticked next to the N values of the Pilot grid
Panel = dict[str, gr.components.Component]  # run setting name -> its component


def settings_panel(ctx: AppContext, prefix: str, max_new_tokens: int = 64) -> Panel:
    """Every run setting (Generate); `prefix` starts each element id."""
    n_max = ctx.max_layer_parallel
    n_info = (msg("consecutive draft layers run as one parallel group (1..{n} middle layers)", n=n_max)
              if ctx.info.devices == 1 else f"N <= G = {ctx.info.devices} devices")
    mode = gr.Radio(list(MODES), value="easyspec", label="mode", elem_id=f"{prefix}-mode")
    grouping = gr.Radio(list(GROUPINGS), value=GROUPINGS[0], label="layer grouping",
                        info="auto: the plan the tuner chose for this pair (Pilot screen, \"Tune the layer plan\")",
                        elem_id=f"{prefix}-grouping")
    n = gr.Slider(1, n_max, value=ctx.default_layer_parallel, step=1, label="layer-parallel size N", info=n_info,
                  elem_id=f"{prefix}-n")
    placeholder = msg("e.g. 0|1-4|5-8|...|{last}", last=ctx.info.draft_layers - 1) if ctx.info.draft_layers else ""
    plan = gr.Textbox("", label="custom plan", placeholder=placeholder,
                      info="draft layers in order; a group 'a-b' runs in parallel", visible=False, elem_id=f"{prefix}-plan")
    grouping.change(lambda g: (gr.update(visible=g == GROUPINGS[0]), gr.update(visible=g == GROUPINGS[2])),
                    grouping, [n, plan], queue=False, api_visibility="private", show_progress="hidden")
    calibration = gr.Radio(list(CALIBRATION_CHOICES), value="auto", label="calibration policy",
                           info="auto: the tuner's recommended policy with the auto plan, else every-round",
                           elem_id=f"{prefix}-calibration")
    k = gr.Slider(1, 12, value=5, step=1, label="draft length k", elem_id=f"{prefix}-k")
    with gr.Row():
        tree_depth = gr.Slider(0, MAX_TREE_DEPTH, value=0, step=1, label="tree depth (0 = chain of k)",
                               info="draft a token tree, verified in one base forward", elem_id=f"{prefix}-tree-depth",
                               min_width=WIDE)
        tree_width = gr.Slider(1, MAX_TREE_WIDTH, value=4, step=1, label="tree width",
                               info="leaves kept per tree level", elem_id=f"{prefix}-tree-width", min_width=WIDE)
    adaptive = gr.Checkbox(False, label="adaptive draft length / tree depth", elem_id=f"{prefix}-adaptive",
                           info="+2 after a fully accepted round, -1 after a rejection, stop when the draft is unsure")
    with gr.Row():
        temperature = gr.Slider(0, 2, value=0, step=0.05, label="temperature (0 = greedy)",
                                elem_id=f"{prefix}-temperature", min_width=WIDE)
        top_p = gr.Slider(0.05, 1, value=1, step=0.05, label="top-p", elem_id=f"{prefix}-top-p", min_width=WIDE)
    with gr.Row():
        top_k = gr.Number(0, label="top-k (0 = off)", precision=0, minimum=0, elem_id=f"{prefix}-top-k")
        seed = gr.Number(0, label="seed", precision=0, minimum=0, elem_id=f"{prefix}-seed")
    new = gr.Slider(1, ctx.max_new_tokens, value=min(max_new_tokens, ctx.max_new_tokens), step=1,
                    label="max new tokens", elem_id=f"{prefix}-max-new")
    panel = dict(mode=mode, layer_parallel=n, calibration=calibration, draft_len=k, temperature=temperature,
                 top_p=top_p, top_k=top_k, seed=seed, max_new_tokens=new, grouping=grouping, plan=plan,
                 tree_depth=tree_depth, tree_width=tree_width, adaptive=adaptive)
    assert tuple(panel) == RUN_SETTINGS, "the panel offers every run setting spec_config takes"
    return panel


def column_panel(ctx: AppContext, column: int, mode: str, layer_parallel: int, calibration: str,
                 draft_len: int) -> Panel:
    """One Compare column's settings (`COLUMN_SETTINGS`), compact, under the names `column_values` reads."""
    n_max = ctx.max_layer_parallel
    m = gr.Dropdown(list(MODES), value=mode, label=msg("column {c}: mode", c=column), elem_id=f"cmp-mode-{column}")
    with gr.Row():
        n = gr.Slider(1, n_max, value=min(layer_parallel, n_max), step=1, label="N")
        k = gr.Slider(1, 12, value=draft_len, step=1, label="k")
    cal = gr.Dropdown(list(CALIBRATION_CHOICES), value=calibration, label="calibration")
    grouping = gr.Dropdown(list(GROUPINGS[:2]), value=GROUPINGS[0], label="layer grouping",
                           elem_id=f"cmp-grouping-{column}")
    panel = dict(mode=m, layer_parallel=n, calibration=cal, draft_len=k, grouping=grouping)
    return {f"{name}_{column}": panel[name] for name in COLUMN_SETTINGS}


def grid_panel(ctx: AppContext) -> Panel:
    """The Pilot grid's axes: each a set of ticked values (a list), every combination one setting."""
    n_max = ctx.max_layer_parallel
    n_choices = [*sorted({n for n in (1, 2, 3, 4, 5, 6, 8) if n <= n_max} | {n_max}), AUTO]
    layer_parallel = gr.CheckboxGroup(n_choices, value=[n for n in (2, 4) if n <= n_max] or [1],
                                      label="layer-parallel size N", elem_id="pilot-n")
    calibration = gr.CheckboxGroup(list(CALIBRATION_POLICIES), value=["none", "every-round"],
                                   label="calibration policy", elem_id="pilot-calibration")
    draft_len = gr.CheckboxGroup([3, 5, 7], value=[5], label="draft length k", elem_id="pilot-k")
    draft_dtypes = gr.CheckboxGroup(list(DRAFT_DTYPES), value=[], label="draft precision",
                                    info="none ticked: the session's own; each ticked precision runs every "
                                         "drafting setting again", elem_id="pilot-draft-dtypes")
    contexts = gr.CheckboxGroup([("as given", 0), ("256", 256), ("2k", 2048), ("8k", 8192)], value=[0],
                                label="prompt length (tokens)",
                                info="each ticked length runs every setting again, the prompts placed after a shared "
                                     "document (this package's source code) to that many tokens",
                                elem_id="pilot-contexts")
    return dict(layer_parallel=layer_parallel, calibration=calibration, draft_len=draft_len, draft_dtypes=draft_dtypes,
                contexts=contexts)


def column_values(values: Mapping, column: int) -> dict:
    """Column `column`'s settings among a Compare form's values, by spec_config's names (those given)."""
    return {name: values[f"{name}_{column}"] for name in COLUMN_SETTINGS if f"{name}_{column}" in values}
