"""The dashboard in a real browser: headless Debian Chromium driven by Playwright.

Opens the app (small random pair), runs a generation and watches the coloured text grow round by
round, checks the live timeline's spans and the metric cards, runs a Compare and reads the
equality badge, runs a small Pilot and opens How it works. Screenshots go to
results/screenshots/browser_test/. Skips when Playwright or /usr/bin/chromium is missing (CI
installs both: see .ci/run).
"""
from __future__ import annotations

from pathlib import Path

import pytest

SHOTS = Path(__file__).resolve().parents[1] / "results" / "screenshots" / "browser_test"
TIMEOUT_MS = 240_000  # generous: a loaded 2-core machine

WATCH_TOKENS = """(selector) => {
    window.__esCounts = [];
    const root = document.querySelector(selector);
    const count = () => window.__esCounts.push(root.querySelectorAll('.es-tok').length);
    new MutationObserver(count).observe(root, {childList: true, subtree: true, characterData: true});
}"""

PLOT_BARS = """(selector) => {
    const plot = document.querySelector(selector + ' .js-plotly-plot');
    if (!plot || !plot.data) return null;
    const bars = plot.data.filter(t => t.type === 'bar');
    return {traces: bars.map(t => t.name), spans: bars.reduce((n, t) => n + t.x.length, 0),
            drawn: plot.querySelectorAll('.bars path').length, lanes: (plot.layout.yaxis.categoryarray || []).length};
}"""


