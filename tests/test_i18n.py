"""English / Japanese: every label of the dashboard has a Japanese form, templates fill in their values,
the page language follows ?lang= and the browser, and in a real browser the switch turns the UI to
Japanese (drawn with a CJK font) and back, with the screens still working."""
from __future__ import annotations

import ast
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from easyspec.core.i18n import msg, table, text, tr, ui_translation

SHOTS = Path(__file__).resolve().parents[1] / "results" / "screenshots" / "browser_test"
TIMEOUT_MS = 240_000


def test_templates_fill_their_values():
    assert tr(msg("column {c}: mode", c=3), "ja") == "列 3：方式"
    made = msg("consecutive draft layers run as one parallel group (1..{n} middle layers)", n=22)
    assert made == "consecutive draft layers run as one parallel group (1..22 middle layers)"
    assert ui_translation(made, "ja") == "連続するドラフトのレイヤを 1 つの並列グループとして実行（中間レイヤ 1〜22）"
    assert ui_translation(str(made), "ja") == ui_translation(made, "ja")  # through a figure or a component
    assert tr(made, "en") == made and tr(msg("a sentence the table lacks"), "ja") == "a sentence the table lacks"
    assert ui_translation("no such label", "ja") is None and tr("no such label", "ja") == "no such label"
    assert text("report.c.count_faster", "ja", faster=2, total=4) == \
        "EasySpec の 4 設定のうち 2 設定が通常デコードより速くなりました。"
    with pytest.raises(ValueError, match="unknown language 'fr'"):
        text("report.title", "fr")


def test_english_is_never_parsed_back():
    """A sentence is translated by the template it was made from (its key), never by matching its English
    against the table's templates: English that no `msg` made stays untranslated, however well it matches."""
    assert ui_translation("column 97531: mode", "ja") is None
    assert tr(msg("column {c}: mode", c=97531), "ja") == "列 97531：方式"
    assert ui_translation("column 97531: mode", "ja") == "列 97531：方式"  # now made in this process


def _constants(folder: Path) -> tuple[set[str], set[str]]:
    """Every string constant in the package's code, and the first arguments of its `msg(...)` calls."""
    strings, templates = set(), set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                strings.add(node.value)
            if (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "msg" and node.args
                    and isinstance(node.args[0], ast.Constant)):
                templates.add(node.args[0].value)
    return strings, templates


def test_every_template_is_a_msg_of_the_code_and_every_msg_is_in_the_table():
    """Each `ui` entry with {fields} is a template the code makes sentences from (no stale entries, no
    regex matching of formatted English), and each `msg` template has its Japanese entry."""
    root = Path(__file__).resolve().parents[1]
    strings, templates = set(), set()
    for folder in ("core", "app", "visualizations"):
        more_strings, more_templates = _constants(root / folder)
        strings |= more_strings
        templates |= more_templates
    field = re.compile(r"\{(\w+)\}")
    keyed = {english for english in table("ja")["ui"] if field.search(english)}
    assert len(keyed) >= 30 and keyed <= strings, sorted(keyed - strings)
    assert len(templates) >= 30 and templates <= set(table("ja")["ui"]) | set(table("en")["text"].values()), \
        sorted(templates - set(table("ja")["ui"]))


def test_every_table_entry_is_reached_by_its_own_key():
    """Every template translates its own sentence, fields filled; a longer sentence is never taken for a
    shorter template ("calibration {policy}" against "... calibration none ...")."""
    field = re.compile(r"\{(\w+)\}")
    for english, japanese in table("ja")["ui"].items():
        values = {name: f"<{i}>" for i, name in enumerate(dict.fromkeys(field.findall(english)))}
        fill = lambda s: field.sub(lambda m: values[m.group(1)], s)  # noqa: E731
        made = msg(english, **values) if values else english
        assert ui_translation(made, "ja") == fill(japanese), english


def _flagged_records(n: int = 14) -> list:
    from easyspec.core.engine.monitor import ALERT
    from easyspec.core.engine.records import RoundRecord

    return [RoundRecord(index=i, token_ids=(1,), origins=("recovered",), drafted=(5, 6, 7, 8), accepted=0,
                        phase_s={}, spans=(), end_ns=i, flags=(ALERT,) if i >= 12 else ()) for i in range(1, n + 1)]


