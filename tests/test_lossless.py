"""The greedy check (core/engine/lossless.py): equal, rounding tie, or a real difference, and its margin."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from easyspec.core.engine.decoder import Decoder
from easyspec.core.planning import plan_run
from easyspec.core.engine.loop import Stopping, generate
from easyspec.core.settings import SpecConfig
from easyspec.core.engine.lossless import FP32_TIE_MARGIN, compare_greedy, fp32_copy, fp32_logits, stated_margin
from easyspec.core.engine.verdicts import GreedyCheck, count_verdicts, counts_text, same_column
from easyspec.core.models.loading import load_decoder

from conftest import CPU, tokens_of

PROMPT = [5, 80, 17, 200, 33, 9, 121]


def with_head_row(base: Decoder, b: int, row: torch.Tensor) -> Decoder:
    """The base with LM-head row b replaced (a copy: the shared fixture stays as it is)."""
    head = base.w.lm_head.clone()
    head[b] = row.to(head.dtype)
    return Decoder(base.cfg, replace(base.w, lm_head=head))


def top_two(base: Decoder, ids) -> tuple[int, int, torch.Tensor]:
    logits = fp32_logits(fp32_copy(base), ids)
    a, b = logits.topk(2).indices.tolist()
    return a, b, logits


def test_stated_margin_fp32_is_the_tie_rule_and_bf16_scales_with_the_logits():
    assert stated_margin(torch.float32, 25.0) == FP32_TIE_MARGIN == 1e-5
    assert stated_margin(torch.bfloat16, 20.0) == pytest.approx(4 * 2 ** -7 * 16)  # 4 ulps of a logit in [16, 32)
    assert stated_margin(torch.bfloat16, -40.0) == pytest.approx(4 * 2 ** -7 * 32)
    assert stated_margin(torch.bfloat16, 0.01) == pytest.approx(4 * 2 ** -7)  # floor at logit scale 1


def test_equal_outputs_need_no_recompute(decoders):
    base, _ = decoders["qwen2"]
    assert compare_greedy(base, PROMPT, [1, 2, 3], [1, 2, 3]) == GreedyCheck("equal", "float32")


def test_an_exact_tie_is_a_tie_and_a_wrong_token_is_different(decoders):
    base, _ = decoders["qwen2"]
    a, b, logits = top_two(base, PROMPT)
    tied = with_head_row(base, b, base.w.lm_head[a])  # tokens a and b now have identical logits
    check = compare_greedy(tied, PROMPT, [b, 7], [a, 9])
    assert (check.verdict, check.index, check.token, check.reference_token) == ("tie", 0, b, a)
    assert check.margin == 0.0 and check.gap == 0.0 and check.allowed == FP32_TIE_MARGIN
    assert check.fp32_pick in (a, b) and check.fp32_picks_one
    worst = int(logits.argmin())
    wrong = compare_greedy(base, PROMPT, [a, 3, worst], [a, 3, a])  # index 2 after the prompt + [a, 3]
    assert wrong.verdict == "different" and wrong.index == 2 and wrong.token == worst
    assert wrong.gap > wrong.allowed and wrong.fp32_pick != worst


def test_the_fp32_rule_rejects_a_gap_that_bf16_rounding_explains(pair_dirs):
    """A gap of about 1/128 of the logit: beyond 1e-5 (a bug in fp32), within 4 bf16 ulps (a tie in bf16)."""
    base16 = load_decoder(pair_dirs["qwen2"][0], torch.bfloat16, CPU)
    a, b, logits = top_two(base16, PROMPT)
    row = base16.w.lm_head[a].float() * (1 - torch.sign(logits[a]) * 2 ** -7)
    near16 = with_head_row(base16, b, row)
    check16 = compare_greedy(near16, PROMPT, [b], [a])
    assert check16.verdict == "tie" and check16.dtype == "bfloat16" and check16.fp32_pick == a
    assert FP32_TIE_MARGIN < check16.gap <= check16.allowed
    near32 = fp32_copy(near16)  # the same weights, an fp32 session
    check32 = compare_greedy(near32, PROMPT, [b], [a])
    assert check32.verdict == "different" and check32.gap == pytest.approx(check16.gap)


def test_a_length_difference_without_a_differing_token_is_different(decoders):
    base, _ = decoders["qwen2"]
    check = compare_greedy(base, PROMPT, [1, 2], [1, 2, 3])
    assert check.verdict == "different" and check.index == 2 and check.margin is None


def test_counts_and_cells():
    counts = count_verdicts(["equal", "tie", None, GreedyCheck("equal", "bfloat16"), "equal", "equal", "equal"])
    assert counts == {"equal": 5, "tie": 1, "different": 0}
    assert same_column({"equal": 4, "tie": 1, "different": 0}) == "5/5 (1 tie)"
    assert same_column({"equal": 5, "tie": 0, "different": 0}) == "5/5"
    assert same_column({"equal": 3, "tie": 1, "different": 1}) == "4/5 (1 tie, 1 different)"
    assert counts_text(counts) == "5 equal, 1 rounding tie, 0 different"


def test_bf16_runs_of_the_small_pair_differ_from_vanilla_only_by_ties(pair_dirs):
    """In bf16 every mode's greedy output equals vanilla's or differs first at a rounding tie."""
    from easyspec.core.session import Session

    base_dir, draft_dir = pair_dirs["qwen2"]
    with Session.open(base=str(base_dir), draft=str(draft_dir), dtype="bfloat16") as session:
        checks = {}
        for text in ("def f(x):", "The quick brown fox"):
            ids = session.encode(text, chat=False)
            ref = tokens_of(session.generate(session.plan(SpecConfig(mode="vanilla", max_new_tokens=32), ids)))
            for mode, n in (("speculative", 1), ("easyspec", 2), ("easyspec", 4)):
                cfg = SpecConfig(mode=mode, layer_parallel=n, max_new_tokens=32)
                checks[text, mode, n] = compare_greedy(session, ids, tokens_of(session.generate(session.plan(cfg,
                                                                                                             ids))), ref)
        assert all(c.verdict in ("equal", "tie") for c in checks.values()), {k: c.describe() for k, c in checks.items()}
        assert session.fp32_base() is session.fp32_base()  # upcast once per session


def test_an_fp32_session_checks_with_its_own_base(pair_dirs):
    from easyspec.core.session import Session

    base_dir, draft_dir = pair_dirs["qwen2"]
    with Session.open(base=str(base_dir), draft=str(draft_dir)) as session:
        assert session.fp32_base() is session.base
        ids = session.encode("hello", chat=False)
        ref = tokens_of(generate(session.base, None, plan_run(SpecConfig(mode="vanilla", max_new_tokens=8), ids,
                                                              session.base, None), Stopping()))
        bad = ref[:3] + [int(fp32_logits(session.base, ids + ref[:3]).argmin())] + ref[4:]
        assert compare_greedy(session, ids, bad, ref).verdict == "different"


# -- where the counts are shown: Compare badge, Pilot rows and summary, the report, How it works -------------

@pytest.fixture(scope="module")
def tied_runs(decoders):
    """(tied base, prompt, reference records, records that differ at a rounding tie, at a real difference):
    the base with LM-head row b set to row a, so that tokens a and b have identical logits after PROMPT."""
    base, _ = decoders["qwen2"]
    a, b, logits = top_two(base, PROMPT)
    tied = with_head_row(base, b, base.w.lm_head[a])
    ref = list(generate(tied, None, plan_run(SpecConfig(mode="vanilla", max_new_tokens=6), PROMPT, tied, None),
                        Stopping()))
    first = ref[0].token_ids[0]
    other = b if first == a else a  # the tied token greedy did not pick
    worst = int(fp32_logits(tied, PROMPT).argmin())
    swap = lambda t: [replace(ref[0], token_ids=(t, *ref[0].token_ids[1:])), *ref[1:]]  # noqa: E731
    return tied, PROMPT, ref, swap(other), swap(worst)


def _live(records, mode):
    from helpers import byte_tokenizer

    from easyspec.app.live import LiveRun

    live = LiveRun(byte_tokenizer(), mode, label=mode)
    live.add(records)
    live.finish()
    return live


def test_the_compare_badge_counts_ties_and_real_differences(tied_runs):
    pytest.importorskip("gradio")
    from easyspec.app.compare_tab import equality_note, greedy_checks, summary_rows
    from easyspec.visualizations.cards import badge_html

    tied, prompt, ref, tie, wrong = tied_runs
    lives = [_live(ref, "vanilla"), _live(ref, "speculative"), _live(tie, "easyspec")]
    rows, equal, parts = summary_rows(lives, greedy_checks(tied, prompt, lives))
    assert equal == "tie" and [r[-1] for r in rows] == ["yes", "yes", "rounding tie"]
    assert parts[0] == "1 equal, 1 rounding tie, 0 different" and "rounding tie at new token 0" in parts[1]
    badge = badge_html(equal, equality_note(parts, "en"))
    assert 'data-equal="tie"' in badge and "identical tokens: up to rounding ties" in badge
    assert "1 equal, 1 rounding tie, 0 different" in badge
    ja = badge_html(equal, equality_note(parts, "ja"), "ja")
    assert "一致 1、丸めによる同点 1、違い 0" in ja and "新規トークン 0 で丸めによる同点" in ja
    lives.append(_live(wrong, "easyspec"))
    rows, equal, parts = summary_rows(lives, greedy_checks(tied, prompt, lives))
    assert equal is False and rows[-1][-1] == "no" and parts[0] == "1 equal, 1 rounding tie, 1 different"
    assert 'data-equal="no"' in badge_html(equal, equality_note(parts, "en"))
    assert "新規トークン 0 で実際の違い" in equality_note(parts, "ja")


def test_pilot_rows_summary_and_report_count_ties_and_real_differences(tied_runs):
    from dataclasses import asdict

    from easyspec.core.evaluation.pilot import PilotGrid, PilotRun, PilotSetting, result_row, summarise
    from easyspec.core.evaluation.report import conclusion, setting_rows

    tied, prompt, ref, tie, wrong = tied_runs
    vanilla_setting = PilotSetting("vanilla", SpecConfig(mode="vanilla", max_new_tokens=6))
    spec = PilotSetting("speculative k=5", SpecConfig(mode="speculative", max_new_tokens=6))
    vanilla = PilotRun(0, vanilla_setting, tuple(ref), tuple(tokens_of(ref)),
                       result_row(0, vanilla_setting, len(prompt), ref, None))

    def run(i, records):
        check = compare_greedy(tied, prompt, tokens_of(records), tokens_of(ref))
        return PilotRun(i, spec, tuple(records), tuple(tokens_of(records)),
                        result_row(i, spec, len(prompt), records, vanilla, check))

    runs = [vanilla, run(0, ref), run(0, tie)]
    assert [r.row["greedy_check"] for r in runs] == [None, "equal", "tie"] and runs[2].row["fp32_gap"] == 0.0
    summary = summarise([r.row for r in runs])
    assert (summary[1]["greedy_equal"], summary[1]["greedy_tie"], summary[1]["greedy_different"]) == (1, 1, 0)
    grid = asdict(PilotGrid(max_new_tokens=6))
    settings = setting_rows(runs)
    assert (settings[1]["equal_count"], settings[1]["tie_count"], settings[1]["different_count"]) == (1, 1, 0)
    said = conclusion(settings, grid, {"dtype": "float32"}, {}, "en")
    assert any(c.startswith("Output unchanged up to rounding: 1 of 2 greedy comparisons") and "the other 1 " in c
               for c in said), said
    settings = setting_rows([*runs, run(0, wrong)])
    said = conclusion(settings, grid, {"dtype": "float32"}, {}, "en")
    assert any(c.startswith("Bug: 1 of 3 greedy comparisons differ") for c in said), said
    assert any(c.startswith("バグ：") for c in conclusion(settings, grid, {"dtype": "float32"}, {}, "ja"))


def test_how_it_works_evidence_counts_ties_and_real_differences(tied_runs):
    pytest.importorskip("gradio")
    from easyspec.app.explainer_tab import evidence_rows
    from easyspec.app.state import RunSummary, prompt_key

    tied, prompt, ref, tie, wrong = tied_runs
    runs = (("vanilla", "vanilla", ref), ("spec", "speculative", tie), ("easy", "easyspec", ref))
    log = [RunSummary("compare", prompt_key(prompt), "p", label, mode, True, tuple(tokens_of(recs)), True,
                      tuple(prompt)) for label, mode, recs in runs]
    assert evidence_rows(log, tied) == [["p", "rounding tie", 1, 0, 3, "vanilla, spec, easy"]]
    log.append(replace(log[1], label="bad", token_ids=tuple(tokens_of(wrong))))
    assert evidence_rows(log, tied)[0][1:4] == ["NO", 1, 1]
