"""Layer plans (`--groups`), the auto-tuner, and the acceptance monitor (issue: auto-tuning)."""
from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from conftest import CPU, assert_greedy_equal, tokens_of
from easyspec.core.engine.decoder import ForwardOptions
from easyspec.core.planning import plan_run
from easyspec.core.engine.loop import Stopping, generate
from easyspec.core.settings import SpecConfig
from easyspec.core.engine.grouping import describe, layer_groups, parse_plan
from easyspec.core.engine.monitor import ALERT, AcceptanceMonitor, expectation, likely_cause, rolling_acceptance
from easyspec.core.tuner.measure import measure_plan
from easyspec.core.tuner.probe import Probe
from easyspec.core.tuner.report import markdown
from easyspec.core.tuner.search import balanced, climb, neighbours, similarity
from easyspec.core.tuner.stats import paired_interval, split
from easyspec.core.tuner.tune import tune
from easyspec.core.tuner.types import TuneConfig
from helpers import hf_config, save_checkpoint

PLANTED = range(3, 9)  # layers whose residual contributions are scaled down: their inputs are nearly equal


# -- plans ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["0|1-4|5-8|9", "0-9", "0|1|2|3|4|5|6|7|8|9", " 0 | 1-8 | 9 "])
def test_plan_round_trip(text):
    assert describe(parse_plan(text, 10)) == text.replace(" ", "")


def test_equal_groups_are_a_plan():
    assert parse_plan(describe(layer_groups(24, 4)), 24) == layer_groups(24, 4)


@pytest.mark.parametrize("text, message", [
    ("", "groups separated by '|'"),
    ("0|1-4||5-9", "groups separated by '|'"),
    ("0|1-4|6-9", "layer 5 is missing"),
    ("0|1-4|4-9", "layer 4 appears twice"),
    ("0|1-4|5-10", "layer 10 does not exist"),
    ("0|1-4|5-8", "layers 9..9 are missing"),
    ("0|4-1|5-9", "runs backwards"),
    ("0|1-x|5-9", "not a layer number"),
    ("0|1-2-3|4-9", "not a layer number"),
    ("1-9", "layer 0 is missing"),
])
def test_bad_plans_say_what_is_wrong(text, message):
    with pytest.raises(ValueError, match=message.replace("|", r"\|").replace(".", r"\.")):
        parse_plan(text, 10)


@pytest.mark.parametrize("plan, policy", [("0|1-3|4-6|7", "every-round"), ("0-2|3|4-7", "none"),
                                          ("0|1-6|7", "on-mismatch")])
def test_explicit_plans_are_lossless(decoders, plan, policy):
    base, draft = decoders["qwen2"]
    prompt = list(range(40, 52))
    ref = tokens_of(generate(base, None, plan_run(SpecConfig(mode="vanilla", max_new_tokens=40), prompt, base, None)))
    got = tokens_of(generate(base, draft, plan_run(SpecConfig(groups=plan, calibration=policy, max_new_tokens=40),
                                                   prompt, base, draft)))
    assert_greedy_equal(got, ref, base, prompt, case=(plan, policy))


def test_auto_must_be_resolved_first(decoders):
    base, draft = decoders["qwen2"]
    with pytest.raises(ValueError, match="not been tuned yet"):  # no tuning: "auto" has no plan to resolve to
        plan_run(SpecConfig(groups="auto"), [1, 2, 3], base, draft)
    with pytest.raises(AssertionError, match="resolved RunPlan"):  # and the engine runs nothing unresolved
        list(generate(base, draft, SpecConfig(groups="auto")))


