"""Token trees and adaptive draft length on small random pairs: the tree attention against sequential
forwards, greedy equality with vanilla for several tree shapes (with and without layer parallelism
and calibration), caches that keep only the accepted path, tree records, and the adaptive policy."""
from __future__ import annotations

import itertools

import pytest
import torch

from conftest import assert_greedy_equal, tokens_of
from easyspec.core.engine.decoder import ForwardOptions, TreeAttention
from easyspec.core.planning import plan_run
from easyspec.core.engine.loop import Adaptive, Generation, Stopping, generate
from easyspec.core.settings import SpecConfig
from easyspec.core.engine.grouping import layer_groups
from easyspec.core.engine.records import RoundRecord, record_from_dict, record_to_dict
from easyspec.core.engine.tree import DraftTree, accept_greedy, expand_greedy

PROMPTS = [list(range(10, 30)), [65, 66, 67, 10, 200, 201]]
SHAPES = [(1, 3), (2, 2), (3, 4), (5, 3), (4, 1)]  # (depth, width)


def _vanilla(base, prompt, max_new=40):
    return tokens_of(generate(base, None, plan_run(SpecConfig(mode="vanilla", max_new_tokens=max_new), prompt, base,
                                                   None)))


def test_compact_keeps_the_chosen_slots_in_order(decoders):
    base, _ = decoders["qwen2"]
    cache = base.new_cache(16)
    cache.k[:, :, :10] = torch.arange(10.0)[None, None, :, None]
    cache.v[:, :, :10] = -torch.arange(10.0)[None, None, :, None]
    cache.length = 10
    cache.compact(4, torch.tensor([5, 7, 9]))
    assert cache.length == 7
    assert cache.k[0, 0, :7, 0].tolist() == [0, 1, 2, 3, 5, 7, 9]
    assert cache.v[0, 0, :7, 0].tolist() == [0, -1, -2, -3, -5, -7, -9]
    cache.compact(7, torch.tensor([], dtype=torch.long))
    assert cache.length == 7


@pytest.mark.parametrize("groups_n", [None, 4])
def test_tree_forward_equals_each_path_run_sequentially(decoders, groups_n):
    """Every node's logits and K/V under the tree mask equal a plain forward of its root-to-node path."""
    _, draft = decoders["llama"]
    groups = None if groups_n is None else layer_groups(draft.cfg.n_layers, groups_n)
    prefix = torch.tensor(PROMPTS[1])
    tree = DraftTree(torch.device("cpu"))
    with torch.inference_mode():
        cache = draft.new_cache(64)
        logits = draft.forward(prefix, 0, cache, ForwardOptions(groups=groups))
        node_logits = []
        for _ in range(3):
            expand_greedy(tree, logits, 3)
            tokens, att = tree.draft_inputs(len(prefix))
            step = ForwardOptions(groups=groups, all_logits=True, tree=att)
            logits = draft.forward(tokens, cache.length, cache, step)
            node_logits.append(logits)
        node_logits = torch.cat(node_logits)  # [M, V]
        parents = tree.parents.tolist()
        for i in range(tree.size):
            path, cur = [], i
            while cur >= 0:
                path.insert(0, int(tree.tokens[cur]))
                cur = parents[cur]
            ref_cache = draft.new_cache(64)
            ids = torch.cat([prefix, torch.tensor(path)])
            ref = draft.forward(ids, 0, ref_cache, ForwardOptions(groups=groups))
            torch.testing.assert_close(node_logits[i], ref[0], rtol=0, atol=1e-4)
            slot = len(prefix) + i
            torch.testing.assert_close(cache.k[:, :, slot], ref_cache.k[:, :, len(ids) - 1], rtol=0, atol=1e-5)
    assert len({tuple(r) for r in tree.anc.int().tolist()}) == tree.size  # really a tree of distinct nodes


