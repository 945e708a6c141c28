"""The plan search: which layer plans are worth measuring, from the draft's own hidden states.

What it is: the similarity S[a, l] of layer inputs (what layer l's attention reads in a fuzzy group
starting at a, against what it reads exactly), the candidate plans it suggests (similarity
thresholds, and equal groups), and the moves of the boundary search (`neighbours`, `climb`,
`balanced`). What it is not: scoring a plan (`probe.py` predicts, `measure.py` measures) or the
order in which plans are searched and drafted (`tune.py`).
"""
from __future__ import annotations

from typing import Callable, Iterator, Sequence

import torch

from ..settings import Group, max_layer_parallel, middle_layers
from ..engine.decoder import Decoder, ForwardOptions
from ..engine.grouping import describe, layer_groups

EQUAL_SIZES = (2, 3, 4, 5, 6)


def layer_inputs(draft: Decoder, prompt_ids: Sequence[int]) -> torch.Tensor:
    """[L, T, D]: the input hidden state of every draft layer on an exact forward of the prompt."""
    taps: list[torch.Tensor] = []
    tokens = torch.tensor(list(prompt_ids), dtype=torch.long, device=draft.device)
    with torch.inference_mode():
        draft.forward(tokens, 0, draft.new_cache(len(prompt_ids)), ForwardOptions(logits=False, taps=taps))
    return torch.stack(taps).float()


def similarity(draft: Decoder, prompts: Sequence[Sequence[int]]) -> torch.Tensor:
    """S [L, L]: S[a, l] = mean cosine of RMSNorm_in_l(h_a) and RMSNorm_in_l(h_l) (a <= l), over all tokens."""
    n = draft.cfg.n_layers
    total, count = torch.zeros(n, n), 0
    w = draft.w.norm_in.float()  # [L, D]; the RMS scale itself cannot change a cosine
    if draft.cfg.norm_plus_one:  # Gemma scales by 1 + w
        w = 1.0 + w
    for ids in prompts:
        h = layer_inputs(draft, ids)  # [L, T, D]
        for l in range(n):
            x = h[: l + 1] * w[l]  # what layer l's attention reads from inputs h_0..h_l
            total[: l + 1, l] += torch.nn.functional.cosine_similarity(x, x[l:l + 1], dim=-1).sum(-1)
        count += h.shape[1]
    return total / count


def steps_of(plan: str) -> int:
    """Sequential draft steps of a plan written '0|1-4|5-8|9': its number of groups."""
    return plan.count("|") + 1


def similarity_plan(s: torch.Tensor, threshold: float, max_group: int) -> tuple[Group, ...]:
    """Grow each group from its first layer a while S[a, l] >= threshold and it has room."""
    n, groups, a = s.shape[0], [], 0
    while a < n:
        b = a + 1
        while b < n and b - a < max_group and s[a, b] >= threshold:
            b += 1
        groups.append((a, b))
        a = b
    return tuple(groups)


def candidate_plans(s: torch.Tensor, n_layers: int, max_group: int, thresholds: int) -> dict[str, str]:
    """Distinct plans (text -> origin), ordered by step count: equal groups first, then similarity."""
    plans: dict[str, str] = {}
    for size in EQUAL_SIZES:
        if size <= min(max_group, max_layer_parallel(n_layers)):
            plans.setdefault(describe(layer_groups(n_layers, size)), f"equal N={size}")
    pairs = torch.cat([s.diagonal(d) for d in range(1, min(max_group, n_layers))])
    for t in torch.quantile(pairs, torch.linspace(0.05, 0.95, thresholds)).tolist():
        plan = similarity_plan(s, t, max_group)
        if len(plan) < n_layers:
            plans.setdefault(describe(plan), f"similarity >= {t:.3f}")
    return dict(sorted(plans.items(), key=lambda kv: steps_of(kv[0])))


def neighbours(groups: Sequence[Group], max_group: int) -> Iterator[tuple[Group, ...]]:
    """The plans one boundary move away: one group gives its edge layer to its neighbour."""
    edges = [g[0] for g in groups] + [groups[-1][1]]
    for i in range(1, len(edges) - 1):
        for d in (-1, 1):
            moved = edges[:i] + [edges[i] + d] + edges[i + 1:]
            if all(1 <= b - a <= max_group for a, b in zip(moved, moved[1:])):
                yield tuple(zip(moved, moved[1:]))


def climb(score: Callable[[tuple[Group, ...]], float], start: tuple[Group, ...], max_group: int,
          budget: Callable[[], bool]) -> tuple[Group, ...]:
    """Take the first boundary move that improves the score, until none does or `budget()` says stop."""
    best, best_score, improved = start, score(start), True
    while improved:
        improved = False
        for n in neighbours(best, max_group):
            if not budget():
                return best
            if score(n) > best_score:
                best, best_score, improved = n, score(n), True
                break
    return best


def balanced(n_layers: int, steps: int, max_group: int) -> tuple[Group, ...] | None:
    """First and last layer alone, the rest in steps - 2 groups of near-equal size (larger ones later)."""
    middle, k = middle_layers(n_layers), steps - 2
    if k < 1 or middle < k or -(-middle // k) > max_group:
        return None
    sizes = [middle // k + (i >= k - middle % k) for i in range(k)]
    edges = [0, 1]
    for size in sizes:
        edges.append(edges[-1] + size)
    return tuple(zip(edges, edges[1:])) + ((n_layers - 1, n_layers),)
