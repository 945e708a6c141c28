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

from .decoder import Group


def layer_groups(n_layers: int, layer_parallel: int, head: int = 1, tail: int = 1) -> tuple[Group, ...]:
    """Half-open layer ranges [start, end) in execution order; raises ValueError on a bad setting."""
    if head < 0 or tail < 0:
        raise ValueError(f"--sequential-head and --sequential-tail must be >= 0 (got {head} and {tail})")
    middle = n_layers - head - tail
    if middle < 1:
        raise ValueError(f"--sequential-head {head} and --sequential-tail {tail} leave no middle layers "
                         f"in a draft of {n_layers} layers")
    if not 1 <= layer_parallel <= middle:
        raise ValueError(f"--layer-parallel must be between 1 and the number of middle layers ({middle} "
                         f"for a {n_layers}-layer draft with head {head} and tail {tail}); got {layer_parallel}")
    groups = [(i, i + 1) for i in range(head)]
    groups += [(s, min(s + layer_parallel, head + middle)) for s in range(head, head + middle, layer_parallel)]
    groups += [(i, i + 1) for i in range(head + middle, n_layers)]
    return tuple(groups)


def describe(groups: tuple[Group, ...]) -> str:
    """'0|1-4|5-8|9' style text of a plan (the notation of `--groups`)."""
    return "|".join(str(a) if b - a == 1 else f"{a}-{b - 1}" for a, b in groups)


def parse_plan(text: str, n_layers: int) -> tuple[Group, ...]:
    """Parse '0|1-4|5-8|...' into layer ranges; raises ValueError saying what is wrong with the text."""
    where = f"--groups {text!r}"
    parts = [p.strip() for p in str(text).split("|")]
    if not text or not text.strip() or any(not p for p in parts):
        raise ValueError(f"{where}: write the draft's layers in order as groups separated by '|', "
                         f"for example '0|1-4|5-8|...|{n_layers - 1}' (a group is 'a' or 'a-b')")
    groups, expect = [], 0
    for part in parts:
        ends = part.split("-")
        if len(ends) > 2 or not all(e.strip().isdigit() for e in ends):
            raise ValueError(f"{where}: group {part!r} is not a layer number or a range 'a-b'")
        a, b = int(ends[0]), int(ends[-1])
        if b < a:
            raise ValueError(f"{where}: group {part!r} runs backwards")
        if a != expect:
            what = "is missing" if a > expect else "appears twice"
            raise ValueError(f"{where}: layer {min(a, expect)} {what}; groups must cover layers 0..{n_layers - 1} "
                             f"in order, each once")
        if b >= n_layers:
            raise ValueError(f"{where}: layer {b} does not exist; the draft has layers 0..{n_layers - 1}")
        groups.append((a, b + 1))
        expect = b + 1
    if expect != n_layers:
        raise ValueError(f"{where}: layers {expect}..{n_layers - 1} are missing; groups must cover layers "
                         f"0..{n_layers - 1}")
    return tuple(groups)


def largest_group(groups: tuple[Group, ...]) -> int:
    return max(b - a for a, b in groups)
