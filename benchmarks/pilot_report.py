"""The pilot report on the real offline pair, in English and Japanese, from ONE pilot run.

The same pilot the dashboard's Pilot screen runs by default (first 3 prompts of a built-in set;
vanilla, speculative k=5, easyspec N in {2, 4} x calibration in {none, every-round}; 32 new tokens;
greedy; chat template), then both reports and, with --screenshots, a full-page PNG of each opened
in headless Chromium. The HTML files are large (plotly.js is inlined: ~5 MB each) and so are
written under results/tmp/ (not tracked); the screenshots go to results/screenshots/.
Run: python benchmarks/pilot_report.py [--prompts code] [--limit 3] [--screenshots]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from easyspec.app.logs import configure as configure_logging
from easyspec.core.files import write_text_atomic
from easyspec.core.models.loading import resolve_pair
from easyspec.core.evaluation.pilot import PilotGrid, PilotProgress, PilotRun, run_pilot
from easyspec.core.evaluation.prompt_sets import builtin_prompts
from easyspec.core.evaluation.report import context_for
from easyspec.core.session import Session
from easyspec.visualizations.report import pilot_report_html

ROOT = Path(__file__).resolve().parents[1]


def screenshot(html: Path, png: Path) -> None:
    from playwright import sync_api

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                    args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        page.goto(html.as_uri())
        page.wait_for_selector("#chart-timeline .main-svg")
        page.screenshot(path=str(png), full_page=True)
        browser.close()


def main() -> int:
    configure_logging()  # core's progress (the offline pair's first preparation) on stderr
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", default="code")
    ap.add_argument("--limit", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--out", default=str(ROOT / "results" / "tmp" / "pilot_report"))
    ap.add_argument("--screenshots", action="store_true")
    args = ap.parse_args()
    prompts = builtin_prompts(args.prompts)[: args.limit]
    grid = PilotGrid(max_new_tokens=args.max_new_tokens)
    with Session(resolve_pair(pair="qwen2.5-coder")) as session:
        runs = []
        for event in run_pilot(session, prompts, grid):
            if isinstance(event, PilotRun):
                runs.append(event)
            elif isinstance(event, PilotProgress):
                print(f"{event.done}/{event.total} {event.label}", file=sys.stderr, flush=True)
        ctx = context_for(session, prompts, "python benchmarks/pilot_report.py " + " ".join(sys.argv[1:]))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for lang in ("en", "ja"):
        html = out.with_name(f"{out.name}_{lang}.html")
        write_text_atomic(html, pilot_report_html(runs, grid, ctx, lang))
        print(f"wrote {html}", file=sys.stderr)
        if args.screenshots:
            png = ROOT / "results" / "screenshots" / f"real_pair_report_{lang}.png"
            screenshot(html, png)
            print(f"wrote {png}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