# -- the tuner --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def planted_dirs(tmp_path_factory):
    """A 12-layer pair whose layers 3..8 barely change the residual stream (planted similar layers)."""
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("planted")
    cfg = hf_config("qwen2", n_layers=12)
    base_dir = save_checkpoint(root / "base", cfg, 0)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    with torch.no_grad():
        for layer in PLANTED:
            model.model.layers[layer].self_attn.o_proj.weight.mul_(0.02)
            model.model.layers[layer].mlp.down_proj.weight.mul_(0.02)
    model.save_pretrained(base_dir)
    save_checkpoint(root / "draft", cfg, 1, base_state=model.state_dict(), noise=0.01)
    return base_dir, root / "draft"


@pytest.fixture(scope="module")
def planted(planted_dirs):
    from easyspec.core.models.loading import load_decoder

    return tuple(load_decoder(d, torch.float32, CPU) for d in planted_dirs)


def prompts(n: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 200, (12,), generator=g).tolist() for _ in range(n)]


def test_similarity_finds_the_planted_layers(planted):
    s = similarity(planted[1], prompts(2))
    adjacent = s.diagonal(1)
    assert all(adjacent[l] > 0.99 for l in range(3, 8))
    assert adjacent[0] < 0.9 and s[3, 8] > 0.98


def test_playback_acceptance_equals_a_real_run(planted):
    base, draft = planted
    stopping = Stopping()
    for prompt in prompts(2, seed=3):
        out = tokens_of(generate(base, None, plan_run(SpecConfig(mode="vanilla", max_new_tokens=30), prompt, base,
                                                      None)))
        real = list(generate(base, draft, plan_run(SpecConfig(groups="0|1-4|5-8|9-10|11", max_new_tokens=30), prompt,
                                                   base, draft)))
        played = measure_plan(base, draft, [(prompt, out)], "0|1-4|5-8|9-10|11", TuneConfig(max_new_tokens=30),
                              "test", stopping)
        assert (played.drafted, played.accepted) == (sum(len(r.drafted) for r in real), sum(r.accepted for r in real))
        # an output that ends at an end-of-sequence token: the played-back base knows nothing past it
        eos = next(t for i, t in enumerate(out) if i >= 10 and t not in out[:i])
        stop = Stopping(eos_ids=frozenset({eos}))
        cut = out[: out.index(eos) + 1]
        real = list(generate(base, draft, plan_run(SpecConfig(groups="0|1-4|5-8|9-10|11", max_new_tokens=30), prompt,
                                                   base, draft), stop))
        assert tokens_of(real) == cut
        played = measure_plan(base, draft, [(prompt, cut)], "0|1-4|5-8|9-10|11", TuneConfig(max_new_tokens=30),
                              "test", stop)
        assert (played.drafted, played.accepted) == (sum(len(r.drafted) for r in real), sum(r.accepted for r in real))
        assert all(r.accepted < len(r.token_ids) or r.stop for r in real)  # no acceptance counted past the stop


def test_probe_rounds_are_the_engines_own_draft_steps(planted):
    """Each simulated round equals drafting: exact cache up to p, then tokens p, p+1, .. through the plan."""
    base, draft = planted
    prompt = prompts(1, seed=4)[0]
    out = tokens_of(generate(base, None, plan_run(SpecConfig(mode="vanilla", max_new_tokens=10), prompt, base, None)))
    seq = torch.tensor(prompt + out)
    probe = Probe(draft, [(prompt, out)], draft_len=3)
    starts = range(len(prompt), len(seq) - 3 + 1)
    assert probe.rounds == len(starts)
    sequential = parse_plan("0|1|2|3|4|5|6|7|8|9|10|11", 12)
    for groups in (sequential, parse_plan("0-2|3-8|9-10|11", 12)):
        rounds = next(probe.logits(groups))  # [starts, 2, vocab]
        for i, p in enumerate(starts):
            cache = draft.new_cache(len(seq))
            draft.forward(seq[:p], 0, cache)
            for j in range(2):
                step = draft.forward(seq[p + j: p + j + 1], p + j, cache, ForwardOptions(groups=groups))
                torch.testing.assert_close(rounds[i, j], step[0], rtol=1e-4, atol=1e-4)
    # the predicted rate: each round accepts its leading run of matching proposals
    exact = draft.forward(seq, 0, draft.new_cache(len(seq)), ForwardOptions(all_logits=True)).argmax(-1)
    accepted = 0
    for p in starts:
        for j in range(3):
            if exact[p - 1 + j] != seq[p + j]:
                break
            accepted += 1
    assert probe.acceptance(sequential) == pytest.approx(accepted / (3 * len(starts)))


