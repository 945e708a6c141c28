"""The pilot report: its figures equal the pilot's, it is one self-contained file, it opens offline in
headless Chromium, and its Japanese text is drawn with a CJK font (not boxes). Also the translation
table: both languages have the same keys and placeholders, and the Japanese keeps the glossary's terms.

The pilot is a tiny one on the small random Qwen2 pair (a few seconds). Screenshots go to
results/screenshots/browser_test/ (not tracked).
"""
from __future__ import annotations

import json
import re
import statistics
import string
from html import escape, unescape
from html.parser import HTMLParser
from pathlib import Path

import pytest

from browser_fonts import assert_cjk_drawn

from easyspec.core.i18n import LANGS, table, text, tr, ui_translation
from easyspec.core.engine.metrics import compute
from easyspec.core.evaluation.pilot import PilotGrid, PilotRun, run_pilot, summarise
from easyspec.core.evaluation.report import context_for, report_data
from easyspec.visualizations.report import report_html

SHOTS = Path(__file__).resolve().parents[1] / "results" / "screenshots" / "browser_test"
PROMPTS = ["The quick brown fox", "0123456789", "def add(a, b):"]


@pytest.fixture(scope="module")
def pilot(pair_dirs):
    from easyspec.core.session import Session

    base, draft = pair_dirs["qwen2"]
    grid = PilotGrid(layer_parallel=(2, 4), calibration=("none", "every-round"), draft_len=(3,),
                     max_new_tokens=16, chat=False)
    with Session.open(base=str(base), draft=str(draft)) as session:
        runs = [e for e in run_pilot(session, PROMPTS, grid) if isinstance(e, PilotRun)]
        ctx = context_for(session, PROMPTS, "pytest: tests/test_report.py")
    return runs, grid, ctx


@pytest.fixture(scope="module")
def reports(pilot, tmp_path_factory):
    runs, grid, ctx = pilot
    folder = tmp_path_factory.mktemp("report")
    out = {}
    for lang in LANGS:
        data = report_data(runs, grid, ctx, lang)
        rep = next(r for r in runs if r.setting.label == data["representative"]["setting"]
                   and r.prompt_index + 1 == data["representative"]["prompt"])
        path = folder / f"report_{lang}.html"
        path.write_text(report_html(data, rep.records), encoding="utf-8")
        out[lang] = (data, path)
    return out


class _Tables(HTMLParser):
    """Cell texts of every <table id=...>, and every src/href attribute."""

    def __init__(self):
        super().__init__()
        self.tables, self.links, self._id, self._cell = {}, [], None, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.links += [a[k] for k in ("src", "href") if a.get(k)]
        if tag == "table" and a.get("id"):
            self._id = a["id"]
            self.tables[self._id] = []
        elif tag == "tr" and self._id:
            self.tables[self._id].append([])
        elif tag in ("td", "th") and self._id:
            self._cell = ""

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._id and self._cell is not None:
            self.tables[self._id][-1].append(self._cell.strip())
            self._cell = None
        elif tag == "table":
            self._id = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


def _parse(path: Path) -> _Tables:
    p = _Tables()
    p.feed(path.read_text(encoding="utf-8"))
    return p


