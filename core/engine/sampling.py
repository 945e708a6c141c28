"""Turning logits into tokens, and lossless verification of drafted tokens.

Greedy: accept the longest prefix where draft token == argmax p, then emit argmax p (recovered at
the first mismatch, bonus after the last draft). Sampling (Leviathan et al. 2023, Chen et al. 2023):
accept draft x with probability min(1, p(x) / q(x)); on rejection sample from norm(max(p - q, 0));
if all k are accepted sample the bonus from p. Temperature, top-k and top-p shape both p and q.
What it is not: the round loop that drafts and calls these (`engine.py`) or tree verification
(`tree.py`).
"""
from __future__ import annotations

import torch

from ..settings import SamplingConfig

def probs(logits: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    """logits [T, V] -> probabilities [T, V] (fp32) after temperature, top-k, then top-p."""
    assert not cfg.greedy and logits.dim() == 2
    x = logits.float() / cfg.temperature
    if 0 < cfg.top_k < x.shape[-1]:
        kth = x.topk(cfg.top_k, dim=-1).values[:, -1:]  # [T, 1]
        x = x.masked_fill(x < kth, float("-inf"))
    if cfg.top_p < 1:
        sorted_x, order = x.sort(dim=-1, descending=True)
        sp = sorted_x.softmax(-1)
        # Keep the smallest prefix whose mass reaches top_p (the most likely token always stays).
        drop = (sp.cumsum(-1) - sp) >= cfg.top_p  # [T, V] in sorted order
        x = x.scatter(-1, order, sorted_x.masked_fill(drop, float("-inf")))
    return x.softmax(-1)


def pick(logits: torch.Tensor, cfg: SamplingConfig, gen: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One token from logits [1, V]: (token [1], probabilities [1, V] or None when greedy)."""
    if cfg.greedy:
        return logits.argmax(-1), None
    p = probs(logits, cfg)
    return torch.multinomial(p, 1, generator=gen)[:, 0], p


def verify_greedy(drafted: torch.Tensor, base_logits: torch.Tensor) -> tuple[int, int, list[int]]:
    """drafted [k], base_logits [k + 1, V] -> (accepted count a, token emitted after them, the drafted ids),
    computed on the device and read back in one device-to-host copy (the round's only one)."""
    k = drafted.numel()
    assert base_logits.shape[0] == k + 1, (drafted.shape, base_logits.shape)
    target = base_logits.argmax(-1)  # [k + 1]
    accepted = (target[:k] == drafted).int().cumprod(0).sum()  # [] on the device
    host = torch.cat([accepted[None], drafted, target]).tolist()  # [1 + k + (k + 1)]
    a = host[0]
    return a, host[1 + k + a], host[1: 1 + k]


def verify_sampling(drafted: torch.Tensor, q: torch.Tensor, p: torch.Tensor,
                    gen: torch.Generator | None) -> tuple[int, int]:
    """Rejection sampling. drafted [k], q [k, V] draft probs, p [k + 1, V] base probs -> (a, next token)."""
    k = drafted.numel()
    assert q.shape[0] == k and p.shape[0] == k + 1, (drafted.shape, q.shape, p.shape)
    idx = torch.arange(k, device=p.device)
    px, qx = p[idx, drafted], q[idx, drafted]  # [k]
    u = torch.rand(k, generator=gen, device=p.device)
    # Accept while u < p(x) / q(x), written without division: u * q(x) < p(x).
    accepted = int((u * qx < px).int().cumprod(0).sum()) if k else 0
    if accepted == k:
        return k, int(torch.multinomial(p[k], 1, generator=gen))
    residual = (p[accepted] - q[accepted]).clamp_min(0)
    if residual.sum() <= 0:  # p == q up to rounding: any sample from p is exact
        residual = p[accepted]
    return accepted, int(torch.multinomial(residual / residual.sum(), 1, generator=gen))
