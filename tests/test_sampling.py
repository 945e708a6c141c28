"""Sampling is lossless: emitted tokens follow the base's distribution, with and without layer
parallelism (statistical tests with a stated significance level, and a power check)."""
from __future__ import annotations

import math

import pytest
import torch

from conftest import CPU
from easyspec.core.planning import plan_run
from easyspec.core.engine.loop import generate
from easyspec.core.settings import SamplingConfig, SpecConfig
from easyspec.core.models.loading import load_decoder
from easyspec.core.engine.sampling import probs, verify_greedy, verify_sampling
from helpers import make_pair

ALPHA_Z = 3.09  # one-sided z for a significance level of 1e-3


def chi2_critical(df: int, z: float = ALPHA_Z) -> float:
    """Wilson-Hilferty approximation of the chi-square quantile."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def chi2(observed: dict[int, int], expected: dict[int, float], n: int) -> tuple[float, int]:
    """Pearson's statistic; bins expected below 5 counts are pooled into one."""
    big = [t for t, p in expected.items() if p * n >= 5]
    stat, pooled_obs, pooled_exp = 0.0, n, n * 1.0
    for t in big:
        e = expected[t] * n
        stat += (observed.get(t, 0) - e) ** 2 / e
        pooled_obs -= observed.get(t, 0)
        pooled_exp -= e
    if pooled_exp >= 5:
        stat += (pooled_obs - pooled_exp) ** 2 / pooled_exp
        return stat, len(big)
    return stat, len(big) - 1


def test_verify_sampling_first_token_follows_p():
    g = torch.Generator().manual_seed(0)
    V, k = 6, 3
    p = torch.softmax(torch.randn(k + 1, V, generator=g) * 2, -1)
    q = torch.softmax(torch.randn(k, V, generator=g) * 2, -1)
    n = 6000
    counts: dict[int, int] = {}
    for _ in range(n):
        drafted = torch.multinomial(q, 1, generator=g)[:, 0]
        a, nxt = verify_sampling(drafted, q, p, g)
        first = int(drafted[0]) if a > 0 else nxt
        counts[first] = counts.get(first, 0) + 1
    stat, df = chi2(counts, dict(enumerate(p[0].tolist())), n)
    assert stat < chi2_critical(df), (stat, df)
    stat_q, _ = chi2(counts, dict(enumerate(q[0].tolist())), n)
    assert stat_q > chi2_critical(df), "power check: the draft's own distribution must be rejected"


def test_verify_greedy_accepts_longest_agreeing_prefix():
    logits = torch.full((4, 5), -1.0)
    for i, t in enumerate([2, 3, 1, 4]):
        logits[i, t] = 1.0
    assert verify_greedy(torch.tensor([2, 3, 1]), logits) == (3, 4, [2, 3, 1])  # all accepted, bonus 4
    assert verify_greedy(torch.tensor([2, 0, 1]), logits) == (1, 3, [2, 0, 1])  # recovered 3 at position 1
    assert verify_greedy(torch.tensor([0, 3, 1]), logits) == (0, 2, [0, 3, 1])


def test_probs_apply_temperature_top_k_top_p():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0, -1.0]])
    p = probs(logits, SamplingConfig(temperature=1.0, top_k=2))
    assert (p[0, 2:] == 0).all() and torch.isclose(p.sum(), torch.tensor(1.0))
    full = logits.softmax(-1)[0]
    p = probs(logits, SamplingConfig(temperature=1.0, top_p=float(full[0] + 1e-3)))
    assert (p[0] > 0).sum() == 2  # the smallest prefix reaching top_p: two tokens
    hot = probs(logits, SamplingConfig(temperature=2.0))
    assert hot[0, 0] < full[0]
    for bad in (dict(temperature=-0.1), dict(top_p=0.0), dict(top_p=1.5), dict(top_k=-1)):
        with pytest.raises(ValueError):
            SamplingConfig(**bad)


@pytest.fixture(scope="module")
def noisy_pair(tmp_path_factory):
    base_dir, draft_dir = make_pair(tmp_path_factory.mktemp("noisy"), noise=0.08, seed=3)
    return load_decoder(base_dir, torch.float32, CPU), load_decoder(draft_dir, torch.float32, CPU)


def _exact_marginals(model, prompt, cfg: SamplingConfig, depth: int) -> list[dict[int, float]]:
    """Exact marginal distribution of new tokens 1..depth under `model` with cfg's shaping."""
    marginals, frontier = [], {(): 1.0}
    with torch.inference_mode():
        for _ in range(depth):
            nxt: dict[tuple, float] = {}
            dist: dict[int, float] = {}
            for ctx, w in frontier.items():
                ids = torch.tensor(prompt + list(ctx))
                p = probs(model.forward(ids, 0, model.new_cache(len(ids))), cfg)[0]
                for t in torch.nonzero(p).flatten().tolist():
                    nxt[ctx + (t,)] = w * float(p[t])
                    dist[t] = dist.get(t, 0.0) + w * float(p[t])
            marginals.append(dist)
            frontier = nxt
    return marginals


@pytest.mark.parametrize("mode,n", [("speculative", 1), ("easyspec", 4)])
def test_sampled_tokens_follow_the_base_distribution(noisy_pair, mode, n):
    base, draft = noisy_pair
    prompt = [11, 40, 99, 7, 150, 3]
    shaping = SamplingConfig(temperature=1.0, top_k=5)
    expected = _exact_marginals(base, prompt, shaping, 3)
    draft_marginals = _exact_marginals(draft, prompt, shaping, 3)
    runs = 1500
    counts = [dict() for _ in range(3)]
    origins = set()
    for seed in range(runs):
        cfg = SpecConfig(mode=mode, layer_parallel=n, draft_len=2, max_new_tokens=3,
                         sampling=SamplingConfig(temperature=1.0, top_k=5, seed=seed))
        records = list(generate(base, draft, plan_run(cfg, prompt, base, draft)))
        out = [t for r in records for t in r.token_ids]
        origins.update(o for r in records for o in r.origins)
        for pos, t in enumerate(out):
            counts[pos][t] = counts[pos].get(t, 0) + 1
    assert {"accepted", "recovered", "bonus"} <= origins, origins  # every verification path was taken
    for pos in (1, 2):  # tokens 2 and 3 come out of draft-then-verify rounds
        stat, df = chi2(counts[pos], expected[pos], runs)
        assert stat < chi2_critical(df), f"token {pos + 1}: chi2 {stat:.1f} on {df} df"
    # Power: the same counts reject the draft's own distribution at some position.
    against_draft = [chi2(counts[pos], draft_marginals[pos], runs) for pos in (1, 2)]
    assert any(stat > chi2_critical(df) for stat, df in against_draft), against_draft
