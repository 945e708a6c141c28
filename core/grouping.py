"""The layer plan of fuzzy drafting: which draft layers run sequentially and which in parallel groups.

Convention (EASYSPEC.md, "Grouping"): the first `head` and last `tail` layers run sequentially;
the middle layers are cut into groups of N from the first middle layer on, and a shorter leftover
group at the end still runs in parallel. N = 1 is ordinary sequential drafting.
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
