"""The test-side tie rule of `conftest.assert_greedy_equal`: a near-tie of the base skips only its own
(prompt, setting), the rest of the loop still runs, the ties are counted and listed, and a test fails
once more than MAX_TIE_FRACTION of its cases tied (all tied: skipped, with the margins)."""
from __future__ import annotations

from pathlib import Path

pytest_plugins = ["pytester"]
HERE = Path(__file__).parent

INNER = '''
import torch
from conftest import assert_greedy_equal


class Base:
    """A stand-in base whose top two logits are `margin` apart at every position."""

    def __init__(self, margin):
        self.margin = margin

    def new_cache(self, n):
        return None

    def forward(self, ids, pos, cache):
        return torch.tensor([[1.0, 1.0 - self.margin, 0.0]])


def cases(tied, total, margin=0.0, after=None):
    for i in range(total):
        out = [1, 3] if i < tied else [1, 2]
        if assert_greedy_equal(out, [1, 2], Base(margin), [0], case=f"setting {i}") and after is not None:
            after.append(i)


def test_one_tie_in_five_runs_the_rest():
    checked = []
    cases(1, 5, after=checked)
    assert checked == [1, 2, 3, 4]


def test_two_ties_in_five_fail():
    cases(2, 5)


def test_every_case_tied_is_skipped():
    cases(3, 3, margin=2 ** -19)  # below TIE_MARGIN, exact in float32


def test_a_real_difference_fails_at_once():
    cases(1, 5, margin=0.5)
'''


def test_ties_are_counted_per_case(pytester):
    pytester.makeconftest((HERE / "conftest.py").read_text())
    pytester.makepyfile(helpers=(HERE / "helpers.py").read_text(), test_inner=INNER)
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=2, skipped=1)
    out = result.stdout.str()
    assert "2 of 5 greedy cases met a near-tie of the base (more than 25%)" in out
    assert "setting 0: outputs differ at new token 1: [3] vs [2]" in out  # margin 0.5: no tie
    result.stdout.fnmatch_lines([
        "*greedy cases skipped at a genuine tie of the base: 6 in 3 tests*",
        "*test_one_tie_in_five_runs_the_rest: 1 of 5 cases: setting 0: tie at new token 1, margin 0.00e+00",
        "*test_every_case_tied_is_skipped: 3 of 3 cases: setting 0: tie at new token 1, margin 1.91e-06; *"])
    skipped = pytester.runpytest_subprocess("-q", "-rs", "-p", "no:cacheprovider", "-k", "every_case")
    skipped.stdout.fnmatch_lines(["*every greedy case (3) met a genuine tie of the base: setting 0: tie at new "
                                  "token 1, margin 1.91e-06*"])
