"""Lossless under search: hypothesis draws small random pairs, prompts, k, N, head/tail, calibration
policies and device counts, and greedy speculative/EasySpec output must equal the base's own greedy
decoding token for token (docs/method.md#greedy-verification; a genuine tie of the base's top two logits is the one
exception, and such an example is rejected rather than passed).

One rank: the engine on in-process decoders (fast, many examples). Two ranks: one gloo session
(spawning ranks is slow), fewer examples, each checked against one-device vanilla decoding.
"""
from __future__ import annotations

import functools

import pytest
import torch
from hypothesis import HealthCheck, event, given, reject, settings, strategies as st

from conftest import CPU, TIE_MARGIN, tokens_of
from easyspec.core.planning import plan_run
from easyspec.core.engine.loop import Stopping, generate
from easyspec.core.settings import CALIBRATION_POLICIES, SamplingConfig, SpecConfig
from easyspec.core.models.loading import load_decoder, resolve_pair
from helpers import VOCAB, make_pair

PAIRS = st.tuples(st.sampled_from(["qwen2", "llama"]), st.integers(3, 6), st.sampled_from([0.01, 0.1, 0.5]),
                  st.integers(0, 2))
PROMPTS = st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=20)


@functools.lru_cache(maxsize=None)
def _pair(root: str, model_type: str, n_layers: int, noise: float, seed: int):
    from pathlib import Path

    folder = Path(root) / f"{model_type}-{n_layers}-{noise}-{seed}"
    base, draft = make_pair(folder, model_type, n_layers=n_layers, noise=noise, seed=seed, hidden=32, heads=4,
                            kv_heads=2)
    return load_decoder(base, torch.float32, CPU), load_decoder(draft, torch.float32, CPU)


@pytest.fixture(scope="module")
def pairs_root(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("property-pairs"))


def check_lossless(tokens: list[int], reference: list[int], base, prompt: list[int]) -> None:
    """Equal, or a genuine tie of the base at the first difference (then the example is rejected)."""
    if tokens == reference:
        return
    i = next((j for j, (a, b) in enumerate(zip(tokens, reference)) if a != b), min(len(tokens), len(reference)))
    if i < min(len(tokens), len(reference)):
        with torch.inference_mode():
            ids = torch.tensor(prompt + reference[:i])
            top2 = base.forward(ids, 0, base.new_cache(len(ids)))[0].topk(2).values
        if float(top2[0] - top2[1]) < TIE_MARGIN:
            event("rejected: a genuine tie of the base's top two logits")
            reject()
    raise AssertionError(f"differs from vanilla at new token {i}: {tokens[i:i + 5]} vs {reference[i:i + 5]}")


@st.composite
def configs(draw, draft_layers: int, max_n: int | None = None):
    head, tail = draw(st.integers(0, 1)), draw(st.integers(0, 1))
    middle = draft_layers - head - tail
    n = draw(st.integers(1, min(middle, max_n or middle)))
    return SpecConfig(mode=draw(st.sampled_from(["speculative", "easyspec"])), draft_len=draw(st.integers(1, 7)),
                      layer_parallel=n, sequential_head=head, sequential_tail=tail,
                      calibration=draw(st.sampled_from(CALIBRATION_POLICIES)),
                      max_new_tokens=draw(st.integers(1, 24)), sampling=SamplingConfig())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(pair=PAIRS, prompt=PROMPTS, data=st.data())
def test_one_device_greedy_equals_vanilla(pairs_root, pair, prompt, data):
    base, draft = _pair(pairs_root, *pair)
    cfg = data.draw(configs(draft.cfg.n_layers), label="config")
    reference = tokens_of(generate(base, None, plan_run(SpecConfig(mode="vanilla", max_new_tokens=cfg.max_new_tokens),
                                                        prompt, base, None)))
    tokens = tokens_of(generate(base, draft, plan_run(cfg, prompt, base, draft), Stopping()))
    assert len(reference) == cfg.max_new_tokens
    check_lossless(tokens, reference, base, prompt)


@pytest.fixture(scope="module")
def two_ranks(pairs_root):
    from pathlib import Path

    from easyspec.core.session import Session

    base_dir, draft_dir = make_pair(Path(pairs_root) / "two-ranks", "qwen2", n_layers=5, noise=0.1, seed=3,
                                    hidden=32, heads=4, kv_heads=2)
    session = Session(resolve_pair(str(base_dir), str(draft_dir)), devices=2)
    one = load_decoder(base_dir, torch.float32, CPU)
    yield session, one
    session.close()


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(prompt=PROMPTS, data=st.data())
def test_two_ranks_greedy_equals_one_device_vanilla(two_ranks, prompt, data):
    session, base = two_ranks
    cfg = data.draw(configs(session.info.draft_layers, max_n=2), label="config")
    vanilla = SpecConfig(mode="vanilla", max_new_tokens=cfg.max_new_tokens)
    reference = tokens_of(generate(base, None, plan_run(vanilla, prompt, base, None), Stopping(session.pair.eos_ids)))
    check_lossless(tokens_of(session.generate(session.plan(cfg, prompt))), reference, base, prompt)