def test_the_alert_is_translated_part_by_part():
    """The alert (one function for the CLI and the dashboard) is a sentence made of other sentences (what
    was expected, the likely cause): each part is translated by its own key and filled into the Japanese."""
    from helpers import untranslated

    from easyspec.core.engine.monitor import likely_cause, low_acceptance

    settings_list = [{"mode": "easyspec", "calibration": "none"}, {"mode": "easyspec", "calibration": "on-mismatch"},
                     {"mode": "easyspec", "calibration": "every-round"},
                     {"mode": "speculative", "sampling": {"temperature": 1.5}}, {"mode": "speculative"}]
    causes = {likely_cause(settings, groups) for settings in settings_list for groups in (1, 3, 6)}
    assert len(causes) == 6  # every branch of likely_cause, the first with two group sizes
    records = _flagged_records()
    assert low_acceptance(records[:11], {"mode": "speculative"}, 1) is None
    for expected in (0.0, 0.8):
        for settings in settings_list:
            for groups in (1, 3, 6):
                alert = low_acceptance(records, {**settings, "expected_acceptance": expected}, groups)
                assert (alert.rate, alert.flagged) == (0.0, 3)
                english = str(alert.message)
                assert english.startswith("Acceptance fell to 0% over the last rounds, far below the ")
                assert tr(alert.message, "en") == english
                japanese = tr(alert.message, "ja")
                assert japanese.startswith("直近のラウンドで受理率が 0% まで下がり、") and "考えられる原因：" in japanese
                cause = likely_cause(settings, groups)
                assert not untranslated([japanese]) and tr(cause, "ja") in japanese, japanese
                assert ("下限の 20%" if expected == 0.0 else "測定した 80%") in japanese


def test_requested_language():
    from easyspec.app.i18n import requested_lang

    def request(query=None, accept=""):
        return SimpleNamespace(query_params=query or {}, headers={"accept-language": accept})

    assert requested_lang(request({"lang": "ja"})) == "ja"
    assert requested_lang(request({"lang": "en"}, "ja-JP,ja;q=0.9")) == "en"
    assert requested_lang(request(accept="ja-JP,ja;q=0.9,en;q=0.8")) == "ja"
    assert requested_lang(request(accept="en-US,ja;q=0.5")) == "en"
    assert requested_lang(request({"lang": "xx"})) == "en" and requested_lang(None) == "en"


def test_every_dashboard_label_has_a_japanese_form(pair_dirs):
    """New labels must be added to assets/i18n_ja.json ("ui": English -> Japanese); this lists the missing."""
    from easyspec.app.context import AppContext, AppOptions
    from easyspec.app.dashboard import build_app
    from easyspec.app.i18n import english_strings, translatable

    base, draft = pair_dirs["qwen2"]
    ctx = AppContext.start(AppOptions(base=str(base), draft=str(draft), allow_custom_models=True, probe=False))
    try:
        demo = build_app(ctx)
        strings = english_strings(demo)
        missing = sorted({v for kind, elem, attr, v in strings
                          if ui_translation(v, "ja") is None})
        assert not missing, "no Japanese for:\n" + "\n".join(missing)
        assert len(strings) > 60
        choices = [i.english["choices"] for i in translatable(demo) if "choices" in i.english]
        assert ("built-in set", "built-in set") in [c for cs in choices for c in cs]
    finally:
        ctx.close()


# -- in a real browser ---------------------------------------------------------------------------
def _wait_text(page, selector: str, text: str) -> None:
    page.wait_for_function("([s, t]) => (document.querySelector(s)?.innerText || '').includes(t)", arg=[selector, text],
                           timeout=TIMEOUT_MS)


