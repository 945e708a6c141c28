"""--on-low-acceptance fallback (core.engine.monitor.FallbackGuard) on a small random pair: a plan that collapses
acceptance switches the run to sequential drafting and then, when that does not pay, to no drafting;
every switch is a round-record flag, and the greedy output stays vanilla's before and after each switch."""
from __future__ import annotations

import pytest

from conftest import tokens_of
from easyspec.core.planning import plan_run
from easyspec.core.engine.loop import generate
from easyspec.core.settings import SpecConfig
from easyspec.core.engine.monitor import ALERT, BASE_TIMING, OFF, SEQUENTIAL, FallbackGuard, fallback_summary

PROMPT = list(range(10, 30))
# one fuzzy group of all 8 draft layers, never calibrated, judged against a measured 90%: acceptance collapses
COLLAPSE = dict(mode="easyspec", groups="0-7", calibration="none", draft_len=5, max_new_tokens=120,
                expected_acceptance=0.9)


def _vanilla(base):
    return tokens_of(generate(base, None, plan_run(SpecConfig(mode="vanilla", max_new_tokens=120), PROMPT, base, None)))


def _switch(records, flag):
    return next((r.index for r in records if flag in r.flags), None)


def test_guard_switches_after_the_stated_rounds_and_only_when_drafting_does_not_pay():
    g = FallbackGuard(base_token_s=0.01)
    for _ in range(FallbackGuard.ROUNDS - 1):
        assert g.update((ALERT,), True, 0.1, 2) == ()
    assert g.update((), True, 0.1, 2) == ()  # a healthy round resets the count
    for _ in range(FallbackGuard.ROUNDS - 1):
        assert g.update((ALERT,), True, 0.1, 2) == ()
    assert g.update((ALERT,), True, 0.1, 2) == (SEQUENTIAL,) and g.stage == "sequential" and g.drafts()
    for _ in range(FallbackGuard.ROUNDS - 1):
        assert g.update((ALERT,), True, 0.05, 1) == ()  # 0.05 s per token > 0.01 s of the base alone
    assert g.update((ALERT,), True, 0.004, 1) == ()  # one round that paid: not "stays above"
    for _ in range(FallbackGuard.ROUNDS - 1):
        assert g.update((), True, 0.05, 1) == ()
    assert g.update((), True, 0.05, 1) == (OFF,) and not g.drafts()
    # without the probe's figure the guard asks for one base-only round and measures the base on it
    g = FallbackGuard()
    for _ in range(FallbackGuard.ROUNDS):
        g.update((ALERT,), True, 0.1, 2)
    assert g.wants_base_round() and not g.drafts()
    assert g.update((), False, 0.02, 1) == (BASE_TIMING,) and g.base_token_s == 0.02 and g.drafts()


@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_collapsing_plan_falls_back_and_output_stays_vanillas(decoders, family):
    base, draft = decoders[family]
    ref = _vanilla(base)
    warned = list(generate(base, draft, plan_run(SpecConfig(**COLLAPSE), PROMPT, base, draft)))
    assert any(ALERT in r.flags for r in warned), "the plan did not collapse acceptance: the test exercises nothing"
    assert _switch(warned, SEQUENTIAL) is None and tokens_of(warned) == ref
    # base_token_s: an impossible 1 ns per token (drafting never pays) or 1000 s (it always does)
    for base_s, off in ((1e-9, True), (1e3, False)):
        records = list(generate(base, draft, plan_run(SpecConfig(**COLLAPSE, on_low_acceptance="fallback",
                                                                   base_token_s=base_s), PROMPT, base, draft)))
        seq = _switch(records, SEQUENTIAL)
        assert seq is not None, [r.flags for r in records]
        tokens, upto = tokens_of(records), sum(len(r.token_ids) for r in records[: seq + 1])
        assert tokens[:upto] == ref[:upto] and tokens[upto:] == ref[upto:] and len(tokens) == len(ref)
        flagged = [r.index for r in records if ALERT in r.flags]
        assert flagged[:FallbackGuard.ROUNDS] == list(range(flagged[0], flagged[0] + FallbackGuard.ROUNDS))
        after = [r for r in records if r.index > seq]
        assert all(r.calibrated for r in after if r.drafted)  # every-round calibration from the switch on
        assert sum(r.accepted for r in after) > 0
        stopped = _switch(records, OFF)
        if off:
            assert stopped == seq + FallbackGuard.ROUNDS, [r.flags for r in records]
            assert all(not r.drafted for r in records if r.index > stopped)
            assert fallback_summary(records) == (f"fallback: sequential drafting (N = 1, every-round calibration) "
                                                 f"after round {seq}, then drafting off after round {stopped}")
        else:
            assert stopped is None and all(r.drafted for r in after[:-1])
        assert not any(BASE_TIMING in r.flags for r in records)  # the base's speed was given


