"""Dashboard internals without a server: settings validation, the device job and Stop, per-user state."""
from __future__ import annotations

import copy
import sys
import threading
import time

import pytest

pytest.importorskip("gradio")

from easyspec.app.context import DEMO_RUNS, AppOptions, load_demo_runs  # noqa: E402
from easyspec.app.live import LiveRun  # noqa: E402
from easyspec.app.settings import describe_config, spec_config, ui_message  # noqa: E402
from easyspec.app.state import UserState  # noqa: E402
from easyspec.app.worker import DeviceJob, on_thread, record_stream  # noqa: E402
from easyspec.core.settings import SettingsError, SpecConfig, name  # noqa: E402


@pytest.fixture(scope="module")
def session(pair_dirs):
    from easyspec.core.session import Session

    base, draft = pair_dirs["qwen2"]
    with Session.open(base=str(base), draft=str(draft)) as s:
        yield s


def test_settings_from_raw_inputs():
    cfg = spec_config("easyspec", 4.0, "on-mismatch", "5", 0, 1, 0, 7, 64)
    assert (cfg.layer_parallel, cfg.draft_len, cfg.sampling.seed, cfg.max_new_tokens) == (4, 5, 7, 64)
    assert describe_config(cfg) == "easyspec N=4 on-mismatch k=5"
    assert describe_config(SpecConfig(mode="vanilla")) == "vanilla"
    for args, match in [(("fast", 4, "none", 5, 0, 1, 0, 0, 8), "mode must be one of"),
                        (("easyspec", 2.5, "none", 5, 0, 1, 0, 0, 8), "layer-parallel size N must be a whole"),
                        (("easyspec", 4, "never", 5, 0, 1, 0, 0, 8), "calibration policy must be one of"),
                        (("easyspec", 4, "none", None, 0, 1, 0, 0, 8), "draft length k must be a whole"),
                        (("easyspec", 4, "none", 5, float("nan"), 1, 0, 0, 8), "temperature must be a finite"),
                        (("easyspec", 4, "none", 5, 0, 1.5, 0, 0, 8), r"top-p must be in \(0, 1\]"),
                        (("easyspec", 4, "none", 5, 0, 1, 0, 0, 0), "max new tokens must be between")]:
        with pytest.raises(ValueError, match=match):
            spec_config(*args)
    # an engine error names its field: the command line reads its flag, the dashboard its label
    err = SettingsError("layer_parallel", f"{name('layer_parallel')} must be >= 1")
    assert str(err) == "--layer-parallel must be >= 1" and ui_message(err) == "layer-parallel size N must be >= 1"
    assert ui_message(ValueError("--tolerance must be a number")) == "--tolerance must be a number"  # not a setting


def test_tree_and_adaptive_settings_from_raw_inputs():
    cfg = spec_config("easyspec", 4, "every-round", 5, 0, 1, 0, 0, 64, tree_depth="4", tree_width=3.0, adaptive=True)
    assert (cfg.tree_depth, cfg.tree_width, cfg.adaptive) == (4, 3, True)
    assert describe_config(cfg) == "easyspec N=4 every-round tree 4x3 adaptive"
    assert describe_config(spec_config("speculative", 1, "none", 5, 0, 1, 0, 0, 8, tree_depth=0, tree_width=4,
                                       adaptive=True)) == (
        "speculative k=5 adaptive")
    for extra, match in [((-1, 4, False), "tree depth must be between"), ((2, 0, False), "tree width must be between"),
                         ((2, 2, "yes"), "adaptive draft length must be true or false")]:
        with pytest.raises(ValueError, match=match):
            spec_config("easyspec", 4, "none", 5, 0, 1, 0, 0, 8, "equal groups of N", "", *extra)


def test_layer_grouping_from_raw_inputs():
    assert spec_config("easyspec", 4, "none", 5, 0, 1, 0, 0, 8, "auto (tuned)", "").groups == "auto"
    assert spec_config("easyspec", 4, "none", 5, 0, 1, 0, 0, 8, "custom plan", " 0|1-6|7 ").groups == "0|1-6|7"
    assert spec_config("easyspec", 4, "none", 5, 0, 1, 0, 0, 8, "equal groups of N", "0|1").groups == ""
    with pytest.raises(ValueError, match="custom plan is empty"):
        spec_config("easyspec", 4, "none", 5, 0, 1, 0, 0, 8, "custom plan", "  ")
    with pytest.raises(ValueError, match="layer grouping must be one of"):
        spec_config("easyspec", 4, "none", 5, 0, 1, 0, 0, 8, "greedy groups", "")