def test_accept_greedy_walks_the_base_argmax():
    tree = DraftTree(torch.device("cpu"))
    tree.add_level(torch.tensor([4, 2]), torch.tensor([-1, -1]), torch.zeros(2))
    tree.add_level(torch.tensor([1, 3, 0]), torch.tensor([0, 1, 1]), torch.zeros(3))
    logits = torch.zeros(6, 5)
    for row, t in enumerate([2, 0, 3, 0, 4, 1]):  # root -> 2 (node 1) -> 3 (node 3) -> argmax 4 there
        logits[row, t] = 1.0
    assert accept_greedy(tree, logits) == ([1, 3], 4)
    logits[0] = 0
    logits[0, 1] = 1.0  # the base wants 1 after the root: no child matches
    assert accept_greedy(tree, logits) == ([], 1)


@pytest.mark.parametrize("family,prompt", [("qwen2", 0), ("llama", 1)])
def test_tree_greedy_equals_vanilla(decoders, family, prompt):
    base, draft = decoders[family]
    prompt = PROMPTS[prompt]
    settings = [dict(mode="speculative")] + [dict(mode="easyspec", layer_parallel=n, calibration=c)
                                              for n, c in itertools.product((1, 4), ("none", "every-round",
                                                                                      "on-mismatch"))]
    ref = _vanilla(base, prompt)
    accepted = 0
    for i, s in enumerate(settings):  # every setting with two shapes, every shape with several settings
        for depth, width in (SHAPES[i % len(SHAPES)], SHAPES[(i + 2) % len(SHAPES)]):
            records = list(generate(base, draft, plan_run(SpecConfig(max_new_tokens=40, tree_depth=depth,
                                                                    tree_width=width, **s), prompt, base, draft)))
            if not assert_greedy_equal(tokens_of(records), ref, base, prompt, case=(s, depth, width)):
                continue
            rounds = [r for r in records if r.tree_tokens]
            assert rounds and all(len(r.tree_tokens) <= depth * width for r in rounds)
            assert all(len(r.drafted) <= depth and r.accepted == len(r.tree_path) for r in rounds)
            accepted += sum(r.accepted for r in rounds)
    assert accepted > 0


@pytest.mark.parametrize("mode,n,policy", [("speculative", 1, "none"), ("easyspec", 4, "every-round"),
                                           ("easyspec", 3, "none")])
def test_tree_caches_keep_only_the_accepted_path(decoders, mode, n, policy):
    """After every round the base cache equals a fresh prefill of the committed tokens but the last;
    the draft cache too wherever it is exact (no tree entry off the accepted path survives)."""
    base, draft = decoders["qwen2"]
    prompt = PROMPTS[0]
    cfg = SpecConfig(mode=mode, layer_parallel=n, calibration=policy, tree_depth=3, tree_width=3,
                     max_new_tokens=40)
    plan = layer_groups(draft.cfg.n_layers, n) if mode == "easyspec" else None
    run = Generation(base, draft, plan_run(cfg, prompt, base, draft), Stopping())
    assert run.plan == plan
    checked = 0
    for rec in run.rounds():
        m = run.bcache.length
        assert m == run.n - 1
        with torch.inference_mode():
            fresh = base.new_cache(m)
            base.forward(run.ids[:m], 0, fresh)
            torch.testing.assert_close(run.bcache.k[:, :, :m], fresh.k, rtol=0, atol=1e-4)
            exact = run.dcache.length if mode == "speculative" else (run.exact_len if rec.calibrated else 0)
            if exact and rec.tree_path:
                fresh = draft.new_cache(exact)
                draft.forward(run.ids[:exact], 0, fresh)
                torch.testing.assert_close(run.dcache.k[:, :, :exact], fresh.k, rtol=0, atol=1e-4)
                checked += 1
        assert run.dcache.length <= run.n - 1
    if mode != "easyspec" or policy == "every-round":
        assert checked >= 3