def test_boundary_search_moves_one_edge_within_the_group_limit():
    plan = parse_plan("0|1-4|5-8|9", 10)
    moves = {describe(p) for p in neighbours(plan, 4)}
    assert moves == {"0-1|2-4|5-8|9", "0|1-4|5-7|8-9"}  # moving edge 5 makes a group of 5 > 4 layers
    assert len(list(neighbours(plan, 5))) == 4
    assert describe(balanced(24, 7, 8)) == "0|1-4|5-8|9-12|13-17|18-22|23"  # larger groups later
    assert balanced(24, 4, 8) is None  # 22 middle layers in 2 groups: 11 > 8
    # steepest ascent toward a target plan, and the budget stops it
    target = parse_plan("0-2|3-7|8-9", 10)
    score = lambda g: -sum(abs(a[0] - b[0]) for a, b in zip(g, target))  # noqa: E731
    assert climb(score, parse_plan("0|1-5|6-9", 10), 5, lambda: True) == target
    assert climb(score, parse_plan("0|1-5|6-9", 10), 5, lambda: False) == parse_plan("0|1-5|6-9", 10)


def test_tuner_groups_the_planted_layers(planted):
    base, draft = planted
    result = tune(base, draft, prompts(4), TuneConfig(tolerance=0.05, max_new_tokens=32))
    assert result.prompts == 4 and result.held_out == 2  # searched on two, measured on the other two
    plan = parse_plan(result.plan, 12)
    # fewer sequential steps than equal groups of 4, acceptance within tolerance of N = 1 (same run)
    assert result.steps < len(layer_groups(12, 4))
    assert result.acceptance_rate >= 0.95 * result.baseline_rate
    assert any(b - a >= 5 and a <= 4 and b >= 8 for a, b in plan), result.plan  # one group spans the planted layers
    # the choice is the fewest-step candidate within tolerance
    ok = [c for c in result.candidates if c.acceptance_rate >= 0.95 * result.baseline_rate]
    assert result.steps == min(c.steps for c in ok)
    assert result.unmeasured > 0 and max(c.steps for c in result.candidates[1:]) == result.steps  # stopped early
    assert result.probed > len(result.candidates) and all(0 < c.probe <= 1 for c in result.candidates)
    assert all(len(c.per_prompt) == 2 and sum(a for a, _ in c.per_prompt) == c.accepted
               and sum(d for _, d in c.per_prompt) == c.drafted for c in result.candidates)
    table = [line for line in markdown(result).splitlines() if line.startswith("| ")]
    columns = {len(re.split(r"(?<!\\)\|", line)) for line in table}  # a plan's own '|' is escaped
    assert len(columns) == 2 and len(table) >= len(result.candidates) + 1  # the candidates' and the policies' tables
    assert "did not see" in markdown(result)
    full = tune(base, draft, prompts(4), TuneConfig(max_new_tokens=32, policies=False, exhaustive=True))
    assert full.plan == result.plan and full.unmeasured == 0 and len(full.candidates) > len(result.candidates)
    same = tune(base, draft, prompts(4), TuneConfig(max_new_tokens=32, policies=False, holdout=False))
    assert same.held_out == 0 and all(len(c.per_prompt) == 4 for c in same.candidates)
    assert "same 4 calibration" in markdown(same)
    assert {p.policy for p in result.policies} == {"none", "every-round", "on-mismatch"}
    assert result.recommended_policy in {p.policy for p in result.policies}
    none = next(p for p in result.policies if p.policy == "none")
    every = next(p for p in result.policies if p.policy == "every-round")
    assert none.acceptance_rate < every.acceptance_rate  # uncalibrated fuzzy entries cost acceptance


