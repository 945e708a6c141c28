"""Tree sampling is lossless: multi-step speculative sampling (SpecInfer) over a tree of i.i.d.
draft samples emits tokens that follow the base's distribution (chi-square tests at a significance
level of 1e-3, each with a power check against the draft's own distribution)."""
from __future__ import annotations

import pytest
import torch

from conftest import CPU
from easyspec.core.planning import plan_run
from easyspec.core.engine.loop import generate
from easyspec.core.settings import SamplingConfig, SpecConfig
from easyspec.core.models.loading import load_decoder
from easyspec.core.engine.tree import DraftTree, accept_sampling
from helpers import make_pair
from test_sampling import _exact_marginals, chi2, chi2_critical


def test_multi_step_speculative_sampling_follows_p_on_a_tiny_vocab():
    """A width-3 tree of two levels on a 4-token vocabulary: the first two emitted tokens jointly
    follow p(a) p(b | a), whatever the draft q."""
    g = torch.Generator().manual_seed(0)
    V, width = 4, 3
    p_root = torch.softmax(torch.randn(V, generator=g) * 1.5, -1)
    p_next = torch.softmax(torch.randn(V, V, generator=g) * 1.5, -1)  # [a, V]: p(. | a)
    q_root = torch.softmax(torch.randn(V, generator=g) * 1.5, -1)
    q_next = torch.softmax(torch.randn(V, V, generator=g) * 1.5, -1)
    flat = torch.ones(V) / V  # p after a depth-2 node: only reached for a third token
    n = 6000
    counts: dict[int, int] = {}
    origins = set()
    for _ in range(n):
        tree = DraftTree(CPU)
        first = torch.multinomial(q_root, width, replacement=True, generator=g)
        tree.q = [q_root]
        tree.add_level(first, torch.full((width,), -1), torch.zeros(width))
        second = torch.stack([torch.multinomial(q_next[a], 1, generator=g)[0] for a in first])
        tree.q += [q_next[a] for a in first]
        tree.add_level(second, torch.arange(width), torch.zeros(width))
        p = torch.stack([p_root] + [p_next[a] for a in first] + [flat] * width)  # [1 + 2 width, V]
        path, nxt = accept_sampling(tree, p, g)
        tokens = [int(tree.tokens[i]) for i in path] + [nxt]
        if len(tokens) == 1:  # the root's children were all rejected: the second token comes from p
            tokens.append(int(torch.multinomial(p_next[tokens[0]], 1, generator=g)))
        origins.add(len(path))
        key = tokens[0] * V + tokens[1]
        counts[key] = counts.get(key, 0) + 1
    expected = {a * V + b: float(p_root[a] * p_next[a, b]) for a in range(V) for b in range(V)}
    stat, df = chi2(counts, expected, n)
    assert stat < chi2_critical(df), (stat, df)
    assert origins == {0, 1, 2}, origins  # rejection at the root, at depth 1, and a full path
    draft_joint = {a * V + b: float(q_root[a] * q_next[a, b]) for a in range(V) for b in range(V)}
    stat_q, _ = chi2(counts, draft_joint, n)
    assert stat_q > chi2_critical(df), "power check: the draft's own distribution must be rejected"


@pytest.fixture(scope="module")
def noisy_pair(tmp_path_factory):
    base_dir, draft_dir = make_pair(tmp_path_factory.mktemp("noisy"), noise=0.08, seed=3)
    return load_decoder(base_dir, torch.float32, CPU), load_decoder(draft_dir, torch.float32, CPU)


def test_tree_sampled_tokens_follow_the_base_distribution(noisy_pair):
    base, draft = noisy_pair
    prompt = [11, 40, 99, 7, 150, 3]
    shaping = SamplingConfig(temperature=1.0, top_k=5)
    expected = _exact_marginals(base, prompt, shaping, 3)
    draft_marginals = _exact_marginals(draft, prompt, shaping, 3)
    runs = 400  # the power check passes with a wide margin (chi2 about 30x critical at 800 runs)
    counts = [dict() for _ in range(3)]
    origins = set()
    for seed in range(runs):
        # 4 new tokens: the prefill emits token 1, then a depth-2 tree round emits tokens 2 and 3 or
        # fewer (token 4, if any, belongs to a later round and is not counted).
        cfg = SpecConfig(mode="easyspec", layer_parallel=4, tree_depth=2, tree_width=3, max_new_tokens=4,
                         sampling=SamplingConfig(temperature=1.0, top_k=5, seed=seed))
        records = list(generate(base, draft, plan_run(cfg, prompt, base, draft)))
        out = [t for r in records for t in r.token_ids]
        origins.update(o for r in records for o in r.origins)
        for pos, t in enumerate(out[:3]):
            counts[pos][t] = counts[pos].get(t, 0) + 1
    assert {"accepted", "recovered", "bonus"} <= origins, origins
    for pos in (1, 2):
        stat, df = chi2(counts[pos], expected[pos], runs)
        assert stat < chi2_critical(df), f"token {pos + 1}: chi2 {stat:.1f} on {df} df"
    against_draft = [chi2(counts[pos], draft_marginals[pos], runs) for pos in (1, 2)]
    assert any(stat > chi2_critical(df) for stat, df in against_draft), against_draft
