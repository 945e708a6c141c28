"""The fallback on the real offline pair (Qwen2.5-Coder, fp32, CPU) through the dashboard: a bad custom plan
(one uncalibrated fuzzy group of 22 of the draft's 24 layers) collapses acceptance, the run falls back to
sequential drafting (and to none if that is slower than the base, by the launch probe), the timeline marks
the switch (screenshot: results/screenshots/fallback_timeline.png), /metrics counts it, and the tokens are
vanilla's before and after the switch. Needs the offline pair and Chromium (skips without them)."""
from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest

from easyspec.core.engine.monitor import ALERT, OFF, SEQUENTIAL

pytestmark = pytest.mark.real_pair

SHOT = Path(__file__).resolve().parents[1] / "results" / "screenshots" / "fallback_timeline.png"
PROMPT = "Write a Python function that returns the n-th Fibonacci number."
BAD_PLAN = "0|1-22|23"
NEW_TOKENS = 96
TIMEOUT_MS = 900_000  # the real pair on a loaded 2-core CPU


@pytest.fixture(scope="module")
def real_app(real_source, tmp_path_factory):
    from app_server import app_process

    folder = tmp_path_factory.mktemp("real-fallback-app")
    with app_process(real_source.base_dir, real_source.draft_dir, folder / "app.log",
                     ["--on-low-acceptance", "fallback"]) as (url, proc):
        yield url


def test_bad_plan_falls_back_on_the_timeline_and_output_stays_vanillas(real_app, chromium):
    from gradio_client import Client
    from prometheus_client.parser import text_string_to_metric_families

    from easyspec.core.engine.records import load_run

    page = chromium.new_page(viewport={"width": 1500, "height": 1000})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(real_app)
    page.wait_for_selector("#gen-run")
    page.fill("#gen-prompt textarea", PROMPT)
    page.locator("#gen-grouping").get_by_label("custom plan").check()
    page.locator("#gen-plan textarea, #gen-plan input").first.fill(BAD_PLAN)
    page.locator("#gen-calibration").get_by_label("none").check()
    page.locator("#gen-on-low").get_by_label("fallback").check()
    box = page.locator("#gen-max-new input[type=number]")
    box.fill(str(NEW_TOKENS))
    box.press("Enter")
    page.click("#gen-run")
    page.wait_for_function("(document.querySelector('#gen-status')?.innerText || '').includes('Done')",
                           timeout=TIMEOUT_MS)
    status = page.inner_text("#gen-status")
    assert "fallback: sequential drafting" in status, status
    page.wait_for_timeout(1000)
    SHOT.parent.mkdir(parents=True, exist_ok=True)
    page.locator("#gen-timeline").scroll_into_view_if_needed()
    page.locator("#gen-timeline").screenshot(path=str(SHOT))
    marks = page.evaluate("() => (document.querySelector('#gen-timeline .js-plotly-plot')?.layout?.annotations || [])"
                          ".map(a => a.text)")
    assert sum(m.startswith("fallback: sequential drafting (after round") for m in marks) == 1, marks
    page.close()

    # the same run through the API (the launch default is fallback), and vanilla on the same prompt
    client = Client(real_app, verbose=False)
    common = dict(prompt=PROMPT, chat=True, max_new_tokens=NEW_TOKENS, api_name="/generate")
    out = client.predict(mode="easyspec", calibration="none", grouping="custom plan", plan=BAD_PLAN, **common)
    ref = client.predict(mode="vanilla", **common)[6]["token_ids"]
    _, records = load_run(out[7])
    seq = next(r.index for r in records if SEQUENTIAL in r.flags)
    assert sum(ALERT in r.flags for r in records[: seq + 1]) >= 4
    tokens = [t for r in records for t in r.token_ids]
    upto = sum(len(r.token_ids) for r in records[: seq + 1])
    assert tokens[:upto] == ref[:upto], "before the switch"
    assert tokens[upto:] == ref[upto:], "after the switch"
    off = next((r.index for r in records if OFF in r.flags), None)
    if off is not None:
        assert all(not r.drafted for r in records if r.index > off)
    with urllib.request.urlopen(f"{real_app}metrics", timeout=30) as resp:
        page_text = resp.read().decode()
    samples = {(s.name, s.labels.get("to"), s.labels.get("plan")): s.value
               for f in text_string_to_metric_families(page_text) for s in f.samples}
    assert samples[("easyspec:fallbacks_total", "sequential", BAD_PLAN)] == 2  # the browser's run and the API's
