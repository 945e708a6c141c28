"""Token trees: drafting a tree of continuations and verifying it with one base forward.

What it is: the data structure of one round's tree, how it grows by one level, the attention
inputs for the draft and base forwards (decoder.TreeAttention), and the two acceptance rules.
What it is not: the round loop (engine.py runs it, with the same fuzzy layer plan as a chain).

The root is the last committed token; nodes are numbered in creation order (parents first), and
node i's K/V sit in cache slot prefix + i. Two ways to build the tree:
- greedy decoding: every level expands the current leaves to their top-`width` children and keeps
  the `width` best new leaves by path probability under the draft (EAGLE-2 style pruning). The base
  accepts the longest root-to-node path whose every token is the base's argmax after its parent,
  then emits the base's argmax after the last accepted node (recovered, or bonus at a leaf).
  Equal to the base's own greedy decoding by construction.
- sampling: a deterministic top-k tree is not covered by the rejection-sampling proof, so the tree
  is built from i.i.d. samples instead: the root gets `width` children drawn with replacement from
  q(. | root), every deeper node one child drawn from its own q. The child counts are fixed before
  the children are drawn, which is what the proof needs. Verification is SpecInfer's multi-step
  speculative sampling (Miao et al., "SpecInfer", ASPLOS 2024, Algorithm 2): at the current node,
  try its children in order; child x is accepted with probability min(1, p(x) / q(x)); on rejection
  p <- norm(max(p - q, 0)); after all children are rejected sample from the residual p (recovered),
  at a node without children sample from p (bonus). The emitted tokens follow the base's
  distribution exactly (SpecInfer, Theorem 4.2).
"""
from __future__ import annotations

import torch

from .decoder import TreeAttention
from .sampling import probs
from ..settings import SamplingConfig


class DraftTree:
    """One round's tree. Tensors live on the device; nothing here syncs with the host."""

    def __init__(self, device: torch.device):
        self.device = device
        self.tokens = torch.empty(0, dtype=torch.long, device=device)  # [M] int64
        self.parents = torch.empty(0, dtype=torch.long, device=device)  # [M] int64, -1: child of the root
        self.depth = torch.empty(0, dtype=torch.long, device=device)  # [M] int64, 1: child of the root
        self.score = torch.empty(0, device=device)  # [M] fp32 log path probability (greedy trees)
        self.anc = torch.empty((0, 0), dtype=torch.bool, device=device)  # [M, M]: j is i or an ancestor of i
        self.levels: list[tuple[int, int]] = []  # node ranges [a, b) per depth
        self.q: list[torch.Tensor] = []  # sampled trees: q(. | root), then q(. | node i) per fed node, [V] each

    @property
    def size(self) -> int:
        return self.tokens.numel()

    def add_level(self, tokens: torch.Tensor, parents: torch.Tensor, score: torch.Tensor) -> None:
        """Append one level: tokens [m], parents [m] (node indices, -1 = root), score [m]."""
        assert tokens.shape == parents.shape == score.shape and tokens.dim() == 1, (tokens.shape, parents.shape)
        m, old = tokens.numel(), self.size
        new = old + m
        anc = torch.zeros((new, new), dtype=torch.bool, device=self.device)
        anc[:old, :old] = self.anc
        has_parent = parents >= 0
        rows = torch.zeros((m, old), dtype=torch.bool, device=self.device)
        if old:
            rows[has_parent] = self.anc[parents[has_parent]]  # a child sees what its parent sees ...
        anc[old:, :old] = rows
        anc[old:, old:] = torch.eye(m, dtype=torch.bool, device=self.device)  # ... and itself
        depth = torch.ones_like(tokens) if not old else torch.where(
            has_parent, self.depth[parents.clamp_min(0)] + 1, torch.ones_like(tokens))
        self.tokens = torch.cat([self.tokens, tokens])
        self.parents = torch.cat([self.parents, parents])
        self.depth = torch.cat([self.depth, depth])
        self.score = torch.cat([self.score, score])
        self.anc = anc
        self.levels.append((old, new))

    def draft_inputs(self, prefix: int) -> tuple[torch.Tensor, TreeAttention]:
        """The newest level as a draft forward: tokens [m] and their tree attention; every node
        fed so far sits in the draft cache after the `prefix` committed tokens."""
        a, b = self.levels[-1]
        return self.tokens[a:b], TreeAttention(prefix + self.depth[a:b] - 1, self.anc[a:b, :b])

    def verify_inputs(self, root: torch.Tensor, prefix: int) -> tuple[torch.Tensor, TreeAttention]:
        """Root (the last committed token, [1]) plus every node as one base forward; the root sits at
        position prefix - 1 (prefix = committed tokens), node i at prefix - 1 + depth."""
        m = self.size
        visible = torch.zeros((m + 1, m + 1), dtype=torch.bool, device=self.device)
        visible[:, 0] = True
        visible[1:, 1:] = self.anc
        positions = torch.cat([torch.zeros(1, dtype=torch.long, device=self.device), self.depth]) + prefix - 1
        return torch.cat([root, self.tokens]), TreeAttention(positions, visible)


