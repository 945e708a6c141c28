"""Dashboard internals without a server: settings validation, the device job and Stop, per-user state."""
from __future__ import annotations

import copy
import sys
import threading
import time

import pytest

pytest.importorskip("gradio")

from easyspec.app.context import AppOptions, load_demo_runs  # noqa: E402
from easyspec.app.live import LiveRun  # noqa: E402
from easyspec.app.settings import describe_config, spec_config, ui_message  # noqa: E402
from easyspec.app.state import UserState  # noqa: E402
from easyspec.app.worker import DeviceJob, on_thread, record_stream  # noqa: E402
from easyspec.core.engine import SpecConfig  # noqa: E402


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
    assert ui_message(ValueError("--layer-parallel must be >= 1")) == "layer-parallel size N must be >= 1"


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
    job = DeviceJob(record_stream(session, ids, cfg), stop)
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
    done = on_thread(lambda: list(session.generate(ids, SpecConfig(max_new_tokens=5))))
    assert sum(len(r.token_ids) for r in done) == 5


def test_an_abandoned_handler_does_not_hold_the_device(session):
    ids = session.encode("The quick brown fox", False)
    job = DeviceJob(record_stream(session, ids, SpecConfig(max_new_tokens=300)), threading.Event())
    batches = job.batches(min_interval_s=0.0)
    next(batches)
    batches.close()  # the browser went away: Gradio drops the handler's generator
    job.join(timeout=30)
    t0 = time.monotonic()
    on_thread(lambda: list(session.generate(ids, SpecConfig(max_new_tokens=3))))
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
    live.add(session.generate(ids, SpecConfig(max_new_tokens=40)))
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


def test_device_monitor_reads_gpus_through_nvml_or_falls_back_to_cpu(monkeypatch):
    import types

    from easyspec.core.device_stats import DeviceMonitor
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