def test_report_figures_equal_the_pilots_results(pilot, reports):
    runs, grid, _ = pilot
    rows = [r.row for r in runs]
    summary = summarise(rows)
    for lang, (data, path) in reports.items():
        assert [s["setting"] for s in data["settings"]] == [s.label for s in grid.settings()]
        embedded = json.loads(re.search(r'<script type="application/json" id="report-data">(.*?)</script>',
                                        path.read_text(encoding="utf-8"), re.S).group(1))
        assert embedded == json.loads(json.dumps(data))
        measured = _parse(path).tables["measured"][1:]  # header row first
        for s, shown, row in zip(summary, data["settings"], measured):
            assert {k: shown[k] for k in s} == s  # the pooled figures are summarise's, untouched
            mine = [r for r in rows if r["setting"] == s["setting"]]
            speedups = [r["speedup"] for r in mine]
            rates = [r["tokens_per_s"] for r in mine]
            assert shown["speedup_spread"] == {"median": round(statistics.median(speedups), 4),
                                               "min": min(speedups), "max": max(speedups), "n": len(PROMPTS)}
            assert shown["tokens_per_s_spread"]["median"] == round(statistics.median(rates), 4)
            equal = [r["equal_to_vanilla"] for r in mine if r["equal_to_vanilla"] is not None]
            assert (shown["equal_count"], shown["compared_count"]) == (sum(equal), len(equal))
            # what the reader sees is the same numbers
            assert row[0] == s["setting"] and row[1] == str(s["prompts"])
            assert row[2] == f"{s['tokens_per_s']:.2f}" and row[4] == f"{s['speedup']:.2f}x"
            sp = shown["speedup_spread"]
            assert row[5] == f"{sp['median']:.2f}x ({sp['min']:.2f}-{sp['max']:.2f})"
            assert row[6] == ("-" if s["acceptance_rate"] is None else f"{s['acceptance_rate']:.3f}")
        equality = _parse(path).tables["equality"][1:]
        assert equality == [[s["setting"], f"{s['equal_count']} / {s['compared_count']}", str(s["tie_count"]),
                             str(s["different_count"])] for s in data["settings"] if s["compared_count"]]
        assert all(s["equal_count"] == s["compared_count"] for s in data["settings"])  # greedy: lossless
        assert all(s["tie_count"] == s["different_count"] == 0 for s in data["settings"])
        projected = _parse(path).tables["projection-table"][1:]
        assert len(projected) == len(data["projection"]["rows"]) > 0
        assert [r[5] for r in projected] == [f"{r['easyspec_speedup']:.2f}x" for r in data["projection"]["rows"]]
    en, ja = reports["en"][0], reports["ja"][0]
    best = max((s for s in en["settings"] if s["mode"] == "easyspec"), key=lambda s: s["speedup"])
    assert f"{best['speedup']:.2f}x" in en["conclusion"][0] and best["setting"] in en["conclusion"][0]
    assert f"{best['speedup']:.2f} 倍" in ja["conclusion"][0]
    for n in grid.layer_parallel:  # calibration: one sentence per N, with both acceptance rates
        by = {s["calibration"]: s for s in en["settings"] if s["layer_parallel"] == n}
        pct = [f"{100 * by[p]['acceptance_rate']:.0f}%" for p in ("every-round", "none")]
        assert any(f"N = {n}," in c and pct[0] in c and pct[1] in c for c in en["conclusion"]), (n, pct)
    total = sum(s["compared_count"] for s in en["settings"])
    assert any(f"all {total} greedy comparisons" in c for c in en["conclusion"])


def test_report_is_one_self_contained_file(reports):
    for lang, (data, path) in reports.items():
        html = path.read_text(encoding="utf-8")
        parsed = _parse(path)
        assert parsed.links == [], parsed.links  # no external script, stylesheet or image
        assert not re.search(r"<script[^>]+src=", html) and "<link" not in html
        assert "Plotly.newPlot" in html and len(html) > 1_000_000  # plotly.js is inlined
        assert f'<html lang="{lang}">' in html
        assert text("report.question", lang) in html
        projection = html[html.index('id="projection"'):]
        assert html.count(text("report.h.projection", lang)) == 1 and tr("projected, not measured", lang) in projection
        assert "projected, not measured" in projection or "実測ではありません" in projection


def test_report_opens_offline_in_chromium_with_a_cjk_font(reports, chromium):
    SHOTS.mkdir(parents=True, exist_ok=True)
    for lang, (data, path) in reports.items():
        page = chromium.new_page(viewport={"width": 1300, "height": 900})
        requests = []
        page.on("request", lambda r: requests.append(r.url))
        page.route("http*://**", lambda route: route.abort())  # offline: anything remote fails
        page.goto(path.as_uri())
        page.wait_for_selector("#chart-timeline .main-svg")
        page.wait_for_selector("#chart-pilot .main-svg")
        assert [u for u in requests if not u.startswith(("file:", "data:", "blob:"))] == []
        bars = page.evaluate("() => document.getElementById('chart-timeline').data"
                             ".filter(t => t.type === 'bar').reduce((n, t) => n + t.x.length, 0)")
        rep = next(s for s in data["settings"] if s["setting"] == data["representative"]["setting"])
        assert bars > 0 and rep["mode"] == "easyspec"
        cells = page.eval_on_selector_all("#measured tbody tr", "rows => rows.map(r => r.cells[4].innerText)")
        assert cells == [f"{s['speedup']:.2f}x" for s in data["settings"]]
        page.screenshot(path=str(SHOTS / f"report_{lang}.png"), full_page=True)
        if lang == "ja":  # drawn with a font that has the glyphs, not boxes
            assert_cjk_drawn(page, "h1")
            assert_cjk_drawn(page, "#conclusion li")
        page.close()


