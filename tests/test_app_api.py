"""The dashboard's API through gradio_client: generate, compare and pilot, and bad input handled cleanly.

The app runs in a subprocess on the small random pair (`app_url` in conftest.py).
"""
from __future__ import annotations

import json

import pytest

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from easyspec.core.engine.records import load_run  # noqa: E402

PROMPT = "The quick brown fox"  # the random pair does not stop early on this prompt


@pytest.fixture(scope="module")
def client(app_url):
    return Client(app_url, verbose=False)


def _bars(plot: dict) -> list[dict]:
    assert plot["type"] == "plotly"
    return [t for t in json.loads(plot["plot"])["data"] if t["type"] == "bar"]


def test_named_endpoints_take_a_prompt(client):
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    for name in ("/generate", "/compare", "/pilot"):
        assert name in api
        assert "prompt" in [p["parameter_name"] for p in api[name]["parameters"]]


def test_generate_returns_text_timeline_metrics_and_files(client):
    out = client.predict(prompt=PROMPT, chat=True, mode="easyspec", layer_parallel=4, calibration="every-round",
                         draft_len=5, max_new_tokens=40, api_name="/generate")
    status, text, cards, timeline, per_position, histogram, details, run_file, trace_file, _, alert, rolling = out
    assert status.startswith("**Done**") and "40 tokens" in status
    assert details["new_tokens"] == 40 and details["stop"] == "max_new_tokens" and not details["stopped_early"]
    m = details["metrics"]
    assert m["new_tokens"] == 40 and 0 <= m["acceptance_rate"] <= 1 and m["mean_accepted_length"] >= 1
    assert 'class="es-tok' in text and 'data-origin="accepted"' in text
    assert 'data-metric="acceptance_rate"' in cards and f"{m['acceptance_rate']:.3f}" in cards
    bars = _bars(timeline)
    phases = {t["name"] for t in bars}
    assert {"draft attention", "draft MLP", "verify (base forward)", "calibrate (exact draft pass)"} <= phases
    assert _bars(per_position)[0]["x"] == [1, 2, 3, 4, 5]
    header, records = load_run(run_file)
    assert [t for r in records for t in r.token_ids] == details["token_ids"]
    assert header.settings["layer_parallel"] == 4
    trace = json.loads(open(trace_file).read())
    assert any(e.get("ph") == "X" and e.get("cat") == "draft.attn" for e in trace["traceEvents"])
    assert alert == "" and rolling["type"] == "plotly"  # a healthy run raises no acceptance alert


def test_tuner_then_auto_grouping_and_the_alert(client, untuned_app):
    with pytest.raises(Exception, match="not been tuned yet"):
        client.predict(prompt=PROMPT, grouping="auto (tuned)", max_new_tokens=8, api_name="/generate")
    status, table = client.predict(prompt="def add(a, b):\nThe quick brown fox", source="typed prompts",
                                   n_prompts=2, tolerance=0.05, tokens=16, draft_len=4, api_name="/tune")
    assert status.startswith("**Done**") and "Chosen plan" in table and "draft length k = 4" in table
    plan = table.split("Chosen plan `")[1].split("`")[0]
    out = client.predict(prompt=PROMPT, grouping="auto (tuned)", max_new_tokens=24, api_name="/generate")
    header, _ = load_run(out[7])
    assert header.settings["groups"] == plan and header.settings["expected_acceptance"] > 0
    with pytest.raises(Exception, match="layer 2 is missing"):
        client.predict(prompt=PROMPT, grouping="custom plan", plan="0|1|3-7", api_name="/generate")
    # Compare: a column on the tuned plan, next to equal groups; greedy columns still agree token for token
    out = client.predict(prompt=PROMPT, max_new_tokens=16, columns=2, mode_1="easyspec", mode_2="easyspec",
                         grouping_2="auto (tuned)", api_name="/compare")
    assert out[3]["columns"][1]["label"].startswith(f"easyspec plan {plan} ") and out[3]["identical"] is True
    with pytest.raises(Exception, match=r"layer grouping must be one of equal groups of N, auto \(tuned\); got"):
        client.predict(prompt=PROMPT, columns=2, grouping_2="custom plan", api_name="/compare")
    # an uncalibrated run with large groups collapses; the screen says so and why
    out = client.predict(prompt=PROMPT, grouping="custom plan", plan="0-7", calibration="none", max_new_tokens=120,
                         api_name="/generate")
    alert, details = out[10], out[6]
    assert details["metrics"]["acceptance_rate"] < header.settings["expected_acceptance"] / 2, details["metrics"]
    assert "Low acceptance" in alert and "calibration is off" in alert


