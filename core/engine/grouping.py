"""The layer plan of fuzzy drafting: which draft layers run sequentially and which in parallel groups.

A plan is a tuple of half-open layer ranges [start, end) that cover the draft's layers in order;
each range is one draft step (a range of one layer runs exactly). Two ways to get one:
- equal groups (docs/method.md#grouping): the first `head` and last `tail` layers run sequentially;
  the middle layers are cut into groups of N from the first middle layer on, and a shorter leftover
  group at the end still runs in parallel. N = 1 is ordinary sequential drafting.
- an explicit plan in the `--groups` notation, "0|1-4|5-8|...|23" (what the auto-tuner writes).
What it is not: the drafting itself (`decoder.py`, `engine.py`) or the search for a good plan
(`tuner/search.py`, `tuner/tune.py`).
"""
from __future__ import annotations

from ..settings import Group, SettingsError, SpecConfig, check_layer_parallel, default_layer_parallel, name


def layer_groups(n_layers: int, layer_parallel: int, head: int = 1, tail: int = 1) -> tuple[Group, ...]:
    """Half-open layer ranges [start, end) in execution order; raises SettingsError on a bad setting."""
    check_layer_parallel(layer_parallel, n_layers, head, tail)
    end = n_layers - tail
    groups = [(i, i + 1) for i in range(head)]
    groups += [(s, min(s + layer_parallel, end)) for s in range(head, end, layer_parallel)]
    groups += [(i, i + 1) for i in range(end, n_layers)]
    return tuple(groups)


def describe(groups: tuple[Group, ...]) -> str:
    """'0|1-4|5-8|9' style text of a plan (the notation of `--groups`)."""
    return "|".join(str(a) if b - a == 1 else f"{a}-{b - 1}" for a, b in groups)


def parse_plan(text: str, n_layers: int) -> tuple[Group, ...]:
    """Parse '0|1-4|5-8|...' into layer ranges; raises SettingsError saying what is wrong with the text."""
    where = f"{name('groups')} {text!r}"
    parts = [p.strip() for p in str(text).split("|")]
    if not text or not text.strip() or any(not p for p in parts):
        raise SettingsError("groups", f"{where}: write the draft's layers in order as groups separated by '|', "
                                      f"for example '0|1-4|5-8|...|{n_layers - 1}' (a group is 'a' or 'a-b')")
    groups, expect = [], 0
    for part in parts:
        ends = part.split("-")
        if len(ends) > 2 or not all(e.strip().isdigit() for e in ends):
            raise SettingsError("groups", f"{where}: group {part!r} is not a layer number or a range 'a-b'")
        a, b = int(ends[0]), int(ends[-1])
        if b < a:
            raise SettingsError("groups", f"{where}: group {part!r} runs backwards")
        if a != expect:
            what = "is missing" if a > expect else "appears twice"
            raise SettingsError("groups", f"{where}: layer {min(a, expect)} {what}; groups must cover layers "
                                          f"0..{n_layers - 1} in order, each once")
        if b >= n_layers:
            raise SettingsError("groups", f"{where}: layer {b} does not exist; the draft has layers 0..{n_layers - 1}")
        groups.append((a, b + 1))
        expect = b + 1
    if expect != n_layers:
        raise SettingsError("groups", f"{where}: layers {expect}..{n_layers - 1} are missing; groups must cover "
                                      f"layers 0..{n_layers - 1}")
    return tuple(groups)


def largest_group(groups: tuple[Group, ...]) -> int:
    return max(b - a for a, b in groups)


def plan_of(cfg: SpecConfig, n_layers: int) -> tuple[Group, ...]:
    """The layer plan that resolved settings (a RunPlan's, or a saved run's) describe: their plan text, else
    equal groups of their N."""
    if cfg.groups:
        return parse_plan(cfg.groups, n_layers)
    return layer_groups(n_layers, cfg.layer_parallel or default_layer_parallel(), cfg.sequential_head,
                        cfg.sequential_tail)
