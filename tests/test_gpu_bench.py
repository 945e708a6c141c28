"""`easyspec bench gpu`: the whole command on CPU with the tiny preset, its import path, and that the
layer-parallel draft step it times is the fuzzy plan."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from easyspec.app.cli import main
from easyspec.core.evaluation import gpu_bench
from easyspec.core.engine.decoder import ForwardOptions
from easyspec.core.evaluation.gpu_bench import PRESETS, build_model, derive, draft_plan, forward_fn
from easyspec.core.engine.grouping import describe, layer_groups

CPU = torch.device("cpu")
FORBIDDEN = ("transformers", "gradio", "plotly")
K = 2
TINY_ARGS = ["bench", "gpu", "--device", "cpu", "--presets", "tiny", "--repeats", "3", "--warmup", "1",
             "--context", "16", "--draft-len", str(K)]


def test_cpu_tiny_run_writes_json_and_prints_table_last(tmp_path, capsys):
    assert main([*TINY_ARGS, "--out", str(tmp_path)]) == 0
    stdout = capsys.readouterr().out.strip().splitlines()
    r = json.loads((tmp_path / "gpu_bench_cpu.json").read_text())
    assert r["schema"] == gpu_bench.SCHEMA and r["torch"] == torch.__version__ and r["dtype"] == "float32"
    assert r["device"]["type"] == "cpu" and r["device"]["name"]
    assert r["settings"]["context"] == 16 and r["settings"]["draft_len"] == K and r["settings"]["repeats"] == 3
    assert r["models"]["tiny"]["shape"]["n_layers"] == 6 and r["models"]["tiny"]["roles"] == ["draft", "base"]
    assert r["cuda_graphs"]["measured"] is False and r["skipped"] == []
    ms = r["measurements"]
    assert all(m["mode"] == "eager" and m["repeats"] == 3 and m["warmup"] == 1 and m["finite"] for m in ms)
    assert all(0 < m["min_ms"] <= m["median_ms"] <= m["max_ms"] for m in ms)
    steps = {m["layer_parallel"]: m["plan"] for m in ms if m["kind"] == "draft_step"}
    assert steps == {n: describe(layer_groups(6, n)) for n in (1, 2, 3, 4)}
    assert sorted(m["tokens"] for m in ms if m["kind"] == "calibration") == list(range(1, K + 2))
    assert [m["tokens"] for m in ms if m["kind"] == "verify"] == [K + 1]
    assert [m["tokens"] for m in ms if m["kind"] == "vanilla_step"] == [1]
    (row,) = r["derived"]
    assert (row["draft"], row["base"], row["mode"]) == ("tiny", "tiny", "eager")
    assert set(row["drafting_speedup"]) == {"2", "3", "4"} and all(v > 0 for v in row["drafting_speedup"].values())
    assert row["round_ms"]["speculative"] > 0 and all(v > 0 for v in row["round_ms"]["easyspec"].values())
    # The table is the last thing on stdout: one row per (model, forward), one per (pair, mode).
    assert stdout[0].startswith("easyspec bench gpu |") and "not on cpu" in stdout[0]
    assert sum(line.startswith("tiny ") and "T=" in line for line in stdout) == 4 + (K + 1) + 2
    assert stdout[-1].startswith("tiny -> tiny") and "eager" in stdout[-1]


def test_import_path_needs_torch_only():
    """Importing the bench, `bench gpu --help` and a whole tiny run load no transformers/gradio/plotly."""
    code = f"""
import sys, tempfile
import easyspec.core.evaluation.gpu_bench
from easyspec.app.cli import main
try:
    main(["bench", "gpu", "--help"])
except SystemExit as e:
    assert e.code == 0, e.code