# -- the translation table ---------------------------------------------------------------------
def _fields(s: str) -> set[str]:
    return {f[1] for f in string.Formatter().parse(s) if f[1]}


def test_both_languages_have_the_same_keys_and_placeholders():
    en, ja = table("en")["text"], table("ja")["text"]
    assert en.keys() == ja.keys(), set(en) ^ set(ja)
    for key in en:
        assert _fields(en[key]) == _fields(ja[key]), key
    for english, japanese in table("ja")["ui"].items():
        assert japanese.strip() and _fields(english) == _fields(japanese), english


def test_japanese_keeps_the_glossary_terms():
    ja = table("ja")
    pairs = [(english, ja["ui"][english]) for english in ja["ui"]]
    pairs += [(table("en")["text"][k], v) for k, v in ja["text"].items()]
    for english, japanese in pairs:
        for bad in ja["avoid"]:
            assert bad not in japanese, (bad, japanese)
        for term in ("acceptance rate", "calibration", "layer-parallel", "base model", "draft", "speedup"):
            if re.search(rf"\b{re.escape(term)}\b", re.sub(r"\{\w*\}", "", english), re.I):
                assert ja["glossary"][term] in japanese, (term, english, japanese)
    assert ui_translation("anything", "en") == "anything"


# -- pilots that are not the full greedy grid: the export never fails ----------------------------
def _html(runs, grid, ctx, lang="en"):
    from easyspec.visualizations.report import pilot_report_html

    html = pilot_report_html(runs, grid, ctx, lang)
    data = json.loads(re.search(r'id="report-data">(.*?)</script>', html, re.S).group(1))
    return html, data


def test_report_of_a_stopped_or_partial_pilot(pilot):
    runs, grid, ctx = pilot
    html, data = _html(runs[:-3], grid, ctx)  # stopped early: the last prompt lacks three settings
    last = [s for s in data["settings"] if s["prompts"] < len(PROMPTS)]
    assert len(last) == 3 and all(s["runs"] == len(PROMPTS) - 1 for s in last)
    plain = [r for r in runs if r.setting.config.mode != "easyspec"]
    html, data = _html(plain, grid, ctx, "ja")  # no EasySpec runs: no EasySpec sentence, no N chart
    assert data["representative"]["setting"].startswith("speculative")
    assert not any("EasySpec で最も速かった" in c for c in data["conclusion"]) and 'id="chart-pilot"' not in html
    vanilla = [r for r in runs if r.setting.config.mode == "vanilla"]
    html, data = _html(vanilla, grid, ctx)  # vanilla only: nothing compared, no projection
    assert data["conclusion"][0] == text("report.c.equal_none", "en")
    assert "unavailable" in data["projection"] and "speculative" in data["projection"]["unavailable"]
    with pytest.raises(ValueError, match="at least one run"):
        report_data([], grid, ctx)


def test_report_of_a_sampled_pilot(pair_dirs, pilot):
    from easyspec.core.session import Session

    base, draft = pair_dirs["qwen2"]
    grid = PilotGrid(layer_parallel=(2,), calibration=("every-round",), draft_len=(3,), max_new_tokens=8,
                     chat=False, temperature=0.8, seed=1)
    with Session.open(base=str(base), draft=str(draft)) as session:
        runs = [e for e in run_pilot(session, PROMPTS[:1], grid) if isinstance(e, PilotRun)]
    html, data = _html(runs, grid, pilot[2])
    assert text("report.equality_sampled", "en", temperature=0.8) in html and 'id="equality"' not in html
    assert text("report.c.equal_none", "en") in data["conclusion"]


def test_memory_in_the_pilot_rows_and_the_report_is_each_runs_own(pilot, reports):
    """Rows: each run's own peak and growth; summary and report: the largest over the prompts, labelled."""
    runs, _, _ = pilot
    for run in runs:
        m = compute(run.records)
        assert run.row["memory_source"] == "rss"
        assert run.row["run_peak_memory_mib"] == round(m.run_peak_memory_bytes / 2**20, 1) > 0
        assert run.row["run_memory_growth_mib"] == round(m.run_memory_growth_bytes / 2**20, 1)
    for lang, (data, path) in reports.items():
        table = _parse(path).tables["measured"]
        assert table[0][-2:] == [text("report.col.run_peak_memory", lang,
                                      what=tr("peak RSS during this run (process, incl. loaded models)", lang)),
                                 text("report.col.run_memory_growth", lang)]
        for s, row in zip(data["settings"], table[1:]):
            mine = [r.row for r in runs if r.setting.label == s["setting"]]
            assert s["largest_run_peak_memory_mib"] == max(r["run_peak_memory_mib"] for r in mine)
            assert row[-2:] == [f"{s['largest_run_peak_memory_mib']:.0f}", f"{s['largest_run_memory_growth_mib']:.0f}"]