def test_adaptive_policy_grows_and_shrinks():
    a = Adaptive(3)
    a.update(3, 3)
    assert a.length == 5
    a.update(5, 5)
    assert a.length == 6  # capped at twice the start
    a.update(6, 2)
    assert a.length == 5
    for _ in range(10):
        a.update(a.length, 0)
    assert a.length == 1


@pytest.mark.parametrize("tree_depth", [0, 3])
def test_adaptive_greedy_equals_vanilla_and_varies_the_length(decoders, tree_depth, monkeypatch):
    base, draft = decoders["llama"]
    prompt = PROMPTS[0]
    ref = _vanilla(base, prompt, 60)
    for threshold in (0.0, 0.05):  # 0: only the grow/shrink policy; then early stops as well
        monkeypatch.setattr(Adaptive, "CONFIDENCE", threshold)
        for mode in ("speculative", "easyspec"):
            cfg = SpecConfig(mode=mode, draft_len=3, tree_depth=tree_depth, tree_width=2, adaptive=True,
                             max_new_tokens=60)
            records = list(generate(base, draft, plan_run(cfg, prompt, base, draft)))
            if not assert_greedy_equal(tokens_of(records), ref, base, prompt, case=(mode, threshold)):
                continue
            depths = {_depth(r) for r in records if r.drafted}
            assert len(depths) > 1, (mode, threshold, depths)


def _depth(rec: RoundRecord) -> int:
    """Levels drafted in a round (a chain's length, a tree's depth)."""
    if not rec.tree_parents:
        return len(rec.drafted)
    depth = [0] * len(rec.tree_parents)
    for i, par in enumerate(rec.tree_parents):
        depth[i] = 1 if par < 0 else depth[par] + 1
    return max(depth)


def test_tree_records_round_trip_and_old_records_load(decoders):
    base, draft = decoders["qwen2"]
    records = list(generate(base, draft, plan_run(SpecConfig(tree_depth=2, tree_width=2, max_new_tokens=12),
                                                  PROMPTS[1], base, draft)))
    rec = next(r for r in records if r.tree_tokens)
    assert record_from_dict(record_to_dict(rec)) == rec
    old = record_to_dict(records[0])
    for key in ("tree_tokens", "tree_parents", "tree_path"):
        del old[key]
    assert record_from_dict(old).tree_tokens == ()
    spans = [s.label for s in rec.spans]
    assert any(label.startswith("tree step 2 (2 nodes)") for label in spans), spans
    assert any(label == "tree of 4 nodes" for label in spans), spans
    from easyspec.visualizations.timeline import timeline_figure

    shown = timeline_figure(records).to_json()
    assert "tree step 2 (2 nodes)" in shown and "tree of 4 nodes" in shown


def test_tree_settings_are_checked():
    for bad, flag in ((dict(tree_depth=-1), "--tree-depth"), (dict(tree_width=0), "--tree-width")):
        with pytest.raises(ValueError, match=flag):
            SpecConfig(**bad)
    assert SpecConfig.from_dict({k: v for k, v in SpecConfig().as_dict().items()
                                 if not k.startswith("tree") and k != "adaptive"}) == SpecConfig()


def test_tree_attention_rejects_bad_shapes():
    with pytest.raises(AssertionError):
        TreeAttention(torch.zeros(3, dtype=torch.long), torch.ones(2, 3, dtype=torch.bool))


def test_trees_refuse_sliding_window_models_past_the_window(decoders):
    from dataclasses import replace

    from easyspec.core.engine.decoder import Decoder

    base, draft = decoders["qwen2"]
    windowed = Decoder(replace(draft.cfg, sliding_window=16), draft.w)
    with pytest.raises(ValueError, match="sliding-window"):
        list(generate(base, windowed, plan_run(SpecConfig(tree_depth=2, max_new_tokens=8), PROMPTS[0], base, windowed)))
    short = list(generate(base, windowed, plan_run(SpecConfig(tree_depth=2, max_new_tokens=8), PROMPTS[1], base,
                                                   windowed)))
    assert tokens_of(short) == _vanilla(base, PROMPTS[1], 8)