def test_without_a_probe_the_run_times_the_base_itself(decoders):
    base, draft = decoders["qwen2"]
    records = list(generate(base, draft, plan_run(SpecConfig(**COLLAPSE, on_low_acceptance="fallback"), PROMPT, base,
                                                  draft)))
    seq = _switch(records, SEQUENTIAL)
    timing = records[seq + 1]
    assert BASE_TIMING in timing.flags and not timing.drafted and timing.origins == ("bonus",)
    assert tokens_of(records) == _vanilla(base)


def test_speculative_mode_with_fallback_keeps_the_output_and_bad_settings_are_refused(decoders):
    base, draft = decoders["qwen2"]
    cfg = SpecConfig(mode="speculative", draft_len=5, max_new_tokens=60, expected_acceptance=1.0,
                     on_low_acceptance="fallback", base_token_s=1e-9)
    records = list(generate(base, draft, plan_run(cfg, PROMPT, base, draft)))
    assert tokens_of(records) == tokens_of(generate(base, None, plan_run(SpecConfig(mode="vanilla", max_new_tokens=60),
                                                                         PROMPT, base, None)))
    with pytest.raises(ValueError, match="--on-low-acceptance 'stop': choose one of warn, fallback"):
        SpecConfig(on_low_acceptance="stop")
    with pytest.raises(ValueError, match="base seconds per token must be >= 0"):
        SpecConfig(base_token_s=-1.0)


def test_timeline_marks_each_switch(decoders):
    from easyspec.visualizations.timeline import timeline_figure

    base, draft = decoders["qwen2"]
    records = list(generate(base, draft, plan_run(SpecConfig(**COLLAPSE, on_low_acceptance="fallback",
                                                               base_token_s=1e-9), PROMPT, base, draft)))
    fig = timeline_figure(records)
    texts = [a.text for a in fig.layout.annotations]
    seq, off = _switch(records, SEQUENTIAL), _switch(records, OFF)
    assert texts == [f"fallback: sequential drafting (after round {seq})", f"fallback: drafting off (after round {off})"]
    assert [s.x0 for s in fig.layout.shapes if s.line.dash == "dash"] == \
        [records[seq].end_ns / 1e6, records[off].end_ns / 1e6]
    # the first label reads left of its line, the second right of its own: they cannot overlap
    assert [(a.xanchor, a.x) for a in fig.layout.annotations] == \
        [("right", records[seq].end_ns / 1e6), ("left", records[off].end_ns / 1e6)]


def test_cli_names_the_fallback_in_its_summary(capsys, pair_dirs):
    import json

    from easyspec.app.cli import main

    base, draft = pair_dirs["qwen2"]
    common = ["generate", "--base", str(base), "--draft", str(draft), "--prompt", "The quick brown fox",
              "--max-new-tokens", "80", "--json"]
    assert main(common + ["--mode", "vanilla"]) == 0
    ref = json.loads(capsys.readouterr().out)["token_ids"]
    assert main(common + ["--groups", "0-7", "--calibration", "none", "--on-low-acceptance", "fallback"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["token_ids"] == ref
    assert "low acceptance" in err.lower() or "Acceptance fell" in err, err  # the floor's alert came first
    assert "easyspec: fallback after round " in err and "sequential drafting (N = 1, every-round calibration)" in err
    assert ", fallback: sequential drafting (N = 1, every-round calibration) after round " in err.splitlines()[-1]
    assert main(common + ["--on-low-acceptance", "retry"]) == 2
    assert "--on-low-acceptance 'retry': choose one of warn, fallback" in capsys.readouterr().err


def test_fallback_on_two_cpu_ranks_keeps_vanillas_tokens(pair_dirs):
    """The multi-device form: the switch to sequential drafting (groups of one layer, announced to the other
    rank) and then to none, on two gloo ranks, with the tokens of single-device vanilla."""
    from easyspec.core.models.loading import resolve_pair
    from easyspec.core.session import Session

    base, draft = pair_dirs["qwen2"]
    source = resolve_pair(str(base), str(draft))
    settings = dict(mode="easyspec", groups="0-1|2-3|4-5|6-7", calibration="none", draft_len=5, max_new_tokens=120,
                    expected_acceptance=0.9, on_low_acceptance="fallback", base_token_s=1e-9)
    with Session(source) as one:
        ref = tokens_of(one.generate(one.plan(SpecConfig(mode="vanilla", max_new_tokens=120), PROMPT)))
    with Session(source, devices=2) as two:
        records = list(two.generate(two.plan(SpecConfig(**settings), PROMPT)))
    seq, off = _switch(records, SEQUENTIAL), _switch(records, OFF)
    assert seq is not None and off is not None and seq < off, [r.flags for r in records]
    assert all(not r.drafted for r in records[off + 1:]) and tokens_of(records) == ref
    assert {sp.rank for r in records for sp in r.spans} == {0, 1}