def test_what_was_not_measured_and_the_timelines_run_follow_the_numbers(pilot, reports):
    """The 'not measured' sentence names the devices that ran (several devices did run on G > 1); the
    timeline note gives the setting's median next to the drawn run's speedup (the run nearest it)."""
    from easyspec.core.evaluation.report import conclusion

    runs, grid, ctx = pilot
    data = reports["en"][0]
    for devices, said, unsaid in ((1, "speed on several devices (only 1 cpu device(s) ran)", "more than 1 devices"),
                                  (2, "speed on more than 2 devices (this pilot ran on 2 cpu devices)", "several")):
        for lang in LANGS:
            sentences = conclusion(data["settings"], dict(max_new_tokens=16), {"device": "cpu", "devices": devices},
                                   {}, lang)
            if lang == "en":
                assert any(said in c for c in sentences) and not any(unsaid in c for c in sentences), sentences
            else:
                assert any(f"{devices} 台" in c for c in sentences)
    rep = data["representative"]
    setting = next(s for s in data["settings"] if s["setting"] == rep["setting"])
    assert rep["setting_median"] == setting["speedup_spread"]["median"]
    page = reports["en"][1].read_text(encoding="utf-8")
    assert escape(f"speedup {rep['speedup']:.2f}x, the run nearest its setting's median over the prompts "
                       f"({rep['setting_median']:.2f}x)") in page


def test_the_report_says_what_each_run_plan_applied(reports):
    """A setting whose run plan applied the tuner's plan or policy (RunPlan.applied) says so under the measured
    table, in both languages; a pilot where nothing was applied has no such note."""
    for lang in LANGS:
        data, path = reports[lang]
        assert 'id="applied"' not in path.read_text(encoding="utf-8")
        settings = [dict(s) for s in data["settings"]]
        settings[0]["applied"] = "tuned plan 0|1-3|4-6|7; tuned calibration on-mismatch"
        page = report_html({**data, "settings": settings})
        note = page[page.index('id="applied"'):]
        note = note[:note.index("</div>")]
        assert escape(f"{settings[0]['setting']}: tuned plan 0|1-3|4-6|7; tuned calibration on-mismatch") in note
        assert note.count("<li>") == 1
        assert ("tuner's layer plan" if lang == "en" else "チューナーが選んだレイヤ構成") in unescape(note)


def test_the_report_judges_every_setting_against_the_teams_criteria(pilot):
    """The report states the targets and, per setting, each target met or not; the count in its sentence is the
    table's, and the verdicts are criteria.judge's on the report's own measured numbers."""
    from dataclasses import replace

    from easyspec.core.evaluation.criteria import Criteria, judge

    runs, grid, ctx = pilot
    for criteria, lang in ((Criteria(), "en"), (Criteria(min_speedup=0.01, max_acceptance_drop=1.0), "ja")):
        data = report_data(runs, grid, replace(ctx, criteria=criteria), lang)
        expected = judge(data["settings"], criteria)
        assert [j["met"] for j in data["criteria"]["measured"]] == [j.met for j in expected]
        page = report_html(data)
        section = page[page.index('id="criteria"'):]
        section = section[:section.index("</table>")]
        assert section.count("<tr>") == len(expected) + 1
        met = sum(bool(j.met) for j in expected)
        judged = sum(j.met is not None for j in expected)
        if lang == "en":
            assert f"{met} of {judged} settings meet every target" in page
        else:
            assert f"{judged} 設定中 {met} 設定です" in page
    assert all(j.met for j in judge(data["settings"], Criteria(min_speedup=0.01, max_acceptance_drop=1.0))
               if j.met is not None)