def test_app_options_keep_custom_models_behind_a_flag():
    assert AppOptions().pair_name == "qwen2.5-coder"
    with pytest.raises(ValueError, match="--allow-custom-models"):
        AppOptions(base="a", draft="b")
    assert AppOptions(base="a", draft="b", allow_custom_models=True).pair_name is None
    with pytest.raises(ValueError, match="both --base and --draft"):
        AppOptions(base="a", allow_custom_models=True)
    with pytest.raises(ValueError, match="--port"):
        AppOptions(port=0)


def test_user_state_is_per_session_and_survives_gradio_copies():
    a, b = UserState(), UserState()
    assert copy.deepcopy(a) is a and a.stops is not b.stops
    stop = a.begin("generate")
    assert not stop.is_set() and a.request_stop("generate") and stop.is_set()
    assert not a.request_stop("generate") and not b.request_stop("generate")


def test_stop_ends_a_run_within_one_round_and_frees_the_session(session):
    ids = session.encode("The quick brown fox", False)
    cfg = SpecConfig(max_new_tokens=300)
    stop = threading.Event()
    job = DeviceJob(record_stream(session, session.plan(cfg, ids)), stop)
    got = []
    for batch in job.batches(min_interval_s=0.0):
        got.extend(batch)
        if len(got) >= 3 and not stop.is_set():
            stop.set()
            seen_at_stop = len(got)
    job.join(timeout=30)
    # at most the round in flight when Stop was pressed still arrives
    assert seen_at_stop <= len(got) <= seen_at_stop + 1
    assert got[-1].stop is None  # cut short, not finished
    # the device lock is free: a new run starts and finishes at once
    done = on_thread(lambda: list(session.generate(session.plan(SpecConfig(max_new_tokens=5), ids))))
    assert sum(len(r.token_ids) for r in done) == 5


def test_an_abandoned_handler_does_not_hold_the_device(session):
    ids = session.encode("The quick brown fox", False)
    job = DeviceJob(record_stream(session, session.plan(SpecConfig(max_new_tokens=300), ids)), threading.Event())
    batches = job.batches(min_interval_s=0.0)
    next(batches)
    batches.close()  # the browser went away: Gradio drops the handler's generator
    job.join(timeout=30)
    t0 = time.monotonic()
    on_thread(lambda: list(session.generate(session.plan(SpecConfig(max_new_tokens=3), ids))))
    assert time.monotonic() - t0 < 30


def test_device_job_hands_over_errors():
    def produce(stop):
        yield 1
        raise ValueError("broken round")

    job = DeviceJob(produce, threading.Event())
    with pytest.raises(ValueError, match="broken round"):
        for _ in job.batches():
            pass
    with pytest.raises(RuntimeError, match="boom"):
        on_thread(lambda: (_ for _ in ()).throw(RuntimeError("boom")))


def test_live_run_text_matches_the_tokenizer(session):
    ids = session.encode("0123456789", True)
    live = LiveRun(session.tokenizer, "easyspec")
    live.add(session.generate(session.plan(SpecConfig(max_new_tokens=40), ids)))
    live.finish()
    assert live.text == session.decode(live.token_ids)
    assert len(live.pieces) == len(live.token_ids) == 40
    details = live.details()
    assert details["new_tokens"] == 40 and details["metrics"]["new_tokens"] == 40 and not details["stopped_early"]


def test_shipped_demo_runs_load_and_agree():
    runs = load_demo_runs()
    assert [r.label for r in runs] == ["speculative", "easyspec every-round", "easyspec none"]
    tokens = [[t for rec in r.records for t in rec.token_ids] for r in runs]
    assert len(tokens[0]) == 48 and tokens[0] == tokens[1] == tokens[2]  # greedy: identical tokens
    assert runs[1].header.settings["layer_parallel"] > 1 and runs[0].header.settings["mode"] == "speculative"
    assert any(s.phase == "calibrate" for rec in runs[1].records for s in rec.spans)


