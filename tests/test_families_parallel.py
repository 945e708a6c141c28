"""Qwen3, Gemma 3 and Phi-3 on 2 CPU gloo ranks against one device: the tensor-parallel base's logits (q/k norms,
Gemma's four norms after the all-reduce, Phi's fused q/k/v and gate/up split into shards) and greedy output
in every mode, the draft's fuzzy groups spread over the ranks (each rank applying its own layer's norms)."""
from __future__ import annotations

import itertools

import pytest
import torch

from conftest import assert_greedy_equal, tokens_of
from easyspec.core.engine.decoder import ForwardOptions
from easyspec.core.models.loading import resolve_pair
from easyspec.core.session import Session
from easyspec.core.settings import SpecConfig
from test_families import PROMPT, make_family_pair

POLICIES = ("none", "every-round", "on-mismatch")


@pytest.fixture(scope="module", params=["qwen3", "gemma3", "phi3"])
def sessions(request, tmp_path_factory):
    base, draft = make_family_pair(tmp_path_factory.mktemp(request.param), request.param)
    source = resolve_pair(str(base), str(draft))
    with Session(source) as single, Session(source, devices=2) as multi:
        yield request.param, single, multi


def test_two_ranks_equal_one_device(sessions):
    name, single, multi = sessions
    ids = torch.arange(3, 40)
    with torch.inference_mode():
        ref = single.base.forward(ids, 0, single.base.new_cache(64), ForwardOptions(all_logits=True))
        cache = multi.base.new_cache(64)
        ours = multi.base.forward(ids[:30], 0, cache, ForwardOptions(all_logits=True))
        ours = torch.cat([ours] + [multi.base.forward(ids[t: t + 1], t, cache) for t in range(30, 37)])
    assert multi.base.cfg.n_heads == single.base.cfg.n_heads // 2  # really sharded
    diff = (ours - ref).abs().max().item()
    assert diff < 1e-4, f"{name}: max abs logit difference {diff:.2e} on 2 ranks"
    settings = [dict(mode="vanilla"), dict(mode="speculative")] + [
        dict(mode="easyspec", layer_parallel=n, calibration=c) for n, c in itertools.product((1, 2), POLICIES)]
    for s in settings:
        cfg = SpecConfig(max_new_tokens=30, **s)
        ref_tokens = tokens_of(single.generate(single.plan(cfg, PROMPT)))
        records = list(multi.generate(multi.plan(cfg, PROMPT)))
        if assert_greedy_equal(tokens_of(records), ref_tokens, single.base, PROMPT, case=(name, s)):
            assert {sp.rank for r in records for sp in r.spans} == {0, 1}, s


def test_layer_parallel_draft_equals_one_device_batched(sessions):
    """Each rank computes one attention of a group (with its own layer's norms, mask and RoPE; Gemma 3's
    groups mix sliding and global layers) and the all-gathered result equals the batched one-device form."""
    from easyspec.core.engine.grouping import layer_groups

    name, single, multi = sessions
    groups = layer_groups(single.draft.cfg.n_layers, 2)
    ids = torch.arange(5, 25)
    with torch.inference_mode():
        fuzzy = ForwardOptions(groups=groups)
        ref_cache, cache = single.draft.new_cache(32), multi.draft.new_cache(32)
        ref = torch.cat([single.draft.forward(ids[t: t + 1], t, ref_cache, fuzzy) for t in range(20)])
        ours = torch.cat([multi.draft.forward(ids[t: t + 1], t, cache, fuzzy) for t in range(20)])
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)
