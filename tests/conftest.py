"""Shared fixtures: small random model pairs (fast) and helpers for exact greedy comparisons."""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from helpers import make_pair  # noqa: E402

TIE_MARGIN = 1e-5  # docs/conventions.md#ties
REAL_VANILLA: dict[str, list[int]] = {}  # real-pair vanilla outputs by prompt name, computed once per run
CPU = torch.device("cpu")


@pytest.fixture(scope="session")
def pair_dirs(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """Random (base, draft) checkpoints: a Qwen2 pair (q/k/v bias) and a Llama pair with llama3 RoPE."""
    root = tmp_path_factory.mktemp("pairs")
    llama3 = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
              "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    return {
        "qwen2": make_pair(root / "qwen2", "qwen2", noise=0.01),
        "llama": make_pair(root / "llama", "llama", noise=0.01, rope_parameters=llama3),
    }


@pytest.fixture(scope="session")
def decoders(pair_dirs):
    """name -> (base Decoder, draft Decoder) in fp32 on CPU."""
    from easyspec.core.models.loading import load_decoder

    return {name: (load_decoder(b, torch.float32, CPU), load_decoder(d, torch.float32, CPU))
            for name, (b, d) in pair_dirs.items()}


def tokens_of(records) -> list[int]:
    return [t for r in records for t in r.token_ids]


MAX_TIE_FRACTION = 0.25  # a test fails when more than this share of its greedy comparisons met a near-tie


@dataclass
class GreedyCases:
    """One test's greedy comparisons: how many, and which stopped at a genuine tie of the base (those
    cases are skipped, not passed; the others in the same loop still run)."""

    nodeid: str
    cases: int = 0
    ties: list[str] = field(default_factory=list)

    def verdict(self) -> None:
        """Fail when more than MAX_TIE_FRACTION of the cases tied; skip when every case tied."""
        if not self.ties:
            return
        listed = "; ".join(self.ties)
        if len(self.ties) == self.cases:
            pytest.skip(f"every greedy case ({self.cases}) met a genuine tie of the base: {listed}")
        if len(self.ties) > MAX_TIE_FRACTION * self.cases:
            raise AssertionError(f"{len(self.ties)} of {self.cases} greedy cases met a near-tie of the base "
                                 f"(more than {MAX_TIE_FRACTION:.0%}): {listed}")


_greedy_cases: list[GreedyCases] = []  # the running test's collector (the last one), then every test's


def assert_greedy_equal(tokens: list[int], reference: list[int], base, prompt_ids: list[int],
                        case: object = "") -> bool:
    """Token-for-token equality, except at a genuine tie of the base (top-2 logits within TIE_MARGIN):
    that (prompt, setting) `case` is recorded as skipped in the running test's GreedyCases, which fails
    the test once more than MAX_TIE_FRACTION of its cases tied. Any other difference fails at once.
    Returns True when equal, False when the case was skipped (the caller skips its other checks)."""
    assert _greedy_cases, "assert_greedy_equal runs inside a pytest test"
    cases = _greedy_cases[-1]
    cases.cases += 1
    if tokens == reference:
        return True
    i = next((j for j, (a, b) in enumerate(zip(tokens, reference)) if a != b), min(len(tokens), len(reference)))
    if i < min(len(tokens), len(reference)):
        with torch.inference_mode():
            ids = torch.tensor(prompt_ids + reference[:i])
            logits = base.forward(ids, 0, base.new_cache(len(ids)))[0]
        top2 = logits.topk(2).values
        margin = float(top2[0] - top2[1])
        if margin < TIE_MARGIN:
            cases.ties.append(f"{case or 'case ' + str(cases.cases)}: tie at new token {i}, margin {margin:.2e}")
            return False
    raise AssertionError(f"{case or 'case ' + str(cases.cases)}: outputs differ at new token {i}: "
                         f"{tokens[i:i + 5]} vs {reference[i:i + 5]} ({len(tokens)} vs {len(reference)} tokens)")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item) -> None:
    # set up before the fixtures, so that a module fixture's comparisons count for its first test
    _greedy_cases.append(GreedyCases(item.nodeid))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    result = yield
    _greedy_cases[-1].verdict()  # part of the call: an excess of ties fails the test, all ties skip it
    return result


@pytest.fixture(scope="module")
def app_ctx(pair_dirs, tmp_path_factory):
    """The dashboard's context on the small random pair, with a tuning cache of its own (nothing tuned)."""
    from easyspec.app.context import AppContext, AppOptions

    patch = pytest.MonkeyPatch()
    patch.setenv("EASYSPEC_CACHE", str(tmp_path_factory.mktemp("cache")))
    base, draft = pair_dirs["qwen2"]
    ctx = AppContext.start(AppOptions(base=str(base), draft=str(draft), allow_custom_models=True, probe=False))
    yield ctx
    ctx.close()
    patch.undo()