def test_shipped_demo_runs_are_current_recordings():
    """The recordings come from `benchmarks/rerun_results.py` (its demo_run steps) with today's record
    format: each run's own memory (version 2) and round 1 drafted as the calibration policy says."""
    import importlib.util
    import json
    from importlib import resources

    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "rerun_results.py"
    spec = importlib.util.spec_from_file_location("rerun_results", script)
    rerun = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = rerun  # its dataclasses look their module up while it loads
    spec.loader.exec_module(rerun)
    by_name = {r.label: r for r in load_demo_runs()}
    for label, name in DEMO_RUNS.items():
        recorded_with = rerun.DEMO_RUNS[name.removesuffix(".jsonl")]
        flags = dict(zip(recorded_with[::2], recorded_with[1::2]))
        settings = by_name[label].header.settings
        assert settings["mode"] == flags["--mode"] and settings["max_new_tokens"] == 48
        assert settings["calibration"] == flags.get("--calibration", settings["calibration"])
        with resources.as_file(resources.files("easyspec.assets").joinpath(name)) as path:
            lines = [json.loads(line) for line in path.read_text().splitlines()]
        assert {line["version"] for line in lines} == {2}, name
        assert all(line["memory_source"] for line in lines[1:]), name
        first_draft = next(r for r in by_name[label].records if r.drafted)
        assert first_draft.calibrated == (settings["mode"] == "easyspec" and settings["calibration"] == "every-round")


def test_device_monitor_reads_gpus_through_nvml_or_falls_back_to_cpu(monkeypatch):
    import types

    from easyspec.core.runtime.device_stats import DeviceMonitor
    from easyspec.visualizations.cards import device_panel_html

    fake = types.SimpleNamespace(
        nvmlInit=lambda: None, nvmlDeviceGetCount=lambda: 2, nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetName=lambda h: b"NVIDIA H100",
        nvmlDeviceGetUtilizationRates=lambda h: types.SimpleNamespace(gpu=30 + 40 * h),
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(used=(h + 1) * 2**30, total=80 * 2**30))
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    readings = DeviceMonitor(prefer_gpu=True).read()
    assert [(r.name, r.kind, r.utilisation_pct, r.memory_used_bytes) for r in readings] == [
        ("GPU 0", "gpu", 30.0, 2**30), ("GPU 1", "gpu", 70.0, 2 * 2**30)]
    assert "GPU 1" in device_panel_html(readings) and "70% busy" in device_panel_html(readings)

    def broken():
        raise RuntimeError("NVML Shared Library Not Found")

    monkeypatch.setitem(sys.modules, "pynvml", types.SimpleNamespace(nvmlInit=broken))
    monitor = DeviceMonitor(prefer_gpu=True)
    cpu = monitor.read()
    assert cpu[0].kind == "cpu" and cpu[0].memory_total_bytes > 0 and "NVML unavailable" in monitor.note


def test_cli_app_rejects_bad_launch_options(capsys):
    from easyspec.app.cli import main

    assert main(["app", "--base", "a", "--draft", "b"]) == 2
    assert "--allow-custom-models" in capsys.readouterr().err
    assert main(["app", "--port", "70000"]) == 2
    assert "--port must be between" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["app", "--share", "maybe"])


# -- the screens' live output in the language of the switch ---------------------------------------
def _figure_words(fig) -> list[str]:
    """What a figure says in its own words: title, axis titles, annotations, trace names (not hover texts)."""
    layout = fig.layout
    words = [layout.title.text, layout.xaxis.title.text, layout.yaxis.title.text]
    words += [a.text for a in layout.annotations] + [t.name for t in fig.data]
    return [w for w in words if w]


# an uncalibrated run with one group of all 8 draft layers: acceptance collapses and the alert is raised
UNCALIBRATED = dict(prompt="The quick brown fox", chat=True, mode="easyspec", layer_parallel=4, calibration="none",
                    draft_len=5, temperature=0, top_p=1, top_k=0, seed=0, max_new_tokens=40, grouping="custom plan",
                    plan="0-7")


