"""Engine behaviour on small random pairs: greedy losslessness in every mode, N and calibration
policy; N = 1 against speculative decoding; calibrated caches against a fresh prefill; stopping."""
from __future__ import annotations

import itertools

import pytest
import torch

from conftest import assert_greedy_equal, tokens_of
from easyspec.core.planning import plan_run
from easyspec.core.engine.loop import Generation, Stopping, generate
from easyspec.core.settings import SpecConfig
from easyspec.core.engine.grouping import layer_groups

PROMPTS = [list(range(10, 30)), [65, 66, 67, 10, 200, 201], [7] * 12]
POLICIES = ("none", "every-round", "on-mismatch")


def _vanilla(base, prompt, max_new=40, stopping=Stopping()):
    return tokens_of(generate(base, None, plan_run(SpecConfig(mode="vanilla", max_new_tokens=max_new), prompt, base,
                                                   None), stopping))


@pytest.mark.parametrize("family", ["qwen2", "llama"])
@pytest.mark.parametrize("prompt", PROMPTS, ids=["ramp", "mixed", "repeat"])
def test_greedy_equals_vanilla_in_every_mode(decoders, family, prompt):
    base, draft = decoders[family]
    ref = _vanilla(base, prompt)
    assert len(ref) == 40
    settings = [dict(mode="speculative", draft_len=k) for k in (1, 3, 5)]
    settings += [dict(mode="easyspec", layer_parallel=n, calibration=c, draft_len=k)
                 for n, c, k in itertools.product(range(1, 6), POLICIES, (2, 5))]
    accepted = 0
    for s in settings:
        records = list(generate(base, draft, plan_run(SpecConfig(max_new_tokens=40, **s), prompt, base, draft)))
        if not assert_greedy_equal(tokens_of(records), ref, base, prompt, case=s):
            continue
        accepted += sum(r.accepted for r in records)
        origins = [o for r in records for o in r.origins]
        assert origins[0] == "prefill" and origins.count("prefill") == 1
    assert accepted > 0, "the draft never agreed with the base: the test pair exercises nothing"


def test_easyspec_n1_drafts_like_speculative_and_caches_agree(decoders):
    base, draft = decoders["qwen2"]
    prompt = PROMPTS[0]
    spec = Generation(base, draft, plan_run(SpecConfig(mode="speculative", max_new_tokens=30), prompt, base, draft),
                      Stopping())
    easy = Generation(base, draft, plan_run(SpecConfig(mode="easyspec", layer_parallel=1, max_new_tokens=30), prompt,
                                            base, draft), Stopping())
    assert spec.plan is None and easy.plan == layer_groups(draft.cfg.n_layers, 1)
    for rs, re_ in zip(spec.rounds(), easy.rounds()):
        assert rs.drafted == re_.drafted and rs.token_ids == re_.token_ids
        # both caches hold every committed token but the last; speculative's were never recomputed
        n = min(spec.dcache.length, easy.dcache.length)
        torch.testing.assert_close(easy.dcache.k[:, :, :n], spec.dcache.k[:, :, :n], rtol=0, atol=1e-5)
        torch.testing.assert_close(easy.dcache.v[:, :, :n], spec.dcache.v[:, :, :n], rtol=0, atol=1e-5)


@pytest.mark.parametrize("n", [2, 4, 6])
def test_calibrated_draft_cache_equals_fresh_prefill(decoders, n):
    base, draft = decoders["qwen2"]
    prompt = PROMPTS[1]
    cfg = SpecConfig(mode="easyspec", layer_parallel=n, calibration="every-round", max_new_tokens=40)
    run = Generation(base, draft, plan_run(cfg, prompt, base, draft), Stopping())
    checked = 0
    for rec in run.rounds():
        if not rec.calibrated:
            continue
        # Right after calibration (this round's first step) the entries up to exact_len are exact.
        m = run.exact_len
        with torch.inference_mode():
            fresh = draft.new_cache(m)
            draft.forward(run.ids[:m], 0, fresh)
        torch.testing.assert_close(run.dcache.k[:, :, :m], fresh.k, rtol=0, atol=1e-5)
        torch.testing.assert_close(run.dcache.v[:, :, :m], fresh.v, rtol=0, atol=1e-5)
        checked += 1
    assert checked >= 3


def test_fuzzy_entries_differ_without_calibration(decoders):
    """With calibration `none` the kept fuzzy entries really differ from exact ones (the thing that
    calibration fixes), so the test above is not vacuous."""
    base, draft = decoders["qwen2"]
    cfg = SpecConfig(mode="easyspec", layer_parallel=4, calibration="none", max_new_tokens=30)
    run = Generation(base, draft, plan_run(cfg, PROMPTS[1], base, draft), Stopping())
    for _ in run.rounds():
        pass
    m = run.dcache.length
    with torch.inference_mode():
        fresh = draft.new_cache(m)
        draft.forward(run.ids[:m], 0, fresh)
    assert (run.dcache.k[:, :, :m] - fresh.k).abs().max() > 1e-3


