"""The draft at its own precision (core/models/quantize.py): quantized layers against float ones, greedy
equality with vanilla in every mode with int8 and int4 drafts, sampling stays the base's, the
on-disk cache is reused and rebuilt when corrupt, and bad precisions get a clear message."""
from __future__ import annotations

import pytest
import torch

from conftest import CPU, assert_greedy_equal, tokens_of
from easyspec.core.models import quantize
from easyspec.core.planning import plan_run
from easyspec.core.engine.loop import generate
from easyspec.core.settings import SamplingConfig, SpecConfig, check_draft_dtype
from easyspec.core.models.loading import load_decoder, load_draft

# Relative Frobenius error of a quantized linear's output against the float layer's, on Gaussian
# weights and inputs: int8 per-channel rounding is ~0.8% (step max|w| / 127), int4 with groups of 32
# ~10% (16 levels over each group's range). The kernels themselves must match the dequantized
# weights' matmul to float rounding.
TOLERANCE = {"int8": 0.02, "int4": 0.15, "int4-g128": 0.2}
KERNEL_TOLERANCE = 1e-4


def _dequantized(ql: quantize.QuantLinear, w: torch.Tensor, scheme: str) -> torch.Tensor:
    """The weight the kernel should compute with, rebuilt from the quantizer's own arithmetic."""
    if ql.kind == "int8":
        return ql.q.float() * ql.scale.float()[:, None]
    g = ql.group
    wg = w.float().reshape(w.shape[0], -1, g)
    lo, hi = wg.amin(-1), wg.amax(-1)
    scale = ((hi - lo) / 15).clamp(min=1e-12)
    q = torch.round((wg - lo[..., None]) / scale[..., None]).clamp(0, 15)
    return (q * scale[..., None] + lo[..., None]).reshape(w.shape)


@pytest.mark.parametrize("scheme", ["int8", "int4", "int4-g128"])
def test_quantized_linear_matches_the_float_layer(scheme):
    g = torch.Generator().manual_seed(0)
    w, x = torch.randn(96, 256, generator=g), torch.randn(5, 256, generator=g)
    ql = quantize.quantize_weight(w, scheme, torch.float32, "test")
    assert ql.kind == ("int8" if scheme == "int8" else "int4")
    y, ref = ql(x), x @ w.T
    assert y.shape == ref.shape and y.dtype == torch.float32
    err = float((y - ref).norm() / ref.norm())
    assert err < TOLERANCE[scheme], (scheme, err)
    exact = x @ _dequantized(ql, w, scheme).T
    assert float((y - exact).norm() / exact.norm()) < KERNEL_TOLERANCE
    assert ql.nbytes() < w.numel() * (1.1 if scheme == "int8" else 0.8)  # bytes a weight, scales included


def test_int4_falls_back_to_int8_where_the_group_does_not_divide_the_layer(caplog):
    w = torch.randn(8, 48)
    ql = quantize.quantize_weight(w, "int4", torch.float32, "layers.0.odd")
    assert ql.kind == "int8" and "not a multiple of the int4 group size 32" in caplog.text


@pytest.fixture(scope="module")
def quantized(decoders):
    """name -> (base, {scheme: quantized draft}) for the qwen2 pair (no cache)."""
    base, draft = decoders["qwen2"]
    return base, {s: quantize.quantize_decoder(draft, s) for s in ("int8", "int4")}


CASES = [("speculative", dict(draft_len=4)), ("easyspec", dict(layer_parallel=4, calibration="every-round")),
         ("easyspec", dict(layer_parallel=3, calibration="none")),
         ("easyspec", dict(layer_parallel=4, calibration="on-mismatch", tree_depth=3, tree_width=2))]


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_greedy_output_equals_vanilla_with_a_quantized_draft(quantized, scheme):
    base, drafts = quantized
    draft = drafts[scheme]
    assert isinstance(draft.w.wqkv, quantize.QuantStack) and isinstance(draft.w.lm_head, quantize.QuantLinear)
    for prompt in ([11, 40, 99, 7], [5, 6, 7, 8, 9, 10, 200, 3]):
        ref = tokens_of(generate(base, None, plan_run(SpecConfig(mode="vanilla", max_new_tokens=24), prompt, base,
                                                      None)))
        for mode, kw in CASES:
            records = list(generate(base, draft, plan_run(SpecConfig(mode=mode, max_new_tokens=24, **kw), prompt, base,
                                                          draft)))
            assert sum(r.accepted for r in records) > 0, (scheme, mode, kw)  # the draft is still useful
            assert_greedy_equal(tokens_of(records), ref, base, prompt, (scheme, mode, kw))


