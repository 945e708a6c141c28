"""Token trees on 2 CPU gloo ranks (tensor-parallel base, layer-parallel draft): the tree attention
travels with every announced call, compactions are announced, and greedy output equals one device."""
from __future__ import annotations

import pytest

from conftest import assert_greedy_equal, tokens_of
from easyspec.core.settings import SpecConfig
from easyspec.core.models.loading import resolve_pair
from easyspec.core.session import Session

PROMPT = list(range(10, 30))


@pytest.fixture(scope="module")
def source(pair_dirs):
    base, draft = pair_dirs["qwen2"]
    return resolve_pair(str(base), str(draft))


def test_trees_on_two_ranks_equal_single_device(source):
    settings = [dict(mode="speculative", tree_depth=3, tree_width=2),
                dict(layer_parallel=2, calibration="every-round", tree_depth=4, tree_width=3),
                dict(layer_parallel=2, calibration="none", tree_depth=2, tree_width=4),
                dict(layer_parallel=2, calibration="on-mismatch", tree_depth=3, tree_width=2, adaptive=True),
                dict(layer_parallel=2, draft_len=3, adaptive=True)]
    with Session(source) as single:
        refs = [tokens_of(single.generate(single.plan(SpecConfig(max_new_tokens=30, **s), PROMPT))) for s in settings]
        vanilla = tokens_of(single.generate(single.plan(SpecConfig(mode="vanilla", max_new_tokens=30), PROMPT)))
        base = single.base
    with Session(source, devices=2) as multi:
        for s, ref in zip(settings, refs):
            records = list(multi.generate(multi.plan(SpecConfig(max_new_tokens=30, **s), PROMPT)))
            if not assert_greedy_equal(tokens_of(records), vanilla, base, PROMPT, case=s):
                continue
            assert tokens_of(records) == ref
            assert {sp.rank for r in records for sp in r.spans} == {0, 1}
            if s.get("tree_depth"):
                assert any(r.tree_tokens for r in records)