def test_generate_and_replay_write_in_the_language_of_the_switch(app_ctx):
    from helpers import untranslated

    from easyspec.app.generate_tab import make_handlers

    handlers = make_handlers(app_ctx)
    generate, replay = handlers.generate, handlers.replay
    views = {lang: list(generate(UNCALIBRATED, UserState(), lang)) for lang in ("ja", "en", "fr")}
    last = views["ja"][-1]
    status, text, cards, details, run_file, alert = (last[k] for k in ("status", "text", "cards", "details", "run_file",
                                                                        "alert"))
    timeline, per_position, histogram, rolling = (last[k] for k in ("timeline", "per_position", "histogram", "rolling"))
    assert views["ja"][0]["status"] == "**実行中** easyspec plan 0-7 none k=5 …"
    assert status.startswith("**完了**：easyspec plan 0-7 none k=5 · ") and "トークン/秒" in status
    assert "受理率の低下" in alert and "考えられる原因：最大 8 レイヤのグループでキャリブレーションが無効です" in alert
    assert "下限の 20%" in alert  # nothing tuned for this pair: the fixed floor
    assert ">トークン/秒<" in cards and 'data-metric="acceptance_rate"' in cards and "ドラフトの MLP" in cards
    assert "受理されたドラフトのトークン" in text and 'data-origin="accepted"' in text
    figures = (timeline, per_position, histogram, rolling)
    assert [_figure_words(f)[0] for f in figures[1:]] == ["位置ごとの受理率", "ラウンドごとの受理数", "直近 12 ラウンドの受理率"]
    assert "実行開始からの時間（ms）" in _figure_words(timeline) and "0.20 未満で警告" in _figure_words(rolling)
    words = [view[k] for view in views["ja"] for k in ("status", "text", "cards", "alert")]
    words += [w for f in figures for w in _figure_words(f)]
    assert not untranslated(words), untranslated(words)
    # the data stays English, and English (or a language the app does not know) is as before
    en = views["en"][-1]
    assert details["label"] == en["details"]["label"] and details["token_ids"] == en["details"]["token_ids"]
    assert en["status"].startswith("**Done**: easyspec plan 0-7 none k=5 · 40 tokens in ")
    assert "<b>⚠ Low acceptance</b>" in en["alert"] and \
        "Likely cause: with groups of up to 8 layers, calibration is off" in en["alert"] and ">tokens/s<" in en["cards"]
    assert [_figure_words(en[k])[0] for k in ("per_position", "histogram")] == \
        ["Per-position acceptance", "Accepted drafts per round"]
    fr = views["fr"][-1]
    assert fr["status"].startswith("**Done**: ") and fr["alert"] == en["alert"] and \
        _figure_words(fr["rolling"]) == _figure_words(en["rolling"])
    # a replay of the saved run, in Japanese and in English
    replayed = list(replay(dict(run_file=run_file, speed="instant"), UserState(), "ja"))[-1]
    assert replayed["status"].startswith("**再生完了**：replay (easyspec, recorded ") and "受理率の低下" in replayed["alert"]
    assert list(replay(dict(run_file=run_file, speed="instant"), UserState()))[-1]["status"].startswith(
        "**Replayed**: replay (easyspec")


def test_the_switch_redraws_the_generate_screen(app_ctx):
    from helpers import untranslated

    from easyspec.app.generate_tab import make_handlers

    handlers = make_handlers(app_ctx)
    generate, redraw = handlers.generate, handlers.redraw
    state = UserState()
    empty = redraw(state, "ja")  # before any run: the empty screen in Japanese
    figures = ("timeline", "per_position", "histogram", "rolling")
    assert empty["status"] == "**実行** を押すと生成が始まります。"
    assert set(empty) == {"status", "text", "cards", "alert", *figures}
    words = [empty[k] for k in ("status", "text", "cards")] + [w for k in figures for w in _figure_words(empty[k])]
    assert not untranslated(words), untranslated(words)
    last = list(generate(UNCALIBRATED, state, "en"))[-1]
    ja = redraw(state, "ja")  # a finished English run, drawn again in Japanese: same tokens, same alert
    assert ja["status"].startswith("**完了**：easyspec plan 0-7 none k=5 · ") and "受理率の低下" in ja["alert"]
    assert _figure_words(ja["per_position"])[0] == "位置ごとの受理率"
    en = redraw(state, "en")
    assert all(en[k] == last[k] for k in ("status", "text", "alert"))  # back in English, as the run drew it
    assert redraw(state, "xx")["status"] == en["status"]


