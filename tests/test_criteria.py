"""A team's acceptance criteria: each setting of a pilot judged met or not, on measured and projected speedups."""
from __future__ import annotations

import pytest

from easyspec.core.evaluation.criteria import Criteria, judge
from easyspec.core.evaluation.pilot import PilotGrid


def _row(setting, mode, speedup, ar=None, reference=None, equal=None, tie=0, different=0):
    counts = dict.fromkeys(("greedy_equal", "greedy_tie", "greedy_different")) if equal is None else \
        {"greedy_equal": equal, "greedy_tie": tie, "greedy_different": different}
    return {"setting": setting, "mode": mode, "speedup": speedup, "acceptance_rate": ar, "reference": reference,
            **counts}


SUMMARY = [_row("vanilla", "vanilla", 1.0),
           _row("speculative k=5", "speculative", 1.10, ar=0.80, equal=3),
           _row("easyspec N=2 every-round k=5", "easyspec", 1.30, ar=0.76, reference="speculative k=5", equal=3),
           _row("easyspec N=4 none k=5", "easyspec", 1.05, ar=0.40, reference="speculative k=5", equal=2, tie=1),
           _row("easyspec N=4 every-round k=5", "easyspec", 0.90, ar=0.70, reference="speculative k=5", equal=2,
                different=1)]


def test_each_setting_is_judged_on_each_criterion():
    verdicts = {j.setting: j for j in judge(SUMMARY, Criteria(min_speedup=1.2, max_acceptance_drop=0.1))}
    assert "vanilla" not in verdicts and len(verdicts) == 4
    spec = verdicts["speculative k=5"]  # the reference itself: no acceptance drop to judge
    assert (spec.speedup_met, spec.acceptance_met, spec.equality_met, spec.met) == (False, None, True, False)
    good = verdicts["easyspec N=2 every-round k=5"]
    assert good.acceptance_drop == pytest.approx(0.05) and good.met is True
    collapsed = verdicts["easyspec N=4 none k=5"]  # 50% below sequential drafting; a rounding tie is allowed
    assert collapsed.acceptance_drop == pytest.approx(0.5) and collapsed.acceptance_met is False
    assert collapsed.equality_met is True and collapsed.met is False
    wrong = verdicts["easyspec N=4 every-round k=5"]  # a real difference never passes
    assert wrong.equality_met is False and wrong.acceptance_met is False  # 12.5% > 10%
    required = {j.setting: j for j in judge(SUMMARY, Criteria(equality="required"))}
    assert required["easyspec N=4 none k=5"].equality_met is False  # the tie fails "required"
    assert required["easyspec N=2 every-round k=5"].equality_met is True


def test_projected_speedups_are_judged_instead_of_the_measured_ones():
    projected = {"speculative k=5": 1.6, "easyspec N=2 every-round k=5": 2.1, "easyspec N=4 none k=5": 2.4}
    verdicts = {j.setting: j for j in judge(SUMMARY, Criteria(min_speedup=2.0), projected)}
    assert verdicts["easyspec N=2 every-round k=5"].speedup == 2.1 and verdicts["easyspec N=2 every-round k=5"].met
    assert verdicts["speculative k=5"].speedup_met is False
    assert verdicts["easyspec N=4 every-round k=5"].speedup is None  # nothing projected: not judged
    assert verdicts["easyspec N=4 every-round k=5"].speedup_met is None
    assert verdicts["easyspec N=4 none k=5"].acceptance_met is False  # acceptance stays the measured one


def test_what_does_not_apply_is_not_judged():
    sampled = [_row("vanilla", "vanilla", 1.0), _row("speculative k=3", "speculative", None, ar=0.5)]
    (only,) = judge(sampled, Criteria())
    assert (only.speedup_met, only.acceptance_met, only.equality_met, only.met) == (None, None, None, None)


@pytest.mark.parametrize("kwargs, message", [
    (dict(min_speedup=0), "minimum speedup must be above 0"),
    (dict(min_speedup=float("nan")), "minimum speedup must be above 0"),
    (dict(max_acceptance_drop=1.5), "maximum acceptance drop must be between 0 and 1"),
    (dict(equality="close enough"), "equality must be one of required, ties allowed"),
])
def test_bad_criteria_are_refused_with_a_message(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Criteria(**kwargs)


def test_the_grid_names_each_settings_reference():
    """EasySpec is compared with sequential drafting at the same k and in the same variant (tree, adaptive,
    draft precision); without sequential drafting in the grid there is no reference."""
    grid = PilotGrid(layer_parallel=(2,), calibration=("none",), draft_len=(3, 5), tree_depth=2, tree_width=2,
                     draft_dtypes=("float32", "int8"))
    labels = {s.label: s for s in grid.settings()}
    for s in labels.values():
        if s.config.mode == "easyspec":
            assert s.reference in labels and labels[s.reference].config.mode == "speculative", s.label
            ref = labels[s.reference].config
            assert (ref.draft_len, ref.tree_depth, ref.draft_dtype) == \
                (s.config.draft_len, s.config.tree_depth, s.config.draft_dtype), s.label
        else:
            assert s.reference is None
    assert labels["easyspec N=2 none k=5 tree 2x2 [int8]"].reference == "speculative k=5 tree 2x2 [int8]"
    alone = PilotGrid(layer_parallel=(2,), calibration=("none",), speculative=False)
    assert all(s.reference is None for s in alone.settings())