def test_calibration_policies_calibrate_when_they_should(decoders):
    base, draft = decoders["qwen2"]
    counts = {}
    for policy in POLICIES:
        records = list(generate(base, draft, plan_run(SpecConfig(calibration=policy, max_new_tokens=40), PROMPTS[0],
                                                      base, draft)))
        steps = [r for r in records if r.drafted]
        counts[policy] = sum(r.calibrated for r in records)
        if policy == "every-round":
            assert all(r.calibrated for r in steps)
        if policy == "on-mismatch":  # round 1 reads the prefill token exactly; a later round calibrates
            assert steps[0].calibrated  # exactly when the one before it rejected a draft
            for prev, cur in zip(steps, steps[1:]):
                assert cur.calibrated == (prev.accepted < len(prev.drafted))
    assert counts["none"] == 0 and counts["every-round"] >= counts["on-mismatch"]


@pytest.mark.parametrize("tree_depth", [0, 3], ids=["chain", "tree"])
@pytest.mark.parametrize("policy", POLICIES)
def test_round_one_reads_the_prefill_token_as_the_policy_says(decoders, policy, tree_depth):
    """Round 1 feeds the prefill token exactly (sequentially, as calibration does) under every-round
    and on-mismatch, through the fuzzy plan under none; the draft cache after that first forward is
    exact exactly when the record says calibrated; greedy output still equals vanilla."""
    base, draft = decoders["qwen2"]
    prompt = PROMPTS[1]
    cfg = SpecConfig(layer_parallel=4, calibration=policy, max_new_tokens=30, tree_depth=tree_depth)
    run = Generation(base, draft, plan_run(cfg, prompt, base, draft), Stopping())
    rounds = run.rounds()
    records = [next(rounds), next(rounds)]  # the prefill and round 1
    first = records[1]
    assert first.index == 1 and first.drafted
    assert first.calibrated == (policy != "none")
    feed = [s for s in first.spans if s.phase in ("calibrate", "draft.attn")][0]
    assert feed.phase == ("calibrate" if policy != "none" else "draft.attn")
    if policy != "none":
        assert feed.label == "1 tokens"  # the prefill token alone, read sequentially
    m = len(prompt) + 1  # the prompt and the prefill token: exact when round 1 read it exactly
    with torch.inference_mode():
        fresh = draft.new_cache(m)
        draft.forward(run.ids[:m], 0, fresh)
    diff = float((run.dcache.k[:, :, len(prompt)] - fresh.k[:, :, len(prompt)]).abs().max())
    if policy == "none":
        assert diff > 1e-3
    else:
        assert diff < 1e-5
    records += list(rounds)
    assert_greedy_equal(tokens_of(records), _vanilla(base, prompt, 30), base, prompt)


@pytest.mark.parametrize("mode", ["vanilla", "speculative", "easyspec"])
def test_stops_at_eos_mid_round_and_at_token_limit(decoders, mode):
    base, draft = decoders["qwen2"]
    prompt = PROMPTS[0]
    ref = _vanilla(base, prompt, 40)
    eos = ref[17]
    cut = ref.index(eos) + 1
    records = list(generate(base, draft, plan_run(SpecConfig(mode=mode, max_new_tokens=40), prompt, base, draft),
                            Stopping(eos_ids=frozenset({eos}))))
    assert tokens_of(records) == ref[:cut] and records[-1].stop == "eos"
    for limit in (1, 2, 7):
        records = list(generate(base, draft, plan_run(SpecConfig(mode=mode, max_new_tokens=limit), prompt, base,
                                                      draft)))
        assert tokens_of(records) == ref[:limit] and records[-1].stop == "max_new_tokens"


def test_stop_strings_cut_generation(decoders):
    from helpers import byte_tokenizer

    tok = byte_tokenizer()
    base, draft = decoders["qwen2"]
    prompt = PROMPTS[0]
    ref = _vanilla(base, prompt, 40)

    def decode(ids):
        return tok.decode(ids, skip_special_tokens=True)

    text = decode(ref)
    stop = next(text[i: i + 2] for i in range(10, len(text) - 2) if "\ufffd" not in text[i: i + 2])
    stopping = Stopping(stop_strings=(stop,), decode=decode)
    records = list(generate(base, draft, plan_run(SpecConfig(max_new_tokens=40), prompt, base, draft), stopping))
    out = tokens_of(records)
    assert records[-1].stop == "stop_string" and stop in decode(out) and stop not in decode(out[:-1])
    assert out == ref[: len(out)]


def test_bad_settings_raise_clear_errors(decoders):
    base, draft = decoders["qwen2"]
    with pytest.raises(ValueError, match="prompt is empty"):
        list(generate(base, draft, plan_run(SpecConfig(), [], base, draft)))
    with pytest.raises(ValueError, match="context window"):
        list(generate(base, draft, plan_run(SpecConfig(max_new_tokens=100), [1] * 500, base, draft)))
    with pytest.raises(ValueError, match="middle layers"):
        list(generate(base, draft, plan_run(SpecConfig(layer_parallel=7), [1, 2], base, draft)))
    with pytest.raises(ValueError, match="leave no middle layers"):
        list(generate(base, draft, plan_run(SpecConfig(sequential_head=4, sequential_tail=4), [1, 2], base, draft)))
    for bad in (dict(mode="turbo"), dict(calibration="sometimes"), dict(draft_len=0), dict(layer_parallel=0),
                dict(max_new_tokens=0)):
        with pytest.raises(ValueError):
            SpecConfig(**bad)