def test_the_compare_screen_before_a_comparison_in_both_languages():
    from helpers import untranslated

    from easyspec.app.compare_tab import empty_view

    modes = ["vanilla", "speculative", "easyspec", "easyspec"]
    ja, en = empty_view(modes, "ja"), empty_view(modes, "en")
    assert set(ja) == set(en) == {"status", "summary", "badge"} | {f"{name}_{c}" for c in range(1, 5) for name in
                                                                   ("header", "text", "cards", "timeline")}
    assert ja["status"] == "2〜4 個の設定を選んで **比較を実行** を押してください。" and ja["header_1"] == "**1.** 待機中"
    assert en["status"] == "Pick two to four settings, then **Run comparison**." and en["header_1"] == "**1.** waiting"
    words = [v for v in ja.values() if isinstance(v, str)]
    words += [w for c in range(1, 5) for w in _figure_words(ja[f"timeline_{c}"])]
    assert not untranslated(words), untranslated(words)


def test_compare_writes_in_the_language_of_the_switch(app_ctx):
    from helpers import untranslated

    from easyspec.app.compare_tab import SUMMARY_HEADERS, make_compare

    compare = make_compare(app_ctx)
    columns = {f"{name}_{c}": value for c in range(1, 5)
               for name, value in (("mode", "vanilla" if c == 1 else "easyspec"), ("layer_parallel", 4),
                                   ("calibration", "every-round"), ("draft_len", 3))}
    values = dict(prompt="The quick brown fox", chat=True, max_new_tokens=8, temperature=0, seed=0, columns=2,
                  **columns)
    views = {lang: list(compare(values, lang=lang)) for lang in ("ja", "en", "xx")}
    first, last = views["ja"][0], views["ja"][-1]
    status, table, badge, details = (last[k] for k in ("status", "summary", "badge", "details"))
    assert first["status"] == "**比較中** 同じプロンプトで 2 通りの設定を実行しています …"
    assert set(last) == {"status", "summary", "badge", "details"} | {f"{name}_{c}" for c in (1, 2) for name in
                                                                      ("header", "text", "cards", "timeline")}
    assert status == "**完了**：すべての列を同じプロンプトで、同じデバイス上で順番に実行しました。"
    assert table["headers"][:3] == ["列", "設定", "トークン"] and [row[-1] for row in table["data"]] == ["はい"] * 2
    assert "トークンの一致：一致" in badge and 'data-equal="yes"' in badge and "2 列すべてが同じ 8 トークン" in badge
    assert last["header_1"] == "**1. vanilla** · 完了" and ">新規トークン<" in last["cards_1"]
    assert "実行開始からの時間（ms）" in _figure_words(last["timeline_1"])
    assert details["note"] == "all 2 columns emitted the same 8 tokens (greedy decoding is lossless)"  # data
    shown = [v for view in views["ja"] for k, v in view.items() if k not in ("summary", "details")]  # not JSON
    words = [v for v in shown if isinstance(v, str)] + table["headers"]
    words += [w for v in shown if hasattr(v, "layout") for w in _figure_words(v)]
    assert not untranslated(words), untranslated(words)
    for lang in ("en", "xx"):
        last = views[lang][-1]
        assert last["status"].startswith("**Done**: all columns ran") and last["summary"]["headers"] == SUMMARY_HEADERS
        assert "identical tokens: YES" in last["badge"] and last["header_1"] == "**1. vanilla** · done"


