"""The hardware model of decoding (docs/projection.md): its arithmetic, its fit, and `easyspec project`."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest

from easyspec.app.cli import main
from easyspec.core.evaluation import fitting
from easyspec.core.evaluation.hardware import DEVICES, FITTED, Device, load_device
from easyspec.core.evaluation.projection import Machine, Setting, attention, forward, project
from easyspec.core.evaluation.shapes import PAIRS, PRESETS, from_config

H100 = DEVICES["h100-sxm"]
BASE, DRAFT = PRESETS["llama-3.1-70b"], PRESETS["llama-3.1-8b"]
IDEAL = replace(FITTED, bandwidth=1.0, replay_s=0.0, collective_s=0.0, collective_hop_s=0.0)


def test_a_bandwidth_bound_forward_takes_bytes_over_bandwidth():
    m = PRESETS["qwen2.5-7b"]
    w = forward(m, 1, 100)
    expected = m.weight_bytes + 100 * m.kv_bytes_per_token * m.layers
    assert w.bytes == pytest.approx(expected)
    assert Machine(H100, IDEAL).seconds(w) == pytest.approx(expected / H100.bandwidth)
    assert Machine(H100, FITTED).seconds(w) == pytest.approx(expected / (H100.bandwidth * FITTED.bandwidth)
                                                             + FITTED.replay_s)
    eager = Machine(H100, FITTED, cuda_graphs=False)  # one launch per kernel instead of one replay
    assert eager.seconds(w) - eager.busy(w) == pytest.approx(w.launches * FITTED.launch_s)


def test_tensor_parallel_divides_the_bytes_per_device_and_adds_collectives():
    one, eight = forward(BASE, 1, 1024, tp=1), forward(BASE, 1, 1024, tp=8)
    assert eight.bytes == pytest.approx(one.bytes / 8)  # 64 heads, 8 KV heads: everything divides by 8
    assert one.collectives == 0 and eight.collectives == 2 * BASE.layers + 1  # + the LM head's logit gather
    q7 = PRESETS["qwen2.5-7b"]  # 28 heads, 4 KV heads: over 8 devices each holds 4 heads and 1 KV head
    qo, kv = 2 * q7.hidden * 128 * 2, 2 * q7.hidden * 128 * 2  # q and o rows per head, k and v rows per KV head
    assert attention(q7, 1, 0, 1, tp=8).bytes == pytest.approx(4 * qo + 1 * kv)
    p1, p8 = (project(BASE, DRAFT, H100, Setting(devices=g, layer_parallel=1)) for g in (1, 8))
    assert p8["vanilla"]["per_device_bytes"] < p1["vanilla"]["per_device_bytes"] / 7
    assert p8["vanilla"]["tokens_per_s"] > 4 * p1["vanilla"]["tokens_per_s"]


def test_attention_share_and_easyspec_gain_grow_with_context():
    short, long = (project(BASE, PRESETS["llama-3.2-1b"], H100, Setting(context=c)) for c in (1024, 32768))
    assert long["draft_attention_share"] > short["draft_attention_share"] > 0.1
    assert long["drafting_speedup"] > short["drafting_speedup"] > 1.0
    window = PRESETS["gemma-3-1b"]  # local layers stop reading at their window
    assert window.cached(100_000) < 100_000 / 5 and window.cached(300) == 300


def test_speculative_idles_the_other_devices_and_easyspec_uses_them():
    p = project(BASE, DRAFT, H100, Setting(devices=4, layer_parallel=4))
    spec, easy = p["speculative"]["utilisation"], p["easyspec"]["utilisation"]
    assert len(spec) == len(easy) == 4 and spec[0] > spec[1] == spec[3]
    assert min(easy[1:]) > 2 * max(spec[1:])
    assert p["easyspec"]["draft_s"] < p["speculative"]["draft_s"]
    with pytest.raises(ValueError, match="N <= G"):
        Setting(devices=2, layer_parallel=4)
    with pytest.raises(ValueError, match="within 1..k\\+1"):
        Setting(al_speculative=7.0)


def test_batch_keeps_weight_bytes_and_turns_the_verify_compute_bound():
    w1, w64 = forward(BASE, 6, 1024, batch=1, tp=8), forward(BASE, 6, 1024, batch=64, tp=8)
    kv = BASE.layers * 1024 * BASE.kv_bytes_per_token / 8
    assert w64.bytes - w1.bytes == pytest.approx(63 * kv)  # weights read once; KV reads grow with B
    assert w64.flops > 60 * w1.flops
    assert project(BASE, DRAFT, H100, Setting(batch=1))["verify_bound"] == "memory"
    assert project(BASE, DRAFT, H100, Setting(batch=256))["verify_bound"] == "compute"


def test_a_tree_verifies_all_its_nodes():
    chain, tree = (project(BASE, DRAFT, H100, Setting(tree_width=w)) for w in (0, 8))
    assert tree["speculative"]["verify_s"] > chain["speculative"]["verify_s"]
    assert tree["speculative"]["draft_s"] >= chain["speculative"]["draft_s"]


def test_least_squares_and_leave_one_out_on_a_synthetic_set():
    x = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 1.0]]
    theta = fitting.least_squares(x, [2 * a + 3 * b for a, b in x], [1.0] * 4)
    assert theta == pytest.approx([2.0, 3.0])

    class Row:
        def __init__(self, v):
            self.tokens_per_s = v

    rows = [Row(v) for v in (1.0, 2.0, 3.0, 6.0)]
    loo = fitting.leave_one_out(rows, lambda rs: sum(r.tokens_per_s for r in rs) / len(rs), lambda r, mean: mean)
    assert loo == pytest.approx([11 / 3 / 1 - 1, 10 / 3 / 2 - 1, 9 / 3 / 3 - 1, 6 / 3 / 6 - 1])
    assert fitting.median_abs(loo) == pytest.approx(2 / 3)  # |errors| 0, 2/3, 2/3, 8/3


def test_the_fitted_factors_are_the_fit_of_the_published_figures():
    rows = fitting.published_rows()
    eff = fitting.fit(rows)
    for k in ("bandwidth", "replay_s", "collective_s", "collective_hop_s"):
        assert getattr(FITTED, k) == pytest.approx(getattr(eff, k), rel=2e-3), k
    errs = fitting.errors(rows, FITTED)
    assert fitting.median_abs(errs) <= 0.15 and max(map(abs, errs)) <= 0.30
    assert 0.5 < eff.bandwidth < 1.0  # gpt-fast's README: about 1700 of 2039 GB/s at best


def _project(capsys, *argv):
    code = main(["project", *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("hardware", sorted(DEVICES))
def test_every_preset_runs_through_easyspec_project(capsys, hardware):
    for base, drafts in PAIRS.items():
        for draft in drafts:
            code, out, err = _project(capsys, "--hardware", hardware, "--devices", "8", "--base", base, "--draft",
                                      draft, "--accepted-length", "3.2", "--json")
            p = json.loads(out)
            assert code == 0 and err == ""
            assert all(p[m]["tokens_per_s"] > 0 for m in ("vanilla", "speculative", "easyspec"))
            assert p["speculative"]["accepted_length"] == 3.2 and p["accepted_length_source"] == "entered"
            assert len(p["easyspec"]["utilisation"]) == 8


def test_user_device_and_config_files(tmp_path, capsys):
    toml = tmp_path / "mine.toml"
    toml.write_text('name = "mine"\nbandwidth_gb_s = 1000\nbf16_tflops = 200\nlink_gb_s = 50\n'
                    '[efficiency]\nbandwidth = 0.5\n')
    dev, eff = load_device(toml)
    assert dev == Device("mine", 1000e9, 200e12, 50e9, "user link", "user file mine.toml") and eff.bandwidth == 0.5
    (tmp_path / "gemma").mkdir()
    cfg = {"model_type": "gemma3", "text_config": {"num_hidden_layers": 26, "hidden_size": 1152,
                                                   "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 256,
                                                   "intermediate_size": 6912, "vocab_size": 262144,
                                                   "sliding_window": 512}, "tie_word_embeddings": True}
    (tmp_path / "gemma" / "config.json").write_text(json.dumps(cfg))
    assert replace(from_config(tmp_path / "gemma"), name="gemma-3-1b") == PRESETS["gemma-3-1b"]
    code, out, _ = _project(capsys, "--hardware", str(toml), "--devices", "2", "--base", "llama-3.1-8b", "--draft",
                            str(tmp_path / "gemma" / "config.json"))
    assert code == 0 and "mine" in out and "assumed" in out


@pytest.mark.parametrize("argv, message", [
    (["--hardware", "tpu9", "--base", "llama-3.1-70b"], "unknown hardware 'tpu9'"),
    (["--hardware", "h100-sxm", "--devices", "0", "--base", "llama-3.1-70b"], "--devices must be >= 1"),
    (["--hardware", "h100-sxm", "--base", "/nowhere/config.json"], "/nowhere/config.json: no such config.json"),
    (["--hardware", "/nowhere/dev.toml", "--base", "llama-3.1-70b"], "/nowhere/dev.toml: no such device file"),
    (["--hardware", "h100-sxm", "--base", "llama-9"], "unknown model 'llama-9'"),
    (["--hardware", "h100-sxm", "--devices", "2", "--base", "llama-3.1-70b", "--layer-parallel", "4"], "N <= G"),
    (["--hardware", "h100-sxm", "--base", "llama-3.1-70b", "--accepted-length", "9"], "within 1..k+1"),
])
def test_bad_input_gives_one_line_and_exit_status_2(capsys, argv, message):
    code, out, err = _project(capsys, *argv)
    assert code == 2 and out == "" and message in err
    assert err.count("\n") == 1 and "Traceback" not in err
