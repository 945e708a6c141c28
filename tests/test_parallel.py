"""Multi-device runtime on CPU gloo ranks: tensor-parallel base and layer-parallel draft against the
single-device reference, and greedy equality in every mode (one G-rank session per G, kept open)."""
from __future__ import annotations

import itertools

import pytest
import torch

from conftest import assert_greedy_equal, tokens_of
from easyspec.core.engine.decoder import ForwardOptions
from easyspec.core.settings import SpecConfig
from easyspec.core.engine.grouping import layer_groups
from easyspec.core.models.loading import resolve_pair
from easyspec.core.session import Session

PROMPT = list(range(10, 30))
POLICIES = ("none", "every-round", "on-mismatch")


@pytest.fixture(scope="module")
def source(pair_dirs):
    base, draft = pair_dirs["qwen2"]
    return resolve_pair(str(base), str(draft))


@pytest.fixture(scope="module")
def single(source):
    with Session(source) as s:
        yield s


@pytest.fixture(scope="module", params=[2, 4])
def multi(request, source):
    with Session(source, devices=request.param) as s:
        yield s


def test_tensor_parallel_base_logits_match_single_device(single, multi):
    ids = torch.arange(3, 40)
    with torch.inference_mode():
        ref = single.base.forward(ids, 0, single.base.new_cache(64), ForwardOptions(all_logits=True))
        cache = multi.base.new_cache(64)
        ours = multi.base.forward(ids[:30], 0, cache, ForwardOptions(all_logits=True))
        ours = torch.cat([ours] + [multi.base.forward(ids[t: t + 1], t, cache) for t in range(30, 37)])
    assert multi.base.cfg.n_heads == single.base.cfg.n_heads // multi.devices  # really sharded
    diff = (ours - ref).abs().max().item()
    assert diff < 1e-4, f"max abs logit difference {diff:.2e} with {multi.devices} ranks"


def test_layer_parallel_draft_matches_single_device_batched(single, multi):
    """The fuzzy draft across G ranks equals the one-device batched fuzzy computation (hidden
    states, seen through the logits and rank 0's KV entries of every layer it computed)."""
    n_layers = single.draft.cfg.n_layers
    ids = torch.arange(5, 25)
    for n in range(2, multi.devices + 1):
        groups = layer_groups(n_layers, n)
        with torch.inference_mode():
            ref_cache = single.draft.new_cache(32)
            fuzzy = ForwardOptions(groups=groups)
            ref = torch.cat([single.draft.forward(ids[t: t + 1], t, ref_cache, fuzzy) for t in range(20)])
            cache = multi.draft.new_cache(32)
            ours = torch.cat([multi.draft.forward(ids[t: t + 1], t, cache, fuzzy) for t in range(20)])
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)
        own = [a for a, b in groups if b - a == 1] + [a for a, b in groups if b - a > 1]  # rank 0's layers
        torch.testing.assert_close(cache.k[own, :, :20], ref_cache.k[own, :, :20], rtol=0, atol=1e-5)


def test_greedy_equals_single_device_in_every_mode(single, multi):
    settings = [dict(mode="vanilla"), dict(mode="speculative")] + [
        dict(mode="easyspec", layer_parallel=n, calibration=c)
        for n, c in itertools.product(range(1, multi.devices + 1), POLICIES)] + [
        dict(mode="easyspec", groups="0-1|2|3-4|5-6|7", calibration="none")]  # an explicit plan (tuner's form)
    for s in settings:
        cfg = SpecConfig(max_new_tokens=30, **s)
        ref = tokens_of(single.generate(single.plan(cfg, PROMPT)))
        records = list(multi.generate(multi.plan(cfg, PROMPT)))
        if not assert_greedy_equal(tokens_of(records), ref, single.base, PROMPT, case=s):
            continue
        ranks = {sp.rank for r in records for sp in r.spans}
        assert ranks == set(range(multi.devices)), (s, ranks)


def test_n_above_g_and_a_second_group_are_refused(source, multi):
    with pytest.raises(ValueError, match="N <= G"):
        multi.generate(multi.plan(SpecConfig(layer_parallel=multi.devices + 1), PROMPT))
    with pytest.raises(ValueError, match="a group of 5 layers"):
        multi.generate(multi.plan(SpecConfig(groups="0|1-5|6-7"), PROMPT))
    with pytest.raises(ValueError, match="already runs a multi-device session"):
        Session(source, devices=2)
    assert len(tokens_of(multi.generate(multi.plan(SpecConfig(layer_parallel=2, max_new_tokens=4),
                                                   PROMPT)))) == 4  # serving


def test_round_one_follows_the_policy_on_every_rank(single, multi):
    """The leader runs the one engine loop, so round 1 reads the prefill token exactly (a calibrate
    pass on every rank) under every-round and on-mismatch, and through the fuzzy groups under none."""
    for policy in POLICIES:
        cfg = SpecConfig(layer_parallel=2, calibration=policy, max_new_tokens=20)
        ref = tokens_of(single.generate(single.plan(cfg, PROMPT)))
        records = list(multi.generate(multi.plan(cfg, PROMPT)))
        assert_greedy_equal(tokens_of(records), ref, single.base, PROMPT)
        first = records[1]
        assert first.drafted and first.calibrated == (policy != "none")
        calibrating = {sp.rank for sp in first.spans if sp.phase == "calibrate"}
        assert calibrating == (set(range(multi.devices)) if policy != "none" else set()), (policy, calibrating)
        assert any(sp.phase == "draft.comm" for sp in first.spans)  # the later steps still run fuzzy groups


def test_the_greedy_check_of_a_multi_device_session_uses_a_whole_base(single, multi):
    """Rank 0 holds a shard: the greedy check loads a whole fp32 base, which recomputes the single-device
    logits, with no collective (the followers are not involved)."""
    from easyspec.core.engine.lossless import compare_greedy, fp32_logits

    ref = multi.fp32_base()
    assert ref is multi.fp32_base() and ref.reduce is None and ref.cfg == single.base.cfg
    assert torch.equal(fp32_logits(ref, PROMPT), fp32_logits(single.base, PROMPT))
    vanilla = tokens_of(multi.generate(multi.plan(SpecConfig(mode="vanilla", max_new_tokens=6), PROMPT)))
    worst = int(fp32_logits(ref, PROMPT + vanilla[:2]).argmin())
    check = compare_greedy(multi, PROMPT, vanilla[:2] + [worst], vanilla[:3])
    assert check.verdict == "different" and check.index == 2 and check.fp32_pick == vanilla[2]
