"""Attention paths (core/engine/attention.py): which path each step shape takes, that the decoder's steps call
SDPA that way (no materialised mask in a prefill, grouped-query heads never expanded), that every path runs
on torch's fused CPU kernel with the math fallback switched off, and that every path equals plain attention."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from easyspec.core.engine import attention
from easyspec.core.engine.attention import attend, attention_path, has_causal_kernel
from easyspec.core.engine.decoder import ForwardOptions, TreeAttention


def test_each_step_shape_takes_its_path():
    assert attention_path(1, 40) == "decode"  # decode step, draft step, one-token calibration
    assert attention_path(1, 0) == "decode"
    assert attention_path(300, 0) == "causal"  # prefill
    assert attention_path(6, 40) == "masked"  # verification of 5 drafts, calibration of 6 tokens
    assert attention_path(300, 0, window=64) == "masked"  # a sliding layer's prefill past its window
    assert attention_path(64, 0, window=64) == "causal"  # ... within it
    assert attention_path(1, 500, window=64) == "decode"
    assert attention_path(7, 40, tree=True) == "tree"  # tree drafting and tree verification
    assert attention_path(1, 40, tree=True) == "tree"
    assert attention_path(300, 0, softcap=True) == "masked"  # Gemma 2: no fused causal path with capped scores
    assert attention_path(300, 0, causal_kernel=False) == "masked"
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert has_causal_kernel(cpu, torch.float32, True) and has_causal_kernel(cuda, torch.bfloat16, True)
    assert not has_causal_kernel(cuda, torch.float32, True) and has_causal_kernel(cuda, torch.float32, False)


def reference(q, k, v, pos, scale, window=None, mask=None, softcap=None):
    """Plain attention: K/V expanded to every head, the full [T, S] mask."""
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    t, s = q.shape[2], k.shape[2]
    if mask is None:
        qpos, kpos = torch.arange(pos, pos + t)[:, None], torch.arange(s)[None, :]
        mask = (kpos <= qpos) & (kpos > qpos - window if window else True)
    scores = q @ k.transpose(-1, -2) * scale
    if softcap:
        scores = torch.tanh(scores / softcap) * softcap
    return scores.masked_fill(~mask, float("-inf")).softmax(-1) @ v


@pytest.mark.parametrize("t,pos,window,tree,softcap", [
    (1, 0, None, False, None), (1, 37, None, False, None), (1, 37, 8, False, None), (45, 0, None, False, None),
    (45, 0, 8, False, None), (6, 37, None, False, None), (6, 37, 8, False, None), (45, 0, None, False, 5.0),
    (6, 37, None, True, None), (6, 37, None, True, 5.0)])
def test_every_path_equals_plain_attention(monkeypatch, t, pos, window, tree, softcap):
    monkeypatch.setattr(attention, "CHUNK", 16)  # several query chunks in the masked paths
    g = torch.Generator().manual_seed(t + pos)
    q = torch.randn(2, 6, t, 16, generator=g)  # N = 2 layers, 6 query heads over 2 KV heads
    k, v = torch.randn(2, 2, pos + t, 16, generator=g), torch.randn(2, 2, pos + t, 16, generator=g)
    mask = None
    if tree:
        mask = torch.ones(t, pos + t, dtype=torch.bool)
        mask[:, pos:] = torch.rand(t, t, generator=g) < 0.5
        mask[:, pos:] |= torch.eye(t, dtype=torch.bool)
    out = attend(q, k, v, pos, 0.25, window, mask, softcap)
    torch.testing.assert_close(out, reference(q, k, v, pos, 0.25, window, mask, softcap), atol=1e-5, rtol=1e-5)


def test_the_decoder_calls_sdpa_on_each_path(decoders, monkeypatch):
    """Prefill: is_causal and enable_gqa, no mask; decode: no mask, query heads folded onto the KV heads;
    verification and trees: a compact mask over the folded rows. K/V always keep their KV heads."""
    base, _ = decoders["qwen2"]
    hq, hkv = base.cfg.n_heads, base.cfg.n_kv_heads
    assert hq > hkv
    calls = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, is_causal=False, scale=None, enable_gqa=False):
        calls.append((q.shape[1], q.shape[2], k.shape[1], None if attn_mask is None else tuple(attn_mask.shape),
                      is_causal, enable_gqa))
        return real(q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=scale, enable_gqa=enable_gqa)

    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", spy)
    rep = hq // hkv
    cache = base.new_cache(64)
    with torch.inference_mode():
        steps = {"prefill": lambda: base.forward(torch.arange(3, 23), 0, cache),
                 "decode": lambda: base.forward(torch.tensor([5]), 20, cache),
                 "verify": lambda: base.forward(torch.arange(4, 10), 21, cache, ForwardOptions(all_logits=True)),
                 "tree": lambda: base.forward(torch.arange(4, 7), 27, cache, ForwardOptions(
                     all_logits=True, tree=TreeAttention(torch.tensor([27, 28, 28]),
                                                         torch.tensor([[1, 0, 0], [1, 1, 0], [1, 0, 1]]).bool())))}
        seen = {}
        for name, step in steps.items():
            calls.clear()
            step()
            assert len(set(calls)) == 1 and len(calls) == base.cfg.n_layers, calls
            seen[name] = calls[0]
    assert seen["prefill"] == (hq, 20, hkv, None, True, True)
    assert seen["decode"] == (hkv, rep, hkv, None, False, False)
    assert seen["verify"] == (hkv, rep * 6, hkv, (rep * 6, 27), False, False)
    assert seen["tree"] == (hkv, rep * 3, hkv, (rep * 3, 30), False, False)


def test_every_step_runs_on_the_fused_cpu_kernel(decoders):
    """With only SDPA's flash backend allowed (no math fallback), every step shape still runs and gives the
    logits it gives with every backend allowed."""
    base, _ = decoders["llama"]
    prompt, drafts = torch.arange(3, 40), torch.arange(5, 11)

    def run():
        cache = base.new_cache(64)
        with torch.inference_mode():
            first = base.forward(prompt, 0, cache)
            step = base.forward(drafts[:1], len(prompt), cache)
            verify = base.forward(drafts[1:], len(prompt) + 1, cache, ForwardOptions(all_logits=True))
        return first, step, verify

    everything = run()
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        fused = run()
    for a, b in zip(fused, everything):
        torch.testing.assert_close(a, b)