def test_stop_while_a_run_waits_for_the_device_cancels_it_before_it_starts(app_ctx):
    """The Run button arms the run's stop flag before the run queues: a Stop pressed while the run still
    waits (behind another user's) cancels it on every screen, and the device is never used for it."""
    from easyspec.app.common import arm_stop
    from easyspec.app.compare_tab import make_compare
    from easyspec.app.generate_tab import make_handlers
    from easyspec.app.pilot_tab import make_handlers as pilot_handlers

    generate, pilot = make_handlers(app_ctx).generate, pilot_handlers(app_ctx).pilot
    compare = make_compare(app_ctx)
    columns = {f"{name}_{c}": value for c in range(1, 5)
               for name, value in (("mode", "vanilla"), ("layer_parallel", 4), ("calibration", "every-round"),
                                   ("draft_len", 3))}
    calls = {"generate": lambda state: generate({**UNCALIBRATED, "max_new_tokens": 8}, state, "ja"),
             "compare": lambda state: compare(dict(prompt="The quick brown fox", chat=True, max_new_tokens=8,
                                                   temperature=0, seed=0, columns=2, **columns), state, "ja"),
             "pilot": lambda state: pilot(dict(prompt="The quick brown fox", source="typed prompts", prompt_set="code",
                                               n_prompts=1, layer_parallel=[2], calibration=["every-round"],
                                               draft_len=[3], speculative=True, max_new_tokens=8, chat=True,
                                               temperature=0), state, "ja")}
    for screen, call in calls.items():
        state = UserState()
        arm_stop(screen)(state)  # the click
        assert state.request_stop(screen), screen  # Stop while queued is taken, not ignored
        views = list(call(state))
        assert views == [{"status": "開始前に停止しました：この実行はまだデバイスの空きを待っていました。"}], screen
        assert not state.last and not state.runs, screen  # nothing ran
        # the next click runs normally: the flag was the queued run's alone
        arm_stop(screen)(state)
        assert list(call(state))[-1]["status"].startswith("**完了**"), screen


def test_the_app_keeps_at_most_max_sessions_in_memory(tmp_path):
    """Gradio holds each session's latest outputs until it evicts the session: --max-sessions sets how many."""
    from easyspec.app.dashboard import launch_settings

    assert launch_settings(AppOptions(max_sessions=7), tmp_path)["state_session_capacity"] == 7
    assert launch_settings(AppOptions(), tmp_path)["state_session_capacity"] == AppOptions().max_sessions == 200
    with pytest.raises(ValueError, match="--max-sessions must be >= 1; got 0"):
        AppOptions(max_sessions=0)


# -- every handler of the dashboard takes at most three positional parameters --------------------------
MAX_POSITIONAL = 3  # the form's values (one dict by name), the user's state, the language


def positional_parameters(fn) -> float:
    """How many positional arguments `fn` takes (inf with *args): what Gradio fills one input at a time."""
    import inspect

    kinds = [p.kind for p in inspect.signature(fn).parameters.values()]
    if inspect.Parameter.VAR_POSITIONAL in kinds:
        return float("inf")
    return sum(k in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD) for k in kinds)


def wide_handlers(demo) -> list[str]:
    """The registered event functions of `demo` that take more than MAX_POSITIONAL positional parameters."""
    return [f"{getattr(fn.fn, '__qualname__', fn.fn)} ({positional_parameters(fn.fn)})" for fn in demo.fns.values()
            if fn.fn is not None and positional_parameters(fn.fn) > MAX_POSITIONAL]


def test_the_check_of_positional_parameters_finds_a_wide_handler():
    import gradio as gr

    def wide(a, b, c, d):
        return a

    def many(*values):
        return values[0]

    def narrow(values, state, lang="en", *, progress=None, **rest):
        return values

    with gr.Blocks() as demo:
        boxes = [gr.Textbox() for _ in range(4)]
        boxes[0].change(wide, boxes, boxes[0])
        boxes[1].change(many, boxes, boxes[1])
        boxes[2].change(narrow, boxes[:3], boxes[2])
    assert positional_parameters(narrow) == 3
    found = wide_handlers(demo)
    assert len(found) == 2 and found[0].endswith("wide (4)") and found[1].endswith("many (inf)"), found


def test_no_dashboard_handler_takes_more_than_three_positional_parameters(app_ctx):
    from easyspec.app.dashboard import build_app

    demo = build_app(app_ctx)
    assert len(demo.fns) > 20  # every screen's events, not an empty app
    assert not wide_handlers(demo), wide_handlers(demo)