def test_tuning_is_cached_and_auto_resolves(planted_dirs, tmp_path, monkeypatch, capsys):
    from easyspec.app.cli import main

    monkeypatch.setenv("EASYSPEC_CACHE", str(tmp_path / "cache"))
    base, draft = map(str, planted_dirs)
    pair = ["--base", base, "--draft", draft]
    code = main(["generate", *pair, "--prompt", "abc", "--groups", "auto", "--max-new-tokens", "8"])
    assert code == 2 and "not been tuned yet" in capsys.readouterr().err
    prompt_file = tmp_path / "p.jsonl"
    prompt_file.write_text("\n".join(json.dumps({"prompt": p}) for p in ("hello there", "def f(x):")))
    code = main(["tune", *pair, "--prompts", str(prompt_file), "--max-new-tokens", "24", "--no-policies",
                 "--draft-len", "3", "--out", str(tmp_path / "tuning")])
    out, err = capsys.readouterr()
    assert code == 0, err
    saved = json.loads((tmp_path / "tuning.json").read_text())
    assert saved["draft_len"] == 3 and "draft length k = 3" in out  # acceptance rates hold for this k
    assert "Chosen plan" in out and saved["plan"] in out and list((tmp_path / "cache" / "tuning").glob("*.json"))
    code = main(["generate", *pair, "--prompt", "abc", "--groups", "auto", "--max-new-tokens", "16", "--json",
                 "--check-lossless"])
    out, err = capsys.readouterr()
    assert code == 0, err
    result = json.loads(out)
    assert result["settings"]["groups"] == saved["plan"] and result["lossless"]
    assert result["settings"]["expected_acceptance"] > 0
    assert f"plan {saved['plan']}" in err
    code = main(["generate", *pair, "--prompt", "abc", "--groups", "0|1-5|7-11"])
    assert code == 2 and "layer 6 is missing" in capsys.readouterr().err


def test_prompts_split_alternately_into_search_and_confirmation_halves():
    assert split(list("abcde"), True) == (list("ace"), list("bd"))  # a set of code then chat: both in each half
    assert split(["a"], True) == (["a"], ["a"]) and split(list("ab"), False) == (list("ab"), list("ab"))
    search, confirm = split(list("ab"), False)
    assert search is confirm  # one list: the tuner reports no held-out prompts


