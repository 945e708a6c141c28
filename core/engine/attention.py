"""Attention of new tokens over the KV cache: which path each step shape takes, and the SDPA call.

What it is: the one place that decides how `scaled_dot_product_attention` is called, so that no step
falls back to torch's math kernel (fp32 scores, K/V expanded to every head, the full T x S matrix).
Paths (`attention_path`; docs/conventions.md#attention-kernels says which kernel each runs on CPU and CUDA):
- `decode`: one new token (a decode step, a draft step, a one-token calibration). No mask: a sliding
  layer reads only its window's keys.
- `causal`: several tokens into an empty cache (prefill). `is_causal=True`, no mask materialised, and
  grouped-query heads through `enable_gqa` (the kernel reads each K/V head once per group).
- `masked`: several tokens after a prefix (verification, calibration, a sliding-window prefill): a
  boolean mask over only the keys some query sees, chunked along the query (CHUNK rows at a time), so a
  mask is at most CHUNK x (window or S).
- `tree`: token-tree drafting and verification: the tree's own [T, S] mask (tree.py).
Without a causal flag (every path but `causal`) the query heads that share a KV head are folded into the
query axis: q [N, Hq, T, hd] -> [N, Hkv, rep * T, hd], the mask repeated rep times along its rows. That is
exact (each row still attends to its own KV head) and needs neither K/V expansion nor `enable_gqa`, which
CUDA's memory-efficient kernel (the one that takes a mask) lacks.
What it is not: the projections, RoPE or cache writes (decoder.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

CHUNK = 1024  # rows per call on long inputs: bounds a mask (and softcapped scores) to CHUNK x S, and the MLP's
# intermediates (decoder.py) to CHUNK x 2F
PATHS = ("decode", "causal", "masked", "tree")


def attention_path(n_new: int, pos: int, window: int | None = None, tree: bool = False,
                   softcap: bool = False, causal_kernel: bool = True) -> str:
    """The path of `n_new` tokens written at cache slots pos..pos+n_new-1 of a layer with sliding `window`
    (None: full attention), in a token tree or not. Softcapped scores (Gemma 2) have no fused causal path;
    causal_kernel False: the device has no fused causal kernel for these heads (`has_causal_kernel`)."""
    assert n_new >= 1 and pos >= 0, (n_new, pos)
    if tree:
        return "tree"
    if n_new == 1:
        return "decode"
    if pos == 0 and (window is None or n_new <= window) and not softcap and causal_kernel:
        return "causal"
    return "masked"


def has_causal_kernel(device: torch.device, dtype: torch.dtype, grouped: bool) -> bool:
    """Whether is_causal runs fused: on the CPU always; on CUDA with grouped-query heads only in half precision
    (flash and cuDNN take GQA, fp32's memory-efficient kernel does not, so fp32 takes the masked path)."""
    return device.type != "cuda" or not grouped or dtype in (torch.float16, torch.bfloat16)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: int, scale: float, window: int | None = None,
           tree_mask: torch.Tensor | None = None, softcap: float | None = None) -> torch.Tensor:
    """q [N, Hq, T, hd] of the tokens at slots pos..pos+T-1; k, v [N, Hkv, pos + T, hd] (the cache up to
    them); tree_mask [T, pos + T] bool (a token tree) or None (causal, within `window`) -> [N, Hq, T, hd]."""
    n, hq, t, hd = q.shape
    assert k.shape[2] == pos + t and hq % k.shape[1] == 0, (q.shape, k.shape, pos)
    grouped = hq != k.shape[1]
    path = attention_path(t, pos, window, tree_mask is not None, softcap is not None,
                          has_causal_kernel(q.device, q.dtype, grouped))
    if path == "causal":
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=grouped)
    if path == "decode":
        lo = 0 if window is None else max(0, pos + 1 - window)
        return _folded(q, k[:, :, lo:], v[:, :, lo:], None, scale, softcap)
    if path == "tree":
        return _folded(q, k, v, tree_mask.to(q.device, torch.bool), scale, softcap)
    out = []
    for a in range(0, t, CHUNK):  # masked: query rows a..b-1 see keys lo..end-1, causal within the window
        b = min(t, a + CHUNK)
        end = pos + b
        lo = 0 if window is None else max(0, pos + a + 1 - window)
        qpos = torch.arange(pos + a, end, device=q.device)[:, None]
        kpos = torch.arange(lo, end, device=q.device)[None, :]
        mask = kpos <= qpos if window is None else (kpos <= qpos) & (kpos > qpos - window)  # [b - a, end - lo]
        out.append(_folded(q[:, :, a:b], k[:, :, lo:end], v[:, :, lo:end], mask, scale, softcap))
    return out[0] if len(out) == 1 else torch.cat(out, dim=2)


def _folded(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float,
            softcap: float | None) -> torch.Tensor:
    """Grouped-query attention with each KV head's query heads folded into the query axis: q [N, Hq, T, hd],
    k/v [N, Hkv, S, hd], mask [T, S] bool or None (all visible) -> [N, Hq, T, hd]."""
    n, hq, t, hd = q.shape
    rep = hq // k.shape[1]
    qf = q.reshape(n, k.shape[1], rep * t, hd)  # heads h * rep .. h * rep + rep - 1 read KV head h
    mf = mask if mask is None or rep == 1 else mask.repeat(rep, 1)  # [rep * T, S]: row r * T + i is query i
    if softcap is None:
        o = F.scaled_dot_product_attention(qf, k, v, attn_mask=mf, scale=scale)
    else:
        o = _softcapped(qf, k, v, mf, scale, softcap)
    return o.view(n, hq, t, hd)


def _softcapped(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float,
                cap: float) -> torch.Tensor:
    """Attention with tanh-capped scores (Gemma 2), as transformers' eager path: q [N, H, T, hd], k/v [N, H, S, hd],
    mask [T, S] bool or None -> [N, H, T, hd]."""
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale  # [N, H, T, S]
    scores = torch.tanh(scores / cap) * cap
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.matmul(scores.softmax(-1, dtype=torch.float32).to(q.dtype), v)
