"""Token trees and adaptive drafting on the real offline pair (Qwen2.5-Coder 0.5B / 1.5B, fp32):
greedy output equals vanilla on one device and on 2 CPU gloo ranks. A few prompts, short outputs;
run it under `flock /tmp/easyspec-realpair.lock` on a shared machine."""
from __future__ import annotations

import gc

import pytest

from conftest import assert_greedy_equal, tokens_of
from test_real_pair import NEW_TOKENS, PROMPTS

pytestmark = pytest.mark.real_pair
NAMES = ("code-fib", "chat-sky")
SINGLE = [dict(mode="speculative", tree_depth=4, tree_width=3),
          dict(layer_parallel=4, calibration="every-round", tree_depth=5, tree_width=4),
          dict(layer_parallel=2, calibration="none", tree_depth=3, tree_width=2),
          dict(layer_parallel=4, calibration="on-mismatch", tree_depth=4, tree_width=4, adaptive=True),
          dict(layer_parallel=4, adaptive=True)]
TWO_RANKS = [dict(layer_parallel=2, calibration="every-round", tree_depth=4, tree_width=3),
             dict(layer_parallel=2, calibration="on-mismatch", tree_depth=3, tree_width=2, adaptive=True)]


@pytest.fixture(scope="module")
def references(real_source):
    """Vanilla tokens per prompt, and one single-device session's check of every SINGLE setting."""
    from easyspec.core.settings import SpecConfig
    from easyspec.core.session import Session

    out = {}
    with Session(real_source) as s:
        for name in NAMES:
            ids = s.encode(PROMPTS[name], chat=True)
            ref = tokens_of(s.generate(s.plan(SpecConfig(mode="vanilla", max_new_tokens=NEW_TOKENS), ids)))
            accepted = 0
            for setting in SINGLE:
                records = list(s.generate(s.plan(SpecConfig(max_new_tokens=NEW_TOKENS, **setting), ids)))
                if assert_greedy_equal(tokens_of(records), ref, s.base, ids, case=(name, setting)):
                    accepted += sum(r.accepted for r in records)
            assert accepted > NEW_TOKENS  # the real draft agrees with the base often
            out[name] = (ids, ref)
    gc.collect()
    return out


def test_trees_equal_vanilla_on_one_device(references):
    assert set(references) == set(NAMES)


def test_trees_equal_vanilla_on_two_ranks(real_source, references):
    from easyspec.core.settings import SpecConfig
    from easyspec.core.session import Session

    with Session(real_source, devices=2) as s:
        for name in NAMES:
            ids, ref = references[name]
            for setting in TWO_RANKS:
                records = list(s.generate(s.plan(SpecConfig(max_new_tokens=NEW_TOKENS, **setting), ids)))
                assert {sp.rank for r in records for sp in r.spans} == {0, 1}
                assert any(r.tree_tokens for r in records)
                assert_greedy_equal(tokens_of(records), ref, s.base, ids, case=(name, setting))