def test_paired_interval_resamples_prompts_in_pairs():
    base = [(8, 10), (4, 10), (6, 10), (9, 10)]
    assert paired_interval(base, base) == (0.0, 0.0)
    low, high = paired_interval([(a // 2, d) for a, d in base], base)  # about half on every prompt
    assert -0.56 < low <= high <= -0.44
    low, high = paired_interval([(8, 10), (2, 10), (6, 10), (9, 10)], base)  # one prompt worse
    assert low < -0.05 and high == 0.0
    assert paired_interval(base[:1], base[:1]) is None and paired_interval(base, base[:3]) is None


def test_cached_tuning_is_read_once_and_again_after_a_new_save(tmp_path, monkeypatch):
    from easyspec.core.tuner.cache import load_tuning, save_tuning, tuning_path
    from easyspec.core.tuner.types import Candidate, TuneResult

    monkeypatch.setenv("EASYSPEC_CACHE", str(tmp_path))
    first = TuneResult(plan="0|1-2|3", acceptance_rate=0.5, baseline_rate=0.6, steps=3, sequential_steps=4,
                       tolerance=0.05, candidates=(Candidate("0|1|2|3", 4, "sequential", 10, 6, 1.0,
                                                             per_prompt=((2, 4), (4, 6))),))
    save_tuning(first, "k")
    assert load_tuning("k") == first and load_tuning("k") is load_tuning("k")  # one read while unchanged
    second = replace(first, plan="0|1-3", steps=2)
    save_tuning(second, "k")
    assert load_tuning("k") == second
    tuning_path("k").write_text("{not json")
    assert load_tuning("k") is None and load_tuning("missing") is None


# -- monitoring ---------------------------------------------------------------------------------
def test_alert_fires_on_uncalibrated_large_groups_only(planted):
    base, draft = planted
    prompt = prompts(6, seed=5)[1]
    expected = tune(base, draft, prompts(3), TuneConfig(max_new_tokens=32, policies=False)).baseline_rate
    runs = {policy: list(generate(base, draft, plan_run(SpecConfig(layer_parallel=6, calibration=policy,
                                                                  max_new_tokens=96, expected_acceptance=expected), prompt, base, draft)))
            for policy in ("none", "every-round")}
    flagged = {policy: [r.index for r in recs if ALERT in r.flags] for policy, recs in runs.items()}
    assert flagged["none"] and not flagged["every-round"]
    assert rolling_acceptance(runs["none"])[-1][1] < expected / 2
    cause = likely_cause(SpecConfig(layer_parallel=6, calibration="none").as_dict(), 6)
    assert "calibration is off" in cause


def test_monitor_waits_for_enough_tokens_and_uses_a_floor_without_a_figure():
    m = AcceptanceMonitor(expectation(0.0))
    assert m.expected.source == "floor"
    assert m.update(5, 0) == ()  # one round is not enough to judge
    flags = [m.update(5, 0) for _ in range(11)]
    assert flags[-1] == (ALERT,)
    m = AcceptanceMonitor(expectation(0.8))
    assert all(m.update(5, 3) == () for _ in range(20))  # 60% is not "far below" 80%


def test_saved_runs_keep_the_flags(decoders, tmp_path):
    from easyspec.core.engine.records import RunHeader, load_run, save_run

    base, draft = decoders["qwen2"]
    cfg = SpecConfig(layer_parallel=6, calibration="none", max_new_tokens=60, expected_acceptance=1.0)
    records = list(generate(base, draft, plan_run(cfg, list(range(30, 40)), base, draft)))
    save_run(tmp_path / "r.jsonl", RunHeader(cfg.as_dict(), "b", "d", (1,), "cpu", "float32"), records)
    _, loaded = load_run(tmp_path / "r.jsonl")
    assert any(r.flags for r in records) and [r.flags for r in loaded] == [r.flags for r in records]
    assert SpecConfig.from_dict(cfg.as_dict()) == cfg
    assert Path(tmp_path / "r.jsonl").exists()


# -- the report's sentences follow its numbers ------------------------------------------------------
def _result(chosen_per_prompt, chosen_probe, policies=()) -> "TuneResult":
    """A held-out tuning by hand: N = 1 and one chosen 2-step plan, (accepted, drafted) per held-out prompt."""
    from easyspec.core.tuner.types import Candidate, PolicyResult, TuneResult

    def cand(plan, steps, origin, pairs, probe):
        return Candidate(plan, steps, origin, sum(d for _, d in pairs), sum(a for a, _ in pairs), 1.0, probe,
                         tuple(pairs))

    first = cand("0|1|2|3", 4, "sequential", [(80, 100), (70, 100), (90, 100), (76, 100)], 0.80)
    chosen = cand("0|1-3", 2, "similarity >= 0.9", chosen_per_prompt, chosen_probe)
    return TuneResult(plan=chosen.plan, acceptance_rate=chosen.acceptance_rate, baseline_rate=first.acceptance_rate,
                      steps=2, sequential_steps=4, tolerance=0.03, candidates=(first, chosen),
                      policies=tuple(PolicyResult(*p) for p in policies), recommended_policy="every-round",
                      prompts=8, held_out=4, probed=5)


def test_the_report_compares_the_search_halfs_prediction_with_the_held_out_change():
    # the probe predicts -3.0% on the search half; held out: -2.5% (inside its interval) or -13.3% (outside)
    close = _result([(82, 100), (62, 100), (88, 100), (76, 100)], 0.776)
    far = _result([(70, 100), (60, 100), (78, 100), (66, 100)], 0.776)
    for result in (close, far):
        assert "does not flatter" not in markdown(result)
        assert "The choice among the 2 drafted plans (the fewest steps within tolerance) was made on these " \
               "same rates, so they can flatter it" in markdown(result)
    lo, hi = paired_interval(close.candidates[1].per_prompt, close.candidates[0].per_prompt)
    assert lo <= -0.03 <= hi
    assert (f"Against N = 1 the chosen plan changed acceptance by -2.5% on the held-out half and by -3.0% as the "
            f"probe predicted on the search half: they agree within 0.5 points (-3.0% lies inside the 90% interval "
            f"{lo:+.1%} .. {hi:+.1%} on the held-out half).") in markdown(close)
    lo, hi = paired_interval(far.candidates[1].per_prompt, far.candidates[0].per_prompt)
    assert hi < -0.03
    assert (f"-13.3% on the held-out half and by -3.0% as the probe predicted on the search half: on the held-out "
            f"half it lost 10.3 points more than as the probe predicted on the search half, outside the 90% interval "
            f"{lo:+.1%} .. {hi:+.1%}.") in markdown(far)
    same = replace(close, held_out=0)
    assert "the best of 5 plans can look better on them than on others" in markdown(same)
    assert "Against N = 1" not in markdown(same)


def test_the_held_out_table_compares_the_tuned_plan_with_the_tuners_own_figure():
    import importlib.util

    script = Path(__file__).parents[1] / "benchmarks" / "tuning.py"
    spec = importlib.util.spec_from_file_location("bench_tuning", script)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = _result([(78, 100), (68, 100), (88, 100), (74, 100)], 0.78)  # -2.5% on the tuner's held-out half
    agree = bench.tuner_agreement(result, {"vs_n1": -0.03, "vs_n1_interval": [-0.06, 0.0]})
    assert agree.endswith("they agree within 0.5 points (-2.5% lies inside the 90% interval -6.0% .. +0.0% on these "
                          "held-out prompts).")
    lost = bench.tuner_agreement(result, {"vs_n1": -0.076, "vs_n1_interval": [-0.105, -0.049]})
    assert lost == ("Against N = 1 the tuned plan changed acceptance by -7.6% on these held-out prompts and by -2.5% "
                    "on the tuner's held-out half: on these held-out prompts it lost 5.1 points more than on the "
                    "tuner's held-out half, outside the 90% interval -10.5% .. -4.9%.")
    better = bench.tuner_agreement(result, {"vs_n1": 0.01, "vs_n1_interval": None})
    assert "it did 3.5 points better than on the tuner's held-out half." in better


def test_the_recommended_policy_is_explained_from_the_policies_figures():
    pairs = [(78, 100), (68, 100), (88, 100), (74, 100)]  # N = 1 pools 0.790: the floor is 0.766 at 3%
    fine = _result(pairs, 0.78, [("none", 0.60, 5.0, 0.0), ("every-round", 0.78, 4.0, 1.0),
                                 ("on-mismatch", 0.77, 3.9, 0.5)])
    assert "recommended **every-round** (the fastest of the 2 whose acceptance stays within tolerance, at least " \
           "0.766)" in markdown(fine)
    none = _result(pairs, 0.78, [("none", 0.60, 5.0, 0.0), ("every-round", 0.70, 4.0, 1.0),
                                 ("on-mismatch", 0.65, 3.9, 0.5)])
    assert "(no policy kept its acceptance within tolerance (at least 0.766): a fallback)" in markdown(none)