def test_the_api_keeps_its_parameter_names(app_ctx):
    """The events pass their inputs by name: the API's parameters are the handlers' names, with defaults, and the
    pilot's draft precision is one of them (none ticked: the session's own)."""
    from easyspec.app.dashboard import build_app
    from easyspec.app.settings import RUN_SETTINGS

    api = build_app(app_ctx).get_api_info()["named_endpoints"]
    names = {name: [p["parameter_name"] for p in api[name]["parameters"]] for name in api}
    assert names["/generate"] == ["prompt", "chat", *RUN_SETTINGS, "on_low_acceptance", "lang"]
    assert names["/replay"] == ["run_file", "speed", "lang"]
    assert {"prompt", "columns", "mode_1", "grouping_4", "lang"} <= set(names["/compare"])
    assert names["/pilot"][:8] == ["prompt", "source", "prompt_set", "n_prompts", "layer_parallel", "calibration",
                                   "draft_len", "draft_dtypes"]
    pilot = {p["parameter_name"]: p for p in api["/pilot"]["parameters"]}
    assert pilot["upload"]["parameter_has_default"] and pilot["upload"]["parameter_default"] is None
    assert pilot["draft_dtypes"]["parameter_default"] == []
    assert names["/tune"] == ["prompt", "source", "prompt_set", "n_prompts", "upload", "chat", "tolerance", "tokens",
                              "draft_len"]


def test_the_pilot_grid_takes_the_draft_precisions(app_ctx):
    from easyspec.app.pilot_tab import make_grid

    values = dict(layer_parallel=[2], calibration=["none"], draft_len=[3], speculative=True, max_new_tokens=8,
                  chat=True, temperature=0)
    assert make_grid(values).draft_dtypes == ()  # none ticked: the session's own precision
    grid = make_grid({**values, "draft_dtypes": ["bfloat16", "int8"]})
    assert grid.draft_dtypes == ("bfloat16", "int8")
    assert [s.config.draft_dtype for s in grid.settings()[1:]] == ["bfloat16", "int8"] * 2
    with pytest.raises(ValueError, match="draft precision must be one of float32, bfloat16, int8"):
        make_grid({**values, "draft_dtypes": ["float8"]})
    assert make_grid(values).contexts == (0,)  # none ticked: the prompts as given
    assert make_grid({**values, "contexts": [0, 2048]}).contexts == (0, 2048)
    with pytest.raises(ValueError, match="context length must be one of 0, 256, 2048, 8192; got 999"):
        make_grid({**values, "contexts": [999]})


def test_the_pilot_judges_every_setting_against_the_teams_criteria(app_ctx):
    """The pilot's last view holds the criteria table (met or not per setting, from the measured summary); new
    targets re-judge the same numbers without a rerun and go into the next exported report; bad targets get a
    message before any run."""
    from easyspec.app.pilot_tab import make_handlers as pilot_handlers
    from easyspec.core.evaluation.criteria import Criteria, judge
    from easyspec.core.evaluation.pilot import summarise

    handlers = pilot_handlers(app_ctx)
    values = dict(prompt="The quick brown fox", source="typed prompts", prompt_set="code", n_prompts=1,
                  layer_parallel=[2, 4], calibration=["none"], draft_len=[3], speculative=True, max_new_tokens=12,
                  chat=True, temperature=0, min_speedup=0.01, max_acceptance_drop=100, equality="required")
    state = UserState()
    last = list(handlers.pilot(values, state, "en"))[-1]
    summary = summarise([r.row for r in state.pilot_report[0]])
    table = last["criteria_table"]
    assert [row[0] for row in table["data"]] == [s["setting"] for s in summary if s["mode"] != "vanilla"]
    assert all(row[-1] == "yes" for row in table["data"]), table  # every target loose: every setting meets it
    assert last["criteria_note"].startswith("**3 of 3 settings meet every target**")
    strict = handlers.rejudge(dict(min_speedup=100, max_acceptance_drop=0, equality="required"), state, "ja")
    expected = judge(summary, Criteria(min_speedup=100, max_acceptance_drop=0, equality="required"))
    assert [row[-1] for row in strict["criteria_table"]["data"]] == ["いいえ"] * 3 and not any(j.met for j in expected)
    assert strict["criteria_note"].startswith("**3 設定中 0 設定がすべての目標を達成**")
    assert state.pilot_report[2].criteria == Criteria(min_speedup=100, max_acceptance_drop=0, equality="required")
    assert "⚠️ minimum speedup must be above 0" in handlers.rejudge(dict(min_speedup=-1), state, "en")["criteria_note"]
    with pytest.raises(Exception, match="equality must be one of required, ties allowed"):
        list(handlers.pilot({**values, "equality": "roughly"}, UserState(), "en"))