def test_generate_modes_agree_token_for_token(client):
    tokens = []
    for mode in ("vanilla", "speculative", "easyspec"):
        details = client.predict(prompt=PROMPT, mode=mode, max_new_tokens=24, api_name="/generate")[6]
        tokens.append(details["token_ids"])
    assert len(tokens[0]) == 24 and tokens[0] == tokens[1] == tokens[2]


def test_compare_reports_speedup_and_equality(client):
    out = client.predict(prompt=PROMPT, max_new_tokens=24, columns=3, api_name="/compare")
    status, table, badge, details = out[:4]
    assert status.startswith("**Done**")
    assert 'data-equal="yes"' in badge and details["identical"] is True
    rows = table["data"]
    assert [r[1] for r in rows] == ["vanilla", "speculative k=5", "easyspec N=4 every-round k=5"]
    assert rows[0][5] == 1 and all(r[5] > 0 for r in rows) and all(r[-1] == "yes" for r in rows)
    assert all(c["new_tokens"] == 24 for c in details["columns"])
    texts = out[4:]  # per column: header, text, cards, timeline
    assert all('class="es-tok' in texts[4 * c + 1] for c in range(3))


def test_generate_and_compare_write_in_the_language_asked_for(client):
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    for name in ("/generate", "/replay", "/compare"):  # the switch: optional, English unless asked
        lang = next(p for p in api[name]["parameters"] if p["parameter_name"] == "lang")
        assert lang["parameter_has_default"] and lang["parameter_default"] == "en"
    out = client.predict(prompt=PROMPT, max_new_tokens=8, lang="ja", api_name="/generate")
    status, details = out[0], out[6]
    assert status.startswith("**完了**：easyspec N=4 every-round k=5 · ") and details["new_tokens"] == 8
    assert details["label"] == "easyspec N=4 every-round k=5" and details["stop"] == "max_new_tokens"  # data
    status, table, badge, details = client.predict(prompt=PROMPT, max_new_tokens=8, columns=2, lang="ja",
                                                   api_name="/compare")[:4]
    assert status.startswith("**完了**：") and table["headers"][:2] == ["列", "設定"] and "トークンの一致：一致" in badge
    assert details["identical"] is True and details["note"].startswith("all 2 columns emitted")
    # a language the app does not know: the switch's own check answers with a message, no traceback
    with pytest.raises(AppError, match="must be one of en, ja; got 'fr'"):
        client.predict(prompt=PROMPT, max_new_tokens=4, lang="fr", api_name="/generate")