def test_sampled_tokens_follow_the_base_distribution_with_an_int4_draft(tmp_path):
    from helpers import make_pair
    from test_sampling import _exact_marginals, chi2, chi2_critical

    base_dir, draft_dir = make_pair(tmp_path, noise=0.08, seed=3)
    base = load_decoder(base_dir, torch.float32, CPU)
    draft = quantize.quantize_decoder(load_decoder(draft_dir, torch.float32, CPU), "int4")
    prompt = [11, 40, 99, 7, 150, 3]
    shaping = SamplingConfig(temperature=1.0, top_k=5)
    expected, draft_marginals = _exact_marginals(base, prompt, shaping, 3), _exact_marginals(draft, prompt, shaping, 3)
    runs, counts = 1200, [dict() for _ in range(3)]
    for seed in range(runs):
        cfg = SpecConfig(mode="easyspec", layer_parallel=4, draft_len=2, max_new_tokens=3,
                         sampling=SamplingConfig(temperature=1.0, top_k=5, seed=seed))
        for pos, t in enumerate(tokens_of(generate(base, draft, plan_run(cfg, prompt, base, draft)))):
            counts[pos][t] = counts[pos].get(t, 0) + 1
    for pos in (1, 2):
        stat, df = chi2(counts[pos], expected[pos], runs)
        assert stat < chi2_critical(df), f"token {pos + 1}: chi2 {stat:.1f} on {df} df"
    against_draft = [chi2(counts[pos], draft_marginals[pos], runs) for pos in (1, 2)]
    assert any(stat > chi2_critical(df) for stat, df in against_draft), against_draft  # power


