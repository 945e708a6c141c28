"""Resolving a run's settings into its run plan: the one place where they meet the loaded models.

What it is: `plan_run`, which turns a `SpecConfig` and a prompt into a frozen `RunPlan` once per run:
N's default for the devices, the layer plan (equal groups of N, a typed plan, or the tuned plan for
"auto"), the calibration policy (the tuner's recommendation with a tuned plan unless the user chose
one), the expected acceptance from the tuning, and every limit checked against the models and devices.
`Session.plan` calls it with the session's models, devices and tuning; the tuner and the tests call
it directly with decoders of their own. Errors are `SettingsError`s that name their field.
What it is not: the settings themselves (`settings.py`), the tuner that produced the tuning
(`tuner/`), or the loop that runs the plan (`engine/loop.py`).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Sequence

from .engine.decoder import DecoderConfig
from .engine.grouping import describe, largest_group, plan_of
from .settings import (AUTO, DEFAULT_CALIBRATION, RunPlan, SettingsError, SpecConfig, default_layer_parallel,
                       middle_layers, name)


def plan_run(settings: SpecConfig, prompt_ids: Sequence[int], base, draft, devices: int = 1, tuning=None) -> RunPlan:
    """The run plan of `settings` for this prompt, base and draft (decoders or their DecoderConfigs; draft
    None without one), on `devices` devices, with the pair's tuning (tuner TuneResult) if any. Raises
    SettingsError (or ValueError) before any device work."""
    s, base, draft = settings, _config(base), _config(draft)
    if s.mode != "vanilla" and draft is None:
        raise SettingsError("mode", f"mode {s.mode} needs a draft model, and this session loaded none")
    n, groups, applied = s.layer_parallel, s.groups, []
    if s.mode == "easyspec":
        if groups == AUTO:
            if tuning is None:
                raise SettingsError("groups", "auto grouping: this model pair has not been tuned yet; run the tuner "
                                              "first (`easyspec tune`, or \"Tune the layer plan\" in the Pilot "
                                              "screen), or choose N or a plan")
            groups = tuning.plan
            applied.append(f"tuned plan {groups}")
        if not (groups or n):
            n = default_layer_parallel(devices, middle_layers(draft.n_layers, s.sequential_head, s.sequential_tail))
    calibration = s.calibration
    if calibration == AUTO:
        tuned = s.mode == "easyspec" and s.groups == AUTO and bool(tuning.policies)
        calibration = tuning.recommended_policy if tuned else DEFAULT_CALIBRATION
        if tuned:
            applied.append(f"tuned calibration {calibration}")
    resolved = replace(s, layer_parallel=n or default_layer_parallel(devices), groups=groups, calibration=calibration)
    layers = plan_of(resolved, draft.n_layers) if s.mode == "easyspec" else None
    size = largest_group(layers) if layers else 1
    if size > devices > 1:
        what = f"{name('layer_parallel')} {n}" if not groups else f"a group of {size} layers"
        raise SettingsError("groups" if groups else "layer_parallel",
                            f"{what} is more than the {devices} devices: across devices each layer of a group "
                            f"runs on its own device, so N <= G (groups of at most G layers)")
    resolved = replace(resolved, expected_acceptance=_expected(resolved, layers, tuning))
    check_prompt(prompt_ids, resolved, base, draft)
    return RunPlan(resolved, tuple(prompt_ids), layers, tuple(applied))


def _config(model) -> DecoderConfig | None:
    return getattr(model, "cfg", model)


def _expected(s: SpecConfig, layers, tuning) -> float:
    """The acceptance rate the run should reach, from the tuning (greedy only: the tuner measures that)."""
    if tuning is None or s.expected_acceptance > 0 or s.mode == "vanilla" or not s.sampling.greedy:
        return s.expected_acceptance
    if s.mode == "speculative":
        return tuning.baseline_rate
    return tuning.expected_rate(describe(layers), s.calibration)


def check_prompt(prompt_ids: Sequence[int], s: SpecConfig, base: DecoderConfig,
                 draft: DecoderConfig | None = None) -> None:
    """The prompt fits the base's context window with the new tokens; trees stay within sliding windows."""
    if len(prompt_ids) == 0:
        raise SettingsError("prompt", "the prompt is empty: give some text to continue")
    if len(prompt_ids) + s.max_new_tokens > base.max_position:
        raise SettingsError("max_new_tokens", f"the prompt ({len(prompt_ids)} tokens) plus "
                                              f"{name('max_new_tokens')} {s.max_new_tokens} exceeds the base "
                                              f"model's context window of {base.max_position} tokens")
    windows = [c.sliding_window for c in (base, draft) if c is not None and c.sliding_window]
    if s.tree and windows and len(prompt_ids) + s.max_new_tokens > min(windows):
        raise SettingsError("tree_depth", f"token trees do not support sliding-window attention: the prompt plus "
                                          f"{name('max_new_tokens')} must stay within the {min(windows)}-token "
                                          f"window")
    switches = [c.rope.original_max_position for c in (base, draft) if c is not None and c.rope.kind == "longrope"]
    if s.tree and switches and len(prompt_ids) + s.max_new_tokens > min(switches):
        raise SettingsError("tree_depth", f"token trees do not support passing longrope's original context: the "
                                          f"prompt plus {name('max_new_tokens')} must stay within {min(switches)} "
                                          f"tokens")