@pytest.fixture(scope="module")
def page(app_url, chromium):
    """One page on the session's browser (`conftest.chromium`: one Playwright per test session, since a second
    sync Playwright cannot start while the first one's event loop runs)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    pg = chromium.new_page(viewport={"width": 1500, "height": 1000})
    pg.set_default_timeout(TIMEOUT_MS)
    pg.goto(app_url)
    pg.wait_for_selector("#gen-run")
    yield pg
    pg.close()


def _set_number(page, selector: str, value: int) -> None:
    box = page.locator(f"{selector} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def _wait_text(page, selector: str, text: str) -> None:
    page.wait_for_function("([s, t]) => (document.querySelector(s)?.innerText || '').includes(t)", arg=[selector, text],
                           timeout=TIMEOUT_MS)


def test_generate_streams_text_timeline_and_metrics(page):
    page.fill("#gen-prompt textarea", "The quick brown fox")
    _set_number(page, "#gen-max-new", 250)
    page.evaluate(WATCH_TOKENS, "#gen-text")
    page.click("#gen-run")
    _wait_text(page, "#gen-status", "Running")
    _wait_text(page, "#gen-status", "Done")
    page.wait_for_timeout(500)
    page.screenshot(path=str(SHOTS / "generate.png"), full_page=True)
    counts = page.evaluate("window.__esCounts")
    seen = sorted(set(c for c in counts if c > 0))
    assert seen[-1] == 250, counts
    assert len(seen) >= 3, f"the text did not grow in steps: {counts}"  # streamed, not all at once
    firsts = [counts.index(c) for c in seen]
    assert firsts == sorted(firsts), counts  # it only ever grew
    assert "250 tokens" in page.inner_text("#gen-status")
    plot = page.evaluate(PLOT_BARS, "#gen-timeline")
    assert plot is not None and plot["spans"] > 100 and plot["drawn"] > 0
    assert {"draft attention", "draft MLP", "verify (base forward)", "calibrate (exact draft pass)"} <= \
        set(plot["traces"])
    tps = float(page.inner_text("#gen-cards [data-metric=tokens_per_s] .es-card-value"))
    ar = float(page.inner_text("#gen-cards [data-metric=acceptance_rate] .es-card-value"))
    al = float(page.inner_text("#gen-cards [data-metric=mean_accepted_length] .es-card-value"))
    assert tps > 0 and 0 <= ar <= 1 and al >= 1
    assert page.locator("#gen-text [data-origin=accepted]").count() > 0
    per_position = page.evaluate(PLOT_BARS, "#gen-per-position")
    assert per_position["spans"] == 5  # k = 5 draft positions


STOP_AT_ROUND = """(at) => {
    // Click Stop the moment the status first shows a running round >= at, and note that round.
    window.__esStop = null;
    const status = document.querySelector('#gen-status');
    const watch = new MutationObserver(() => {
        const m = (status.innerText || '').match(/(Running|Replaying)[^\\n]* round (\\d+)/);
        if (m && Number(m[2]) >= at && !window.__esStop) {
            window.__esStop = {round: Number(m[2])};
            document.querySelector('#gen-stop').click();
            watch.disconnect();
        }
    });
    watch.observe(status, {childList: true, subtree: true, characterData: true});
}"""


def _stop_at_round(page, start, at: int = 3) -> tuple[int, int, str]:
    """Start a run with `start()`, click Stop once round `at` shows; (round shown at the click, last round, status)."""
    page.evaluate(STOP_AT_ROUND, at)
    start()
    _wait_text(page, "#gen-status", "Stopped")
    status = page.inner_text("#gen-status")
    clicked = page.evaluate("window.__esStop")
    assert clicked is not None, status
    return clicked["round"], int(status.split("after round ")[1].split(":")[0]), status


def test_stop_ends_a_replay_within_one_round(page, tmp_path):
    from easyspec.core.settings import SpecConfig
    from easyspec.core.engine.records import RoundRecord, RunHeader, Span, save_run

    second = 1_000_000_000
    records = [RoundRecord(i, (70 + i % 20,), ("prefill" if i == 0 else "bonus",), (), 0, {"verify": 0.4},
                           (Span("verify", i * second // 2, i * second // 2 + 4 * second // 10),),
                           end_ns=(i + 1) * second // 2) for i in range(40)]  # 20 s at the recorded pace
    path = tmp_path / "slow_run.jsonl"
    save_run(path, RunHeader(SpecConfig(mode="vanilla").as_dict(), "synthetic", None, (1, 2), "cpu", "float32"),
             records)
    page.get_by_role("tab", name="Generate").click()
    page.get_by_text("Replay a saved run").click()
    page.set_input_files("#gen-replay-file input[type=file]", str(path))
    page.get_by_label("recorded pace").check()
    clicked, stopped_at, status = _stop_at_round(page, lambda: page.click("#gen-replay"))
    assert 3 <= clicked <= stopped_at <= clicked + 1, (clicked, status)  # a round is 0.5 s at this pace


@pytest.fixture(scope="module")
def two_rank_app(pair_dirs, tmp_path_factory):
    """An app of its own with G = 2 CPU ranks on the small pair: its worker rank can be paused, which
    holds the live run inside a round while the page catches up."""
    import psutil

    from app_server import app_process

    base, draft = pair_dirs["qwen2"]
    folder = tmp_path_factory.mktemp("two-rank-app")
    with app_process(base, draft, folder / "app.log", ["--devices", "2"]) as (url, proc):
        ranks = [p for p in psutil.Process(proc.pid).children(recursive=True) if "spawn_main" in " ".join(p.cmdline())]
        assert len(ranks) == 1, ranks
        yield url, ranks[0]


def test_stop_ends_a_live_run_within_one_round(chromium, two_rank_app):
    """Stop clicked during a live run ends it after the round in flight. The run is held inside a round
    (its worker rank paused) until the page shows every finished round, so the round shown at the click
    is exactly the last one finished; the run must end with the next one."""
    url, rank = two_rank_app
    page = chromium.new_page(viewport={"width": 1500, "height": 1000})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url)
    page.wait_for_selector("#gen-run")
    page.fill("#gen-prompt textarea", "The quick brown fox")
    page.locator("#gen-calibration").get_by_label("none").check()  # uncalibrated N = 2: short rounds, many of them
    _set_number(page, "#gen-n", 2)
    _set_number(page, "#gen-max-new", 250)
    page.click("#gen-run")
    page.wait_for_function("(document.querySelector('#gen-status')?.innerText || '').match(/Running.* round [1-9]/)",
                           timeout=TIMEOUT_MS)
    rank.suspend()
    try:
        shown, still = page.inner_text("#gen-status"), 0
        while still < 4:  # the page has caught up once the status stays the same for 2 s
            page.wait_for_timeout(500)
            now = page.inner_text("#gen-status")
            still, shown = (still + 1 if now == shown else 0), now
        assert shown.startswith("Running"), f"the run ended before it could be held: {shown}"
        clicked = int(shown.split(" round ")[1].split(" ")[0])
        with page.expect_response(lambda r: r.request.method == "POST", timeout=30_000):
            page.click("#gen-stop")  # a direct call (queue=False): answered while the run is held
        page.wait_for_timeout(2000)
    finally:
        rank.resume()
    _wait_text(page, "#gen-status", "Stopped")
    status = page.inner_text("#gen-status")
    assert int(status.split("after round ")[1].split(":")[0]) == clicked + 1, (clicked, status)
    tokens = int(status.split(": ")[1].split(" tokens")[0])
    assert 0 < tokens < 250, status  # a live run, cut short
    page.close()


def test_compare_shows_the_equality_badge(page):
    page.get_by_role("tab", name="Compare").click()
    page.fill("#cmp-prompt textarea", "The quick brown fox")
    page.click("#cmp-run")
    page.wait_for_selector("#cmp-badge [data-equal=yes], #cmp-badge [data-equal=no]", timeout=TIMEOUT_MS)
    page.wait_for_timeout(500)
    page.screenshot(path=str(SHOTS / "compare.png"), full_page=True)
    assert page.locator("#cmp-badge [data-equal=yes]").count() == 1
    assert "identical tokens: YES" in page.inner_text("#cmp-badge")
    table = page.inner_text("#cmp-summary")
    assert all(name in table for name in ("vanilla", "speculative k=5", "easyspec N=4 every-round k=5"))
    for c in (1, 2, 3):
        assert page.evaluate(PLOT_BARS, f"#cmp-timeline-{c}")["spans"] > 0


def test_pilot_and_how_it_works(page):
    page.get_by_role("tab", name="Pilot").click()
    _wait_text(page, "#pilot-estimate", "runs")
    _set_number(page, "#pilot-n-prompts", 2)
    _wait_text(page, "#pilot-estimate", "× 2 prompts")
    page.click("#pilot-run")
    _wait_text(page, "#pilot-status", "Done")
    page.wait_for_timeout(500)
    page.screenshot(path=str(SHOTS / "pilot.png"), full_page=True)
    table = page.inner_text("#pilot-summary")  # vanilla, speculative, 2 N x 2 policies
    assert all(name in table for name in ("vanilla", "speculative k=5", "easyspec N=2 none k=5",
                                          "easyspec N=4 every-round k=5"))
    assert "Projected, not measured" in page.inner_text("#pilot-projection-note")
    assert "easyspec N=4 every-round k=5" in page.inner_text("#pilot-projection")
    assert page.evaluate(PLOT_BARS, "#pilot-round-easyspec")["spans"] > 0
    # Projected for your cluster: another GPU, G = 2, eager; N = 4 needs four devices, so only N = 2 is left
    page.locator("#pilot-hardware input").click()
    page.get_by_role("option", name="h100-sxm").click()
    page.locator("#pilot-cluster-g").get_by_label("2", exact=True).check()
    page.locator("#pilot-execution").get_by_label("eager").check()
    page.click("#pilot-project")
    _wait_text(page, "#pilot-projection-note", "G = 2 × h100-sxm")
    note, table = page.inner_text("#pilot-projection-note"), page.inner_text("#pilot-projection")
    assert "eager" in note and "measured by the pilot" in note, note
    assert "easyspec N=2 none k=5" in table and "easyspec N=4" not in table, table
    assert "settings meet every target" in page.inner_text("#pilot-projection-criteria")
    assert page.evaluate(PLOT_BARS, "#pilot-round-speculative")["spans"] > 0
    page.locator("#pilot-utilisation").scroll_into_view_if_needed()
    page.screenshot(path=str(SHOTS / "pilot_projection.png"), full_page=True)
    page.get_by_role("tab", name="How it works").click()
    page.wait_for_timeout(1500)
    page.screenshot(path=str(SHOTS / "how_it_works.png"), full_page=True)
    assert page.evaluate(PLOT_BARS, "#how-seq")["spans"] > 0
    assert page.evaluate(PLOT_BARS, "#how-par")["spans"] > 0
    assert "your" in page.inner_text("#how-drafting")  # the user's own runs replaced the shipped ones


def test_tuner_auto_grouping_and_the_acceptance_alert(page):
    page.get_by_role("tab", name="Pilot").click()
    page.get_by_text("Tune the layer plan (auto grouping)").click()
    page.click("#tune-run")
    _wait_text(page, "#tune-status", "Done")
    assert "Chosen plan" in page.inner_text("#tune-result")
    page.screenshot(path=str(SHOTS / "tuner.png"), full_page=True)
    page.get_by_role("tab", name="Generate").click()
    page.locator("#gen-grouping").get_by_label("custom plan").check()
    page.locator("#gen-plan textarea, #gen-plan input").first.fill("0-7")
    page.locator("#gen-calibration").get_by_label("none").check()
    _set_number(page, "#gen-max-new", 80)
    page.click("#gen-run")
    _wait_text(page, "#gen-status", "Running")
    _wait_text(page, "#gen-status", "Done")
    _wait_text(page, "#gen-alert", "Low acceptance")
    assert "calibration is off" in page.inner_text("#gen-alert")
    page.wait_for_timeout(500)
    page.screenshot(path=str(SHOTS / "acceptance_alert.png"), full_page=True)
    page.locator("#gen-grouping").get_by_label("auto (tuned)").check()
    page.locator("#gen-calibration").get_by_label("every-round").check()
    page.click("#gen-run")
    _wait_text(page, "#gen-status", "Running")
    _wait_text(page, "#gen-status", "Done")
    assert "every-round" in page.inner_text("#gen-status") and page.inner_text("#gen-alert").strip() == ""