def test_projected_for_your_cluster(app_ctx, tmp_path):
    """The Pilot screen's projection: the chosen GPU, G, pair (preset, config.json or this pair), context and
    execution through the hardware model, fed with an entered or the pilot's measured accepted length; its rows
    are the model's own numbers, its charts one simulated round per mode; bad choices get a message."""
    import json

    from easyspec.app.pilot_tab import make_handlers as pilot_handlers
    from easyspec.core.evaluation.hardware import DEVICES
    from easyspec.core.evaluation.projection import Setting, project
    from easyspec.core.evaluation.shapes import PRESETS

    project_cluster = pilot_handlers(app_ctx).project_cluster
    grid = dict(layer_parallel=[2, 4], calibration=["none"], draft_len=[5], speculative=True, max_new_tokens=8,
                chat=True, temperature=0)
    cluster = dict(hardware="h100-sxm", devices=4, execution="CUDA graphs", context=2048,
                   base_model="llama-3.1-70b", draft_model="llama-3.1-8b")
    assert project_cluster({**grid, **cluster}, UserState(), "en")["projected_note"].startswith("Run a pilot")
    view = project_cluster({**grid, **cluster, "accepted_length": 3.0}, UserState(), "en")
    rows = view["projected"]["data"]
    assert [r[1] for r in rows] == ["easyspec N=2 k=5", "easyspec N=4 k=5"]
    for row, n in zip(rows, (2, 4)):
        p = project(PRESETS["llama-3.1-70b"], PRESETS["llama-3.1-8b"], DEVICES["h100-sxm"],
                    Setting(devices=4, context=2048, draft_len=5, layer_parallel=n, al_speculative=3.0,
                            al_easyspec=3.0))
        assert row[2] == round(p["vanilla"]["tokens_per_s"], 3) and row[4] == round(p["easyspec"]["tokens_per_s"], 3)
    assert "G = 4 × `h100-sxm`" in view["projected_note"] and "Projected, not measured" in view["projected_note"]
    lanes = {t for trace in view["round_easyspec"].data for t in (trace.y or ())}
    assert {"GPU 0 · draft attention", "GPU 3 · draft attention"} <= lanes  # one attention per GPU
    idle = {t for trace in view["round_speculative"].data if trace.name == "idle (spare device)" for t in trace.y}
    assert "GPU 1 · idle" in idle and "GPU 0 · idle" not in idle  # the draft on GPU 0, the others idle
    assert len(view["utilisation"].data) == 3 and len(view["utilisation"].data[0].y) == 4
    # this pair, and a config.json the user uploads, give their own shapes
    config = tmp_path / "config.json"
    config.write_text(json.dumps(dict(num_hidden_layers=40, hidden_size=5120, num_attention_heads=40,
                                      num_key_value_heads=8, intermediate_size=17408, vocab_size=151936)))
    own = project_cluster({**grid, **cluster, "base_model": "this pair", "draft_model": "this pair",
                           "accepted_length": 3.0}, UserState(), "en")
    uploaded = project_cluster({**grid, **cluster, "base_config": str(config), "accepted_length": 3.0}, UserState(),
                               "en")
    assert own["projected"]["data"][0][2] > uploaded["projected"]["data"][0][2]  # a tiny pair runs far faster
    assert f"base `{config.parent.name}`" in uploaded["projected_note"]  # the shape named after its folder
    for bad, message in ((dict(devices=3), "devices G must be one of 1, 2, 4, 8; got 3"),
                         (dict(accepted_length=9.0), "mean accepted length must be within 1..k+1 = 6"),
                         (dict(base_model="gpt-9"), "base model must be one of this pair"),
                         (dict(hardware="tpu"), "projection hardware must be one of")):
        note = project_cluster({**grid, **cluster, "accepted_length": 3.0, **bad}, UserState(), "en")["projected_note"]
        assert note.startswith("No projection: ") and message in note, note