def expand_greedy(tree: DraftTree, logits: torch.Tensor, width: int) -> torch.Tensor:
    """Add the next level from the draft logits [m, V] of the newest level (of the root when the tree
    is empty): top-`width` children per leaf, then the `width` best by path probability (global
    top-`width` of all candidates equals that). Returns the new nodes' own probabilities [width]."""
    logp = torch.log_softmax(logits.float(), dim=-1)  # [m, V]
    if tree.size:
        a, b = tree.levels[-1]
        parents_of_rows = torch.arange(a, b, device=tree.device)
        cand = tree.score[a:b, None] + logp  # [m, V] log path probabilities
    else:
        parents_of_rows = torch.full((1,), -1, dtype=torch.long, device=tree.device)
        cand = logp
    V = cand.shape[-1]
    best, flat = cand.flatten().topk(min(width, cand.numel()))  # [w]
    rows, tokens = flat // V, flat % V
    tree.add_level(tokens, parents_of_rows[rows], best)
    return logp[rows, tokens].exp()


def expand_sampled(tree: DraftTree, logits: torch.Tensor, width: int, cfg: SamplingConfig,
                   gen: torch.Generator | None) -> torch.Tensor:
    """Add the next level by sampling: `width` i.i.d. children of the root (with replacement), or one
    child per node of the newest level, from q = the draft's shaped probabilities of logits [m, V].
    Returns the new nodes' own probabilities under q [m']."""
    q = probs(logits, cfg)  # [m, V]
    if tree.size:
        a, b = tree.levels[-1]
        tokens = torch.multinomial(q, 1, generator=gen)[:, 0]  # [m]
        parents = torch.arange(a, b, device=tree.device)
        rows = torch.arange(b - a, device=tree.device)
    else:
        tokens = torch.multinomial(q[0], width, replacement=True, generator=gen)  # [w]
        parents = torch.full((width,), -1, dtype=torch.long, device=tree.device)
        rows = torch.zeros(width, dtype=torch.long, device=tree.device)
    tree.q.extend(q.unbind(0))  # q(. | root) first, then one per node in node order
    own = q[rows, tokens]
    tree.add_level(tokens, parents, torch.zeros_like(own))
    return own


def _children(parents: list[int]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for i, par in enumerate(parents):
        out.setdefault(par, []).append(i)
    return out


def accept_greedy(tree: DraftTree, base_logits: torch.Tensor) -> tuple[list[int], int]:
    """base_logits [M + 1, V] (row 0: the root, row i + 1: node i) -> (accepted path as node indices,
    the base's argmax after the last accepted node)."""
    assert base_logits.shape[0] == tree.size + 1, (base_logits.shape, tree.size)
    target = base_logits.argmax(-1).tolist()  # [M + 1]
    tokens, children = tree.tokens.tolist(), _children(tree.parents.tolist())
    path, cur = [], -1
    while True:
        nxt = next((c for c in children.get(cur, ()) if tokens[c] == target[cur + 1]), None)
        if nxt is None:
            return path, target[cur + 1]
        path.append(nxt)
        cur = nxt


def accept_sampling(tree: DraftTree, p: torch.Tensor, gen: torch.Generator | None) -> tuple[list[int], int]:
    """Multi-step speculative sampling over the tree (SpecInfer, Algorithm 2). p [M + 1, V]: the base's
    shaped probabilities at the root and at every node -> (accepted path, next token)."""
    assert p.shape[0] == tree.size + 1, (p.shape, tree.size)
    tokens, children = tree.tokens.tolist(), _children(tree.parents.tolist())
    path, cur = [], -1
    while True:
        kids = children.get(cur, [])
        dist = p[cur + 1]
        if not kids:  # a leaf: the bonus token comes from p itself
            return path, int(torch.multinomial(dist, 1, generator=gen))
        q = tree.q[cur + 1]  # the distribution every child of `cur` was drawn from
        for c in kids:
            x = tokens[c]
            u = float(torch.rand(1, generator=gen, device=p.device))
            if u * float(q[x]) < float(dist[x]):  # accept with probability min(1, p(x) / q(x))
                break
            residual = (dist - q).clamp_min(0)
            # p == q up to rounding leaves no residual mass: p itself is then the exact residual
            dist = residual / residual.sum() if residual.sum() > 0 else dist
        else:
            return path, int(torch.multinomial(dist, 1, generator=gen))
        path.append(c)
        cur = c