def test_pilot_on_typed_prompts(client, tmp_path):
    out = client.predict(prompt="The quick brown fox\n0123456789", source="typed prompts", n_prompts=2,
                         layer_parallel=[2], calibration=["every-round"], draft_len=[3], speculative=True,
                         max_new_tokens=8, api_name="/pilot")
    status, summary, runs, chart, csv_path, json_path = out[:6]
    assert status.startswith("**Done**: 6 of 6 runs")
    assert [r[0] for r in summary["data"]] == ["vanilla", "speculative k=3", "easyspec N=2 every-round k=3"]
    assert sorted(r[1] for r in runs["data"]) == sorted([r[0] for r in summary["data"]] * 2)
    assert [r[-1] for r in runs["data"]] == ["", "equal", "equal"] * 2  # the greedy check against vanilla
    assert [r[-3:] for r in summary["data"]] == [["", "", ""], [2, 0, 0], [2, 0, 0]]  # equal, ties, different
    assert open(csv_path).read().startswith("prompt,setting,mode")
    assert len(json.loads(open(json_path).read())["rows"]) == 6
    projected, note = out[8], out[9]
    assert note.startswith("**Projected, not measured.**") and "a100-80gb" in note
    rows = projected["data"]
    assert [r[0] for r in rows] == [8] and all(r[1] == "easyspec N=2 every-round k=3" for r in rows)  # G's default
    assert all(float(r[2]) > 0 and float(r[4]) > 0 for r in rows)
    report = open(out[10], encoding="utf-8").read()  # the report: one HTML file with the same figures
    data = json.loads(report.split('id="report-data">')[1].split("</script>")[0])
    assert [[s["setting"], s["tokens_per_s"], s["speedup"]] for s in data["settings"]] == \
        [[r[0], r[4], r[5]] for r in summary["data"]]  # setting, (mean prompt tokens), new tokens, tokens/s, speedup
    assert [r["easyspec_speedup"] for r in data["projection"]["rows"] if r["devices"] == 8] == [r[5] for r in rows]
    # an uploaded CSV works the same way
    upload = tmp_path / "prompts.csv"
    upload.write_text("prompt\nhello there\n")
    out = client.predict(source="uploaded file", upload=handle_file(str(upload)), n_prompts=1, layer_parallel=[2],
                         calibration=["none"], draft_len=[3], speculative=False, max_new_tokens=4,
                         api_name="/pilot")
    assert out[0].startswith("**Done**: 2 of 2 runs")


@pytest.mark.parametrize("kwargs, api, message", [
    (dict(prompt="   "), "/generate", "prompt is empty"),
    (dict(prompt=PROMPT, layer_parallel=7), "/generate", "layer-parallel size N must be between 1 and 6"),
    (dict(prompt=PROMPT, top_p=0.0), "/generate", "top-p must be between 0.05 and 1"),
    (dict(prompt=PROMPT, mode="turbo"), "/generate", "turbo"),
    (dict(prompt="x" * 300, max_new_tokens=256), "/generate", "exceeds the base model's context window"),
    (dict(prompt="x" * 300, max_new_tokens=256, columns=2), "/compare", "column 1: .*context window"),
    (dict(prompt="", source="typed prompts"), "/pilot", "type at least one prompt"),
    (dict(source="built-in set", layer_parallel=[]), "/pilot", "tick at least one layer-parallel size"),
])
def test_bad_input_gives_a_message_and_the_app_stays_up(client, kwargs, api, message):
    with pytest.raises(AppError, match=message):
        client.predict(**kwargs, api_name=api)
    assert client.predict(prompt="abc", max_new_tokens=2, api_name="/generate")[6]["new_tokens"] >= 1


def test_bad_uploads_are_rejected_with_the_reason(client, tmp_path):
    binary = tmp_path / "prompts.csv"
    binary.write_bytes(b"\x00\x01\x02binary\x00")
    with pytest.raises(AppError, match="binary"):
        client.predict(source="uploaded file", upload=handle_file(str(binary)), api_name="/pilot")
    wrong = tmp_path / "prompts.jsonl"
    wrong.write_text('{"question": "no prompt key"}\n')
    with pytest.raises(AppError, match='line 1: expected an object with a "prompt" key'):
        client.predict(source="uploaded file", upload=handle_file(str(wrong)), api_name="/pilot")
    not_a_run = tmp_path / "run.jsonl"
    not_a_run.write_text('{"prompt": "x"}\n')
    with pytest.raises(AppError, match="not a replayable easyspec run"):
        client.predict(run_file=handle_file(str(not_a_run)), speed="instant", api_name="/replay")


def test_replay_of_a_saved_run(client):
    details = client.predict(prompt=PROMPT, max_new_tokens=16, api_name="/generate")
    run_file = details[7]
    out = client.predict(run_file=handle_file(run_file), speed="instant", api_name="/replay")
    assert out[0].startswith("**Replayed**")
    assert out[6]["token_ids"] == details[6]["token_ids"]
    assert _bars(out[3])