def test_switch_to_japanese_and_back(chromium, app_url):
    from browser_fonts import assert_cjk_drawn
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    SHOTS.mkdir(parents=True, exist_ok=True)
    page = chromium.new_page(viewport={"width": 1500, "height": 1000})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(app_url)
    page.wait_for_selector("#gen-run")
    assert page.inner_text("#gen-run").strip() == "Run"
    page.locator("#es-lang").get_by_text("日本語").click()
    _wait_text(page, "#gen-run", "実行")
    page.get_by_role("tab", name="パイロット評価").click()
    _wait_text(page, "#pilot-run", "パイロット評価を実行")
    assert page.get_by_text("組み込みセット").count() >= 1  # a choice label; its value stays "built-in set"
    _wait_text(page, "#pilot-estimate", "回の実行")  # the estimate, re-written in Japanese
    box = page.locator("#pilot-n-prompts input[type=number]")
    for _ in range(3):  # the switch's own re-run of the estimate can land after this change: set it again
        for value in ("1", "2"):
            box.fill(value)
            box.press("Enter")
            page.wait_for_timeout(300)
        try:
            page.wait_for_function("([s, t]) => (document.querySelector(s)?.innerText || '').includes(t)",
                                   arg=["#pilot-estimate", "× 2 プロンプト"], timeout=30_000)
            break
        except PlaywrightTimeout:
            pass
    _wait_text(page, "#pilot-estimate", "× 2 プロンプト")  # the handlers still get the English values
    page.get_by_role("tab", name="しくみ").click()
    _wait_text(page, "#how-drafting", "レイヤ並列のドラフト")  # the explainer's own sentences, in Japanese
    page.wait_for_timeout(500)
    page.screenshot(path=str(SHOTS / "ui_ja_how_it_works.png"), full_page=True)
    assert_cjk_drawn(page, "#how-drafting strong")
    page.locator("#es-lang").get_by_text("English").click()
    _wait_text(page, "#how-drafting", "Sequential vs layer-parallel drafting")
    page.get_by_role("tab", name="Pilot").click()
    assert "× 2 prompts" in page.inner_text("#pilot-estimate")  # re-run on the switch, from the live inputs
    page.get_by_role("tab", name="Generate").click()
    _wait_text(page, "#gen-run", "Run")
    assert page.get_by_role("tab", name="Pilot").count() == 1 and page.get_by_role("tab", name="生成").count() == 0
    page.close()


def test_page_opens_in_japanese_for_lang_ja_or_a_japanese_browser(chromium, app_url):
    page = chromium.new_page(viewport={"width": 1500, "height": 1000})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(app_url + "?lang=ja")
    _wait_text(page, "#gen-run", "実行")
    page.screenshot(path=str(SHOTS / "ui_ja_generate.png"), full_page=True)
    page.close()
    context = chromium.new_context(locale="ja-JP")
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(app_url)
    _wait_text(page, "#gen-run", "実行")
    assert page.get_by_role("tab", name="しくみ").count() == 1
    context.close()


REPORT_LINK = "(lang) => [...document.querySelectorAll('#pilot-report a[href]')].some(a => a.href.includes(`report_${lang}`))"


def _report(page, lang: str) -> str:
    page.wait_for_function(REPORT_LINK, arg=lang, timeout=TIMEOUT_MS)
    href = page.eval_on_selector_all("#pilot-report a[href]", f"as => as.map(a => a.href).find(h => h.includes("
                                     f"'report_{lang}'))")
    return page.request.get(href).text()


def test_pilot_report_in_the_chosen_language(chromium, app_url):
    """A pilot run in Japanese gives a Japanese report; Export report after switching gives an English one."""
    page = chromium.new_page(viewport={"width": 1500, "height": 1000})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(app_url + "?lang=ja")
    _wait_text(page, "#gen-run", "実行")
    page.get_by_role("tab", name="パイロット評価").click()
    box = page.locator("#pilot-n-prompts input[type=number]")
    box.fill("1")
    box.press("Enter")
    _wait_text(page, "#pilot-estimate", "× 1 プロンプト")
    page.click("#pilot-run")
    _wait_text(page, "#pilot-status", "完了")
    page.wait_for_timeout(500)
    page.screenshot(path=str(SHOTS / "ui_ja_pilot.png"), full_page=True)
    html = _report(page, "ja")
    assert '<html lang="ja">' in html and text("report.question", "ja") in html
    page.locator("#es-lang").get_by_text("English").click()
    _wait_text(page, "#pilot-export", "Export report")
    page.click("#pilot-export")
    html = _report(page, "en")
    assert '<html lang="en">' in html and text("report.question", "en") in html
    page.close()