assert main({TINY_ARGS + ["--repeats", "1", "--warmup", "0"]!r} + ["--out", tempfile.mkdtemp()]) == 0
print("LOADED", sorted({{m.split(".")[0] for m in sys.modules}} & set({FORBIDDEN!r})))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "LOADED []"
    proc = subprocess.run([sys.executable, "-m", "easyspec.app.cli", "bench", "gpu", "--help"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "--no-cuda-graphs" in proc.stdout and "--time-budget-s" in proc.stdout


def test_timed_draft_step_is_the_fuzzy_plan():
    """N=1 equals the exact forward bit for bit; N=2 and N=4 (batched fuzzy groups) differ from it."""
    model = build_model(PRESETS["tiny"], CPU, torch.float32, seed=0)
    cache = model.new_cache(20)
    model.forward(torch.arange(16) * 7 % 256, 0, cache, ForwardOptions(logits=False))
    token = torch.tensor([3])
    exact = forward_fn(model, cache, token, 16, None)()
    assert cache.length == 17
    assert torch.equal(forward_fn(model, cache, token, 16, draft_plan(6, 1))(), exact)
    for n in (2, 4):
        fuzzy = forward_fn(model, cache, token, 16, draft_plan(6, n))()
        assert torch.isfinite(fuzzy).all()
        assert (fuzzy - exact).abs().max() > 1e-3, n
    # The exact forward is unchanged after the fuzzy ones: each call resets the cache to `pos`.
    assert torch.equal(forward_fn(model, cache, token, 16, None)(), exact)


def test_build_model_shapes_and_tied_head():
    s = PRESETS["tiny"]
    m = build_model(s, CPU, torch.bfloat16, seed=1)
    assert m.w.wqkv.shape == (6, (4 + 2 * 2) * 16, 64) and m.w.wqkv.dtype == torch.bfloat16
    assert m.w.lm_head is not m.w.embed  # tiny is untied
    assert sum(t.numel() for t in vars(m.w).values() if t is not None) == s.n_params()
    assert PRESETS["qwen2.5-0.5b"].tie_word_embeddings and abs(PRESETS["qwen2.5-0.5b"].n_params() / 1e9 - 0.494) < 0.01
    assert abs(PRESETS["qwen2.5-7b"].n_params() / 1e9 - 7.62) < 0.01
    assert torch.equal(build_model(s, CPU, torch.bfloat16, seed=1).w.wo, m.w.wo)  # seeded


def test_derived_round_estimates():
    k = 5

    def rec(model, kind, tokens, ms, n=None):
        return {"model": model, "kind": kind, "mode": "eager", "tokens": tokens, "layer_parallel": n, "median_ms": ms}

    ms = [rec("d", "draft_step", 1, 10.0, 1), rec("d", "draft_step", 1, 6.0, 2), rec("d", "calibration", 2, 11.0),
          rec("d", "calibration", k + 1, 12.0), rec("b", "verify", k + 1, 20.0), rec("b", "vanilla_step", 1, 8.0)]
    (row,) = derive(ms, [("d", "b")], k, (2, 3))
    assert row["round_ms"]["speculative"] == 11 + 4 * 10 + 20
    assert row["round_ms"]["easyspec"] == {"2": 12 + 4 * 6 + 20, "3": None}
    assert row["drafting_speedup"] == {"2": 10 / 6, "3": None}
    assert row["break_even_al"]["easyspec"]["2"] == 56 / 8


def test_pairs_every_smaller_preset_drafts_for_every_larger():
    pairs, drafts, bases = gpu_bench.roles(gpu_bench.DEFAULT_PRESETS)
    assert pairs == [("qwen2.5-0.5b", "qwen2.5-1.5b"), ("qwen2.5-0.5b", "qwen2.5-7b"), ("qwen2.5-1.5b", "qwen2.5-7b")]
    assert drafts == {"qwen2.5-0.5b", "qwen2.5-1.5b"} and bases == {"qwen2.5-1.5b", "qwen2.5-7b"}


@pytest.mark.parametrize("extra, message", [
    (["--presets", "nope"], "--presets"),
    (["--layer-parallel", "5"], "--layer-parallel"),
    (["--layer-parallel", "2,x"], "--layer-parallel"),
    (["--repeats", "0"], "--repeats"),
])
def test_bad_input_is_one_line_and_status_2(tmp_path, capsys, extra, message):
    assert main([*TINY_ARGS, "--out", str(tmp_path), *extra]) == 2
    err = capsys.readouterr().err
    assert "easyspec: error:" in err and message in err and "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_a_gpu_is_a_clear_error(tmp_path, capsys):
    assert main(["bench", "gpu", "--presets", "tiny", "--out", str(tmp_path)]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_time_budget_skips_and_still_reports(tmp_path, capsys):
    assert main([*TINY_ARGS, "--out", str(tmp_path), "--time-budget-s", "0.000001"]) == 0
    r = json.loads((tmp_path / "gpu_bench_cpu.json").read_text())
    assert r["measurements"] == [] and r["skipped"] == ["tiny: not built, time budget"]
    assert capsys.readouterr().out.strip().splitlines()[-1] == "skipped: 1 (see the JSON)"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_replay_equals_eager():
    dev = torch.device("cuda")
    model = build_model(PRESETS["tiny"], dev, torch.float32, seed=0)
    cache = model.new_cache(20)
    with torch.inference_mode():
        model.forward(torch.arange(16, device=dev), 0, cache, ForwardOptions(logits=False))
        for plan in (None, draft_plan(6, 3)):
            fn = forward_fn(model, cache, torch.tensor([3], device=dev), 16, plan)
            eager = fn().clone()
            replay = gpu_bench.cuda_graphed(fn, dev)
            torch.testing.assert_close(replay(), eager)


def test_failed_graph_capture_keeps_eager_and_turns_graphs_off(monkeypatch):
    """A capture error (say, a kernel that syncs) costs the graph column, not the run."""
    def fail(fn, device):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(gpu_bench, "cuda_graphed", fail)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    cfg = gpu_bench.BenchConfig(presets=("tiny",), device="cpu", repeats=2, warmup=0)
    bench = gpu_bench._Bench(cfg, CPU, log=lambda s: None)
    bench.graphs_ok = True  # as on a CUDA device
    model = build_model(PRESETS["tiny"], CPU, torch.float32, seed=0)
    cache = model.new_cache(4)
    for _ in range(2):
        bench.measure("tiny", "vanilla_step", forward_fn(model, cache, torch.tensor([1]), 0, None), 1)
    assert [m["mode"] for m in bench.measurements] == ["eager", "eager"]
    assert not bench.graphs_ok and "stream is capturing" in bench.graph_error
    assert len(bench.skipped) == 1 and "capture failed" in bench.skipped[0]
