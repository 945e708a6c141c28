"""The compact decoder against transformers' own model, and fuzzy groups against a plain reference."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from conftest import CPU
from easyspec.core.engine.decoder import Decoder, ForwardOptions
from easyspec.core.engine.grouping import layer_groups
from easyspec.core.models.loading import load_decoder
from helpers import hf_config, save_checkpoint

LLAMA3 = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
CASES = {
    "qwen2": ("qwen2", {}),
    "llama3-rope": ("llama", {"rope_parameters": LLAMA3}),
    "llama-linear-rope-bias": ("llama", {"rope_parameters": {"rope_type": "linear", "rope_theta": 10000.0,
                                                             "factor": 2.0}, "attention_bias": True,
                                         "mlp_bias": True}),
    "mistral-window": ("mistral", {"sliding_window": 12}),
    "smollm-tied": ("llama", {"tie_word_embeddings": True}),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def checkpoint(request, tmp_path_factory):
    model_type, extra = CASES[request.param]
    folder = tmp_path_factory.mktemp(request.param)
    cfg = hf_config(model_type, n_layers=4, **extra)
    save_checkpoint(folder, cfg, seed=1)
    return request.param, folder


def test_logits_match_transformers(checkpoint):
    name, folder = checkpoint
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    dec = load_decoder(folder, torch.float32, CPU)
    expected_rope = {"llama3-rope": "llama3", "llama-linear-rope-bias": "linear"}.get(name, "default")
    assert dec.cfg.rope.kind == expected_rope
    if name == "mistral-window":
        assert dec.cfg.sliding_window == 12
    ids = torch.randint(0, 256, (40,), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref = hf(ids[None]).logits[0]  # [40, V]
        cache = dec.new_cache(40)
        ours = [dec.forward(ids[:25], 0, cache, ForwardOptions(all_logits=True))]  # prefill, then one token at a time
        ours += [dec.forward(ids[t: t + 1], t, cache) for t in range(25, 40)]
    diff = (torch.cat(ours) - ref).abs().max().item()
    assert diff < 1e-4, f"{name}: max abs logit difference {diff:.2e}"


def test_crop_then_rewrite_is_exact(decoders):
    dec = decoders["qwen2"][0]
    ids = torch.arange(3, 33)
    with torch.inference_mode():
        cache = dec.new_cache(40)
        first = dec.forward(ids, 0, cache, ForwardOptions(all_logits=True))
        k_before = cache.k[:, :, :30].clone()
        cache.crop(12)
        assert cache.length == 12
        again = dec.forward(ids[12:], 12, cache, ForwardOptions(all_logits=True))
    torch.testing.assert_close(again, first[12:], rtol=0, atol=1e-5)
    torch.testing.assert_close(cache.k[:, :, :30], k_before, rtol=0, atol=1e-5)


def _reference_forward(dec: Decoder, ids: torch.Tensor, groups) -> torch.Tensor:
    """Plain per-layer fuzzy forward, no cache: each group's attentions read the group input h,
    then the MLPs run in order (docs/method.md#fuzzy-layer-parallel-groups). Written independently of the batched code path."""
    cfg, w = dec.cfg, dec.w
    T, hq, hkv, hd = ids.numel(), cfg.n_heads, cfg.n_kv_heads, cfg.head_dim

    def rms(x, weight):
        return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + cfg.rms_norm_eps))

    def rope(x, pos):  # x [H, T, hd]
        freqs = torch.outer(pos.float(), dec.inv_freq)
        cos, sin = torch.cat((freqs, freqs), -1).cos(), torch.cat((freqs, freqs), -1).sin()
        x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
        return x * cos + torch.cat((-x2, x1), -1) * sin

    def attn(i, h):
        qkv = F.linear(rms(h, w.norm_in[i]), w.wqkv[i], None if w.bqkv is None else w.bqkv[i])
        q, k, v = qkv.split((hq * hd, hkv * hd, hkv * hd), -1)
        pos = torch.arange(T)
        q = rope(q.view(T, hq, hd).transpose(0, 1), pos)
        k = rope(k.view(T, hkv, hd).transpose(0, 1), pos).repeat_interleave(hq // hkv, 0)
        v = v.view(T, hkv, hd).transpose(0, 1).repeat_interleave(hq // hkv, 0)
        scores = (q @ k.transpose(1, 2)) / hd ** 0.5 + torch.full((T, T), float("-inf")).triu(1)
        o = (scores.softmax(-1) @ v).transpose(0, 1).reshape(T, hq * hd)
        return F.linear(o, w.wo[i])

    def mlp(i, x):
        gate, up = F.linear(rms(x, w.norm_post[i]), w.w_gate_up[i]).chunk(2, -1)
        return F.linear(F.silu(gate) * up, w.w_down[i])

    x = w.embed[ids]
    for start, end in groups:
        attns = [attn(i, x) for i in range(start, end)]  # all from the same group input
        for i, a in zip(range(start, end), attns):
            x = x + a
            x = x + mlp(i, x)
    return F.linear(rms(x, w.norm), w.lm_head)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6])
def test_fuzzy_groups_match_plain_reference(decoders, n):
    dec = decoders["qwen2"][1]
    groups = layer_groups(dec.cfg.n_layers, n)
    ids = torch.arange(5, 22)
    with torch.inference_mode():
        ref = _reference_forward(dec, ids, groups)
        ours = dec.forward(ids, 0, dec.new_cache(32), ForwardOptions(groups=groups, all_logits=True))
        # one token at a time through the fuzzy plan gives the same as the whole sequence at once
        cache, fuzzy = dec.new_cache(32), ForwardOptions(groups=groups)
        steps = torch.cat([dec.forward(ids[t: t + 1], t, cache, fuzzy) for t in range(ids.numel())])
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-4)
    torch.testing.assert_close(steps, ref, rtol=0, atol=1e-4)
    if n > 1:  # a fuzzy plan really computes something else than the exact layers
        with torch.inference_mode():
            exact = dec.forward(ids, 0, dec.new_cache(32), ForwardOptions(all_logits=True))
        assert (exact - ours).abs().max() > 1e-3


def test_exact_reference_matches_transformers(pair_dirs, decoders):
    """The plain reference with groups of one equals transformers, so it is a fair referee."""
    dec = decoders["qwen2"][1]
    hf = AutoModelForCausalLM.from_pretrained(pair_dirs["qwen2"][1], dtype=torch.float32).eval()
    ids = torch.arange(5, 22)
    with torch.inference_mode():
        ref = hf(ids[None]).logits[0]
        plain = _reference_forward(dec, ids, layer_groups(dec.cfg.n_layers, 1))
    torch.testing.assert_close(plain, ref, rtol=0, atol=1e-4)