def test_quantized_weights_are_cached_reused_and_rebuilt_when_corrupt(pair_dirs, tmp_path, monkeypatch):
    monkeypatch.setenv("EASYSPEC_CACHE", str(tmp_path / "cache"))
    _, draft_dir = pair_dirs["qwen2"]
    calls = []
    real = quantize.quantize_weight
    monkeypatch.setattr(quantize, "quantize_weight", lambda *a: calls.append(a[3]) or real(*a))
    first = load_draft(draft_dir, "int8", CPU)
    built = len(calls)
    assert built == 8 * 4 + 1  # 4 stacked linears per layer and the LM head
    entry = quantize.cache_dir(quantize.cache_key(draft_dir, "int8", CPU))
    assert (entry / "weights.safetensors").is_file() and (entry / "meta.json").is_file()
    x = torch.tensor([3, 14, 15, 92])

    def logits(d):
        return d.forward(x, 0, d.new_cache(8))

    second = load_draft(draft_dir, "int8", CPU)
    assert len(calls) == built, "a valid cache entry is read, not recomputed"
    assert torch.equal(logits(first), logits(second))
    data = bytearray((entry / "weights.safetensors").read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the packed weights
    (entry / "weights.safetensors").write_bytes(bytes(data))
    third = load_draft(draft_dir, "int8", CPU)
    assert len(calls) == 2 * built, "a corrupt entry is rebuilt"
    assert torch.equal(logits(first), logits(third))
    (entry / "weights.safetensors").write_bytes(b"truncated")
    load_draft(draft_dir, "int8", CPU)
    assert len(calls) == 3 * built
    assert quantize.load_cache(entry, "int8", CPU) is not None  # and the rebuilt entry is valid again
    assert quantize.cache_key(draft_dir, "int4", CPU) != quantize.cache_key(draft_dir, "int8", CPU)


def test_session_runs_each_draft_precision_and_checks_them(pair_dirs, tmp_path, monkeypatch):
    from easyspec.core.session import Session

    monkeypatch.setenv("EASYSPEC_CACHE", str(tmp_path / "cache"))
    base_dir, draft_dir = pair_dirs["qwen2"]
    with Session.open(base=str(base_dir), draft=str(draft_dir), draft_dtype="int8") as s:
        assert s.info.draft_dtype == "int8" and s.info.dtype == "float32"
        prompt = [11, 40, 99, 7]
        ref = tokens_of(s.generate(s.plan(SpecConfig(mode="vanilla", max_new_tokens=16), prompt)))
        for precision in ("", "bfloat16", "int4", "float32"):
            cfg = SpecConfig(mode="easyspec", max_new_tokens=16, draft_dtype=precision)
            assert_greedy_equal(tokens_of(s.generate(s.plan(cfg, prompt))), ref, s.base, prompt, precision)
        assert s.draft_for(SpecConfig(draft_dtype="bfloat16")).dtype == torch.bfloat16
        assert set(s._drafts) == {"int8", "bfloat16", "int4", "float32"}


@pytest.mark.parametrize("make,message", [
    (lambda: SpecConfig(draft_dtype="int3"), "--draft-dtype: unknown draft precision 'int3'"),
    (lambda: check_draft_dtype("float16"), "choose one of float32, bfloat16, int8, int4, int4-g128"),
    (lambda: quantize._int4_ops(torch.device("meta")), "packed int4 kernels"),
])
def test_bad_draft_precisions_get_a_clear_message(make, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make()


def test_cli_refuses_an_unknown_draft_precision(capsys):
    from easyspec.app.cli import main

    assert main(["generate", "--prompt", "hi", "--draft-dtype", "fp8"]) == 2
    err = capsys.readouterr().err
    assert "easyspec: error: --draft-dtype: unknown draft precision 'fp8'" in err and "Traceback" not in err
    assert main(["bench", "speed", "--draft-dtypes", "int8,int5", "--no-transformers"]) == 2
    assert "unknown draft precision 'int5'" in capsys.readouterr().err


def test_pilot_grid_runs_every_drafting_setting_at_each_draft_precision():
    from easyspec.core.evaluation.pilot import PilotGrid

    grid = PilotGrid(layer_parallel=(4,), calibration=("every-round",), draft_dtypes=("float32", "int8"))
    labels = [(s.label, s.config.draft_dtype) for s in grid.settings()]
    assert labels == [("vanilla", ""), ("speculative k=5 [float32]", "float32"), ("speculative k=5 [int8]", "int8"),
                      ("easyspec N=4 every-round k=5 [float32]", "float32"),
                      ("easyspec N=4 every-round k=5 [int8]", "int8")]
    with pytest.raises(ValueError, match="draft precisions: unknown draft precision 'int2'"):
        PilotGrid(draft_dtypes=("int2",))


def test_bench_speed_rows_per_draft_precision_with_a_bf16_assistant(pair_dirs, tmp_path, monkeypatch, capsys):
    """`bench speed --draft-dtypes`: rows per precision, transformers' assistant also in bf16, the
    precision table and its target verdict computed from the rows (a tiny random pair cannot reach the
    target, so the run says "not met" and exits 1, as a producer that misses its criterion does)."""
    import json

    from easyspec.app.cli import main
    from easyspec.core.evaluation import bench

    monkeypatch.setenv("EASYSPEC_CACHE", str(tmp_path / "cache"))
    base, draft = pair_dirs["qwen2"]
    out = tmp_path / "precision"
    code = main(["bench", "speed", "--base", str(base), "--draft", str(draft), "--prompts", "code,chat",
                 "--limit", "1", "--max-new-tokens", "6", "--repeats", "1", "--layer-parallel", "4",
                 "--draft-dtypes", "float32,int8,bfloat16", "--out", str(out)])
    data = json.loads(out.with_suffix(".json").read_text())
    md = out.with_suffix(".md").read_text()
    assert len(data["prompts"]) == 2  # the first prompt of each set
    settings = [r["setting"] for r in data["rows"]]
    assert "easyspec N=4 every-round k=5 [int8]" in settings and "speculative k=5 [bfloat16]" in settings
    assert "transformers assisted k=5 constant [bfloat16 assistant]" in settings
    assert all(r["greedy_checks"]["different"] == 0 for r in data["rows"])
    per = bench.precision_rows(data["rows"])
    assert [r["draft_dtype"] for r in per] == ["float32", "int8", "bfloat16"]
    assert per[0]["acceptance_drop_vs_float32"] == 0.0
    assert data["passed"] == bench.precision_passed(data["rows"]) and code == (0 if data["passed"] else 1)
    assert "## Draft precision" in md and f"Target {'met' if data['passed'] else 'not met'}" in md
    assert bench.rebuild_markdown("speed", data) == md
    capsys.readouterr()


def test_multi_device_session_with_a_quantized_draft_equals_vanilla(pair_dirs, tmp_path, monkeypatch):
    """G = 2 CPU ranks: every rank quantizes (or reads from the cache) its own int4 draft copy, the fuzzy
    groups' attentions run one per rank, and greedy output stays the base's."""
    from easyspec.core.session import Session

    monkeypatch.setenv("EASYSPEC_CACHE", str(tmp_path / "cache"))
    base_dir, draft_dir = pair_dirs["qwen2"]
    prompt = [11, 40, 99, 7]
    with Session.open(base=str(base_dir), draft=str(draft_dir), devices=2, draft_dtype="int4") as s:
        ref = tokens_of(s.generate(s.plan(SpecConfig(mode="vanilla", max_new_tokens=12), prompt)))
        got = tokens_of(s.generate(s.plan(SpecConfig(mode="easyspec", layer_parallel=2, max_new_tokens=12), prompt)))
        assert_greedy_equal(got, ref, s.base, prompt, "G=2 int4")
        with pytest.raises(ValueError, match="start the session with --draft-dtype int8"):
            s.plan(SpecConfig(draft_dtype="int8", layer_parallel=2), prompt)


def test_generate_and_app_take_a_draft_precision(pair_dirs, tmp_path, monkeypatch, capsys):
    import json

    from easyspec.app.cli import main
    from easyspec.app.context import AppOptions, draft_precision

    monkeypatch.setenv("EASYSPEC_CACHE", str(tmp_path / "cache"))
    base, draft = pair_dirs["qwen2"]
    assert main(["generate", "--base", str(base), "--draft", str(draft), "--prompt", "def add(a, b):",
                 "--max-new-tokens", "12", "--draft-dtype", "int4", "--check-lossless", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["lossless"] is True and out["greedy_check"]["verdict"] == "equal" and out["draft_dtype"] == "int4"
    assert AppOptions(draft_dtype="int8").draft_dtype == "int8"
    with pytest.raises(ValueError, match="unknown draft precision 'int3'"):
        AppOptions(draft_dtype="int3")

    class Info:
        dtype, draft_dtype = "float32", "int8"
    assert draft_precision(Info) == " (draft int8)"