def test_the_report_follows_easyspecs_speedup_along_the_prompt_length(pair_dirs):
    """A grid with a context axis: the report lists the lengths, and one sentence gives the fastest EasySpec
    setting's speedup at each length, from the same numbers as its table."""
    from easyspec.core.session import Session

    base, draft = pair_dirs["qwen2"]
    grid = PilotGrid(layer_parallel=(2,), calibration=("every-round",), draft_len=(3,), max_new_tokens=8,
                     chat=False, contexts=(0, 160))
    with Session.open(base=str(base), draft=str(draft)) as session:
        runs = [e for e in run_pilot(session, PROMPTS[:1], grid) if isinstance(e, PilotRun)]
        ctx = context_for(session, PROMPTS[:1], "pytest")
    for lang in ("en", "ja"):
        data = report_data(runs, grid, ctx, lang)
        long = next(s for s in data["settings"] if s["setting"] == "easyspec N=2 every-round k=3 · ctx 160")
        short = next(s for s in data["settings"] if s["setting"] == "easyspec N=2 every-round k=3")
        start = "The fastest EasySpec setting's speedup over vanilla at each" if lang == "en" else "プロンプトの長さごとに"
        sentence = next(c for c in data["conclusion"] if c.startswith(start))
        assert f"{long['speedup']:.2f}x" in sentence and f"{short['speedup']:.2f}x" in sentence
        if lang == "en":
            assert sentence == (f"The fastest EasySpec setting's speedup over vanilla at each prompt length: prompts "
                                f"as given, {short['speedup']:.2f}x (easyspec N=2 every-round k=3); about "
                                f"{long['mean_prompt_tokens']} prompt tokens, {long['speedup']:.2f}x "
                                f"(easyspec N=2 every-round k=3 · ctx 160).")
        page = report_html(data)
        assert ">0, 160<" in page


def test_the_criteria_are_judged_apart_on_the_projected_speedups(pilot):
    """Beside the measured verdicts, the report judges the same targets on the projection's speedups at its
    largest G, labelled projected; the count is criteria.judge's on those speedups."""
    from dataclasses import replace

    from easyspec.core.evaluation.criteria import Criteria, judge

    runs, grid, ctx = pilot
    criteria = Criteria(min_speedup=1.5)
    data = report_data(runs, grid, replace(ctx, criteria=criteria), "en")
    rows = [r for r in data["projection"]["rows"] if r["devices"] == 8]
    speedups = {r["setting"]: r["easyspec_speedup"] for r in rows}
    speedups.update({s["setting"]: rows[0]["speculative_speedup"] for s in data["settings"]
                     if s["mode"] == "speculative"})
    expected = [j for j in judge(data["settings"], criteria, speedups) if j.setting in speedups]
    assert data["criteria"]["projected_devices"] == 8
    assert [(j["setting"], j["met"]) for j in data["criteria"]["projected"]] == [(j.setting, j.met) for j in expected]
    page = report_html(data)
    note = page[page.index('id="criteria-projected"'):]
    met = sum(bool(j.met) for j in expected)
    assert "projected, not measured" in note[:200]
    assert f"{met} of {sum(j.met is not None for j in expected)} settings meet every target" in note


def test_the_projection_says_how_the_speedup_shrinks_with_the_batch_size(reports):
    """Batch jobs: the fastest projected setting at the largest G for B = 1, 4, 16, 64 (projected), each the
    hardware model's own figure; with many sequences per step the verify turns compute-bound."""
    from easyspec.core.evaluation import hardware
    from easyspec.core.evaluation.projection import Setting, project
    from easyspec.core.evaluation.shapes import ModelShape

    data, path = reports["en"]
    p = data["projection"]
    batches = p["batches"]
    assert [r["batch"] for r in batches] == [1, 4, 16, 64]
    best = max((r for r in p["rows"] if r["devices"] == 8), key=lambda r: r["easyspec_tokens_per_s"])
    shapes = ModelShape(**p["base_shape"]), ModelShape(**p["draft_shape"])
    for r in batches:
        q = project(*shapes, hardware.device(p["hardware"]["name"]), Setting(**{**best["setting_values"],
                                                                                "batch": r["batch"]}))
        assert r["easyspec_speedup"] == round(q["easyspec"]["tokens_per_s"] / q["vanilla"]["tokens_per_s"], 3)
        assert r["setting"] == best["setting"] and r["verify_bound"] == q["verify_bound"]
    page = path.read_text(encoding="utf-8")
    assert 'id="projection-batch"' in page and "The engine measured B = 1 only." in page