@pytest.fixture(scope="session")
def app_folder(tmp_path_factory):
    """The session app's folder: its log, and its cache (tuned plans) under cache/."""
    return tmp_path_factory.mktemp("app")


@pytest.fixture(scope="session")
def app_server(pair_dirs, app_folder):
    """(url, process) of `easyspec app` on the small random Qwen2 pair, on a free localhost port
    (one per test session)."""
    from app_server import app_process

    base, draft = pair_dirs["qwen2"]
    with app_process(base, draft, app_folder / "app.log") as (url, proc):
        yield url, proc


@pytest.fixture(scope="session")
def app_url(app_server):
    return app_server[0]


@pytest.fixture
def untuned_app(app_url, app_folder):
    """The session's app with no tuned plan cached: a test before it (in any order) may have tuned the pair."""
    import shutil

    shutil.rmtree(app_folder / "cache" / "tuning", ignore_errors=True)
    return app_url


GUARDED_LOGIN = ("operator", "s3cret pass")


@pytest.fixture(scope="session")
def guarded_app(pair_dirs, tmp_path_factory):
    """(url, process) of `easyspec app` with a login, G = 2 ranks, a short collective timeout and a
    memory budget, on the small random Qwen2 pair: the security and fault tests share it."""
    from app_server import app_process

    base, draft = pair_dirs["qwen2"]
    folder = tmp_path_factory.mktemp("guarded-app")
    (folder / "users.txt").write_text("# operators\n" + ":".join(GUARDED_LOGIN) + "\n")
    extra = ["--devices", "2", "--auth-file", str(folder / "users.txt"), "--timeout", "8",
             "--memory-budget-mb", "1"]
    with app_process(base, draft, folder / "app.log", extra) as (url, proc):
        yield url, proc


@pytest.fixture(scope="session")
def real_source():
    """Folders of the real offline pair; skips without the offline-pair extra, unless
    EASYSPEC_REQUIRE_REAL_PAIR=1 (CI) makes that a failure."""
    import os

    from easyspec.core.models.loading import resolve_pair
    from easyspec.core.models.offline_pair import OfflinePairError

    try:
        return resolve_pair(pair="qwen2.5-coder")
    except OfflinePairError as exc:
        if os.environ.get("EASYSPEC_REQUIRE_REAL_PAIR") == "1":
            raise
        pytest.skip(f"offline pair not available: {exc}")


BROWSER_SKIP = "browser test skipped: "  # the prefix that the closing summary counts


@pytest.fixture(scope="session")
def chromium():
    """Headless Debian Chromium through Playwright; skips without them (the run's closing summary says how
    many browser tests were skipped and why), unless CI requires a browser."""
    import os
    import shutil

    executable = os.environ.get("EASYSPEC_CHROMIUM", "/usr/bin/chromium")
    required = bool(os.environ.get("EASYSPEC_REQUIRE_BROWSER"))
    try:
        from playwright import sync_api
    except ImportError:
        if required:
            raise
        pytest.skip(f"{BROWSER_SKIP}playwright is not installed (pip install '.[test]')")
    if not shutil.which(executable):
        if required:
            raise RuntimeError(f"no Chromium at {executable}: apt-get install chromium")
        pytest.skip(f"{BROWSER_SKIP}no Chromium at {executable} (Debian: apt-get install chromium fonts-noto-cjk; "
                    f"elsewhere set EASYSPEC_CHROMIUM to a Chromium executable)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                                          "--disable-component-update", "--no-first-run"])
        yield browser
        browser.close()


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    return str(longrepr[2] if isinstance(longrepr, tuple) else longrepr)


def pytest_terminal_summary(terminalreporter) -> None:
    """Closing lines: the greedy cases skipped at near-ties, and the browser tests skipped (a fresh machine
    without Chromium would otherwise pass the suite quietly without them)."""
    tied = [c for c in _greedy_cases if c.ties]
    if tied:
        terminalreporter.write_sep("-", f"greedy cases skipped at a genuine tie of the base: "
                                        f"{sum(len(c.ties) for c in tied)} in {len(tied)} tests")
        for c in tied:
            terminalreporter.write_line(f"{c.nodeid}: {len(c.ties)} of {c.cases} cases: {'; '.join(c.ties)}")
    reasons: dict[str, int] = {}
    for report in terminalreporter.stats.get("skipped", []):
        reason = _skip_reason(report)
        if BROWSER_SKIP in reason:
            reason = reason.split(BROWSER_SKIP, 1)[1]
            reasons[reason] = reasons.get(reason, 0) + 1
    for reason, n in reasons.items():
        terminalreporter.write_line(f"{n} browser test{'s' if n > 1 else ''} skipped: {reason}", yellow=True,
                                    bold=True)
