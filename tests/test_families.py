"""Every supported model family on tiny random-weight checkpoints built with transformers' own classes:
our decoder's logits equal transformers' on prefill and on cached decoding (sliding windows crossed,
RoPE variants switched on, longrope's switch passed), in bf16 too; fuzzy groups equal the same computation
composed from transformers' own layers; greedy output equals vanilla in every mode; the CLI and the
dashboard load each folder. Then the refusals (each family's message) and vocabulary alignment."""
from __future__ import annotations

import itertools
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import CPU, assert_greedy_equal, tokens_of
from easyspec.core.engine.decoder import ForwardOptions
from easyspec.core.engine.loop import generate
from easyspec.core.models.loading import load_decoder
from easyspec.core.planning import plan_run
from easyspec.core.settings import SettingsError, SpecConfig
from helpers import hf_config, save_checkpoint

WINDOW = 6  # sliding layers' window: the 40-token tests cross its edge many times
LLAMA3 = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
LONGROPE = {"rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 0.5,
            "short_factor": [1.0, 1.1, 1.3, 1.7], "long_factor": [1.5, 2.0, 4.0, 8.0],
            "original_max_position_embeddings": 30}
# name -> (model_type, config fields); each is one configuration users bring (README.md#supported-model-families)
FAMILIES = {
    "llama3.2-tied": ("llama", dict(rope_parameters=LLAMA3, tie_word_embeddings=True)),
    "mistral": ("mistral", dict(sliding_window=WINDOW)),
    "mistral-nemo": ("mistral", dict(head_dim=24, sliding_window=None)),  # head_dim 128 != 5120 / 32 in Nemo
    "qwen2-sliding": ("qwen2", dict(use_sliding_window=True, sliding_window=WINDOW, max_window_layers=2)),
    "qwen2-yarn": ("qwen2", dict(rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                                                  "original_max_position_embeddings": 16})),
    "qwen2-dynamic": ("qwen2", dict(max_position_embeddings=30,
                                    rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0})),
    "qwen3": ("qwen3", dict(head_dim=24)),
    "qwen3-sliding": ("qwen3", dict(head_dim=24, use_sliding_window=True, sliding_window=WINDOW,
                                    max_window_layers=1)),
    "phi3": ("phi3", dict(pad_token_id=0, rope_parameters=LONGROPE, original_max_position_embeddings=30,
                          max_position_embeddings=120)),
    "phi4-mini": ("phi3", dict(pad_token_id=0, tie_word_embeddings=True, sliding_window=WINDOW, rope_parameters={
        "rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.75})),
    "gemma2": ("gemma2", dict(head_dim=24, query_pre_attn_scalar=20, sliding_window=WINDOW, tie_word_embeddings=True,
                              attn_logit_softcapping=2.0, final_logit_softcapping=3.0)),
    "gemma3": ("gemma3_text", dict(head_dim=24, query_pre_attn_scalar=20, sliding_window=WINDOW,
                                   tie_word_embeddings=True, sliding_window_pattern=3, rope_parameters={
                                       "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                                       "full_attention": {"rope_type": "linear", "rope_theta": 1e6, "factor": 2.0}})),
}


def family_config(name: str, n_layers: int = 4, **override):
    model_type, extra = FAMILIES[name]
    return hf_config(model_type, n_layers=n_layers, **{**extra, **override})


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def checkpoint(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    save_checkpoint(folder, family_config(request.param), seed=1, norm_noise=0.3)
    return request.param, folder


def _transformers_logits(folder, ids: torch.Tensor, prefill: int) -> torch.Tensor:
    """transformers' own model: the prefill in one forward, then one token at a time with its cache. As its
    generate does for longrope (Phi3ForCausalLM.prepare_inputs_for_generation), the step that first passes
    the original context runs the whole sequence again without the cache."""
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    rp = hf.config.rope_parameters
    switch = rp.get("original_max_position_embeddings") if rp.get("rope_type") == "longrope" else None
    with torch.inference_mode():
        out = hf(ids[None, :prefill], use_cache=True)
        logits, cache = [out.logits[0]], out.past_key_values
        for t in range(prefill, ids.numel()):
            if switch is not None and t == switch:  # t + 1 tokens, the cache held t <= switch of them
                out = hf(ids[None, : t + 1], use_cache=True)
                logits.append(out.logits[0, -1:])
            else:
                out = hf(ids[None, t: t + 1], past_key_values=cache, use_cache=True)
                logits.append(out.logits[0])
            cache = out.past_key_values
    return torch.cat(logits)  # [T, V]


def test_logits_match_transformers(checkpoint):
    name, folder = checkpoint
    ids = torch.randint(0, 256, (40,), generator=torch.Generator().manual_seed(0))
    ref = _transformers_logits(folder, ids, 25)
    dec = load_decoder(folder, torch.float32, CPU)
    with torch.inference_mode():
        cache = dec.new_cache(40)
        ours = [dec.forward(ids[:25], 0, cache, ForwardOptions(all_logits=True))]  # prefill, then one token at a time
        ours += [dec.forward(ids[t: t + 1], t, cache) for t in range(25, 40)]
    diff = (torch.cat(ours) - ref).abs().max().item()
    assert diff < 1e-4, f"{name}: max abs logit difference {diff:.2e}"
    assert ref.std() > 0.1  # the logits are not flat: the comparison measures something


def test_bf16_logits_match_transformers_bf16(checkpoint):
    """In bf16 too our rounding is transformers' (Gemma's fp32 norms and its embedding scale rounded to the
    model dtype): far closer to transformers' bf16 logits than bf16 is to fp32 (bit-equal on this CPU)."""
    name, folder = checkpoint
    ids = torch.arange(3, 30)
    logits = {}
    for dtype in (torch.float32, torch.bfloat16):
        hf = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()
        dec = load_decoder(folder, dtype, CPU)
        with torch.inference_mode():
            ours = dec.forward(ids, 0, dec.new_cache(32), ForwardOptions(all_logits=True))
            logits[dtype] = hf(ids[None]).logits[0].float(), ours
    ref, ours = logits[torch.bfloat16]
    rounding = (ref - logits[torch.float32][0]).abs().max().item()
    diff = (ours - ref).abs().max().item()
    assert diff <= 0.1 * rounding, f"{name}: bf16 difference {diff:.2e} against a bf16 rounding of {rounding:.2e}"


def _fuzzy_with_transformers_layers(hf, ids: torch.Tensor, groups) -> torch.Tensor:
    """The fuzzy forward (docs/families.md#fuzzy-groups-per-family) composed from transformers' own layer
    modules, no cache, T below every window: each attention of a group reads the group input through its own
    layer's input norm (and, for Gemma, its own post-attention norm on its output), then the residual
    additions and MLPs run in order. Independent of our batched code path."""
    m, T = hf.model, ids.numel()
    x = m.embed_tokens(ids[None])  # [1, T, D] (Gemma's modules scale it themselves)
    pos = torch.arange(T)[None]
    mask = torch.full((T, T), float("-inf")).triu(1)[None, None]  # additive causal mask

    def rope(i):
        kind = getattr(hf.config, "layer_types", None)
        try:
            return m.rotary_emb(x, pos, layer_type=kind[i])
        except TypeError:  # one RoPE for every layer
            return m.rotary_emb(x, pos)

    for start, end in groups:
        attns = []
        for i in range(start, end):  # all from the same group input x
            layer = m.layers[i]
            a = layer.self_attn(hidden_states=layer.input_layernorm(x), position_embeddings=rope(i),
                                attention_mask=mask)[0]
            attns.append(layer.post_attention_layernorm(a) if hasattr(layer, "pre_feedforward_layernorm") else a)
        for i, a in zip(range(start, end), attns):
            layer = m.layers[i]
            x = x + a
            if hasattr(layer, "pre_feedforward_layernorm"):  # Gemma's four norms
                x = x + layer.post_feedforward_layernorm(layer.mlp(layer.pre_feedforward_layernorm(x)))
            else:
                x = x + layer.mlp(layer.post_attention_layernorm(x))
    logits = hf.lm_head(m.norm(x))[0]
    cap = getattr(hf.config, "final_logit_softcapping", None)
    return logits if cap is None else torch.tanh(logits / cap) * cap


@pytest.mark.parametrize("n", [2, 4])
def test_fuzzy_groups_match_transformers_layers(checkpoint, n):
    from easyspec.core.engine.grouping import layer_groups

    name, folder = checkpoint
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    dec = load_decoder(folder, torch.float32, CPU)
    groups = layer_groups(dec.cfg.n_layers, n, head=0, tail=0)  # Gemma 3's groups mix sliding and global layers
    ids = torch.arange(5, 5 + WINDOW - 1)
    with torch.inference_mode():
        ref = _fuzzy_with_transformers_layers(hf, ids, groups)
        ours = dec.forward(ids, 0, dec.new_cache(16), ForwardOptions(groups=groups, all_logits=True))
        exact = dec.forward(ids, 0, dec.new_cache(16), ForwardOptions(all_logits=True))
    diff = (ours - ref).abs().max().item()
    assert diff < 1e-4, f"{name}, N={n}: max abs logit difference {diff:.2e}"
    assert (exact - ours).abs().max() > 1e-3  # the fuzzy plan really computes something else


def test_each_switch_is_read_from_the_config(checkpoint):
    """The family's features were really switched on (a test pair without them would prove nothing)."""
    name, folder = checkpoint
    cfg = load_decoder(folder, torch.float32, CPU).cfg
    expected = {
        "llama3.2-tied": dict(tie_word_embeddings=True, rope_kind="llama3"),
        "mistral": dict(sliding_window=WINDOW, sliding_layers=None),
        "mistral-nemo": dict(head_dim=24, sliding_window=None),
        "qwen2-sliding": dict(sliding_layers=(False, False, True, True), sliding_window=WINDOW, qkv_bias=True),
        "qwen2-yarn": dict(rope_kind="yarn"),
        "qwen2-dynamic": dict(rope_kind="dynamic"),
        "qwen3": dict(qk_norm=True, head_dim=24, qkv_bias=False),
        "qwen3-sliding": dict(qk_norm=True, sliding_layers=(False, True, True, True)),
        "phi3": dict(rope_kind="longrope", rotary_dim=8),
        "phi4-mini": dict(rotary_dim=12, tie_word_embeddings=True, sliding_window=WINDOW, sliding_layers=None),
        "gemma2": dict(sandwich_norm=True, norm_plus_one=True, attn_softcap=2.0, final_softcap=3.0,
                       sliding_layers=(True, False, True, False), activation="gelu_tanh", attn_scale=20 ** -0.5),
        "gemma3": dict(qk_norm=True, sandwich_norm=True, sliding_layers=(True, True, False, True),
                       rope_kind="linear", embed_scale=64 ** 0.5),
    }[name]
    for field, value in expected.items():
        got = cfg.rope.kind if field == "rope_kind" else getattr(cfg, field)
        assert got == value, (name, field, got)
    if name == "gemma3":
        assert cfg.sliding_rope is not None and cfg.sliding_rope.theta == 10000.0 and cfg.rope.theta == 1e6


# -- greedy equality in every mode, on a base and a draft = base + noise of each family ----------------------

PROMPT = list(range(10, 30))
POLICIES = ("none", "every-round", "on-mismatch")


@pytest.fixture(scope="module")
def family_pairs(tmp_path_factory):
    """name -> (base dir, draft dir): 8-layer pairs, the draft the base's weights plus 1% noise."""
    root = tmp_path_factory.mktemp("family_pairs")
    return {name: make_family_pair(root / name, name) for name in sorted(FAMILIES)}


# Engine runs stay below Phi-3's original context (crossing it in a run: test_longrope_crossing), and need
# a context window for their 60 tokens (dynamic NTK scaling only starts past it, so runs never reach it).
PAIR_OVERRIDES = {
    "phi3": dict(rope_parameters={**LONGROPE, "original_max_position_embeddings": 100},
                 original_max_position_embeddings=100),
    "qwen2-dynamic": dict(max_position_embeddings=512),
}


def make_family_pair(root, name: str, override: dict | None = None):
    cfg = family_config(name, n_layers=8, **(PAIR_OVERRIDES.get(name, {}) if override is None else override))
    base = save_checkpoint(root / "base", cfg, seed=0, norm_noise=0.3)
    state = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).state_dict()
    draft = save_checkpoint(root / "draft", cfg, seed=1, base_state=state, noise=0.01)
    return base, draft


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_greedy_equals_vanilla_in_every_mode(family_pairs, name):
    base_dir, draft_dir = family_pairs[name]
    base, draft = load_decoder(base_dir, torch.float32, CPU), load_decoder(draft_dir, torch.float32, CPU)
    ref = tokens_of(generate(base, None, plan_run(SpecConfig(mode="vanilla", max_new_tokens=40), PROMPT, base, None)))
    assert len(ref) == 40
    settings = [dict(mode="speculative", draft_len=4)]
    settings += [dict(mode="easyspec", layer_parallel=n, calibration=c)
                 for n, c in itertools.product(range(1, 5), POLICIES)]
    settings += [dict(mode="easyspec", layer_parallel=2, adaptive=True)]
    windowed = base.cfg.sliding_window is not None
    if not windowed:  # trees past a sliding window are refused (below)
        settings += [dict(mode="easyspec", layer_parallel=2, tree_depth=3, tree_width=2)]
    accepted = 0
    for s in settings:
        records = list(generate(base, draft, plan_run(SpecConfig(max_new_tokens=40, **s), PROMPT, base, draft)))
        if assert_greedy_equal(tokens_of(records), ref, base, PROMPT, case=(name, s)):
            accepted += sum(r.accepted for r in records)
    assert accepted > 0, f"{name}: the draft never agreed with the base: the test pair exercises nothing"
    if windowed:
        with pytest.raises(SettingsError, match="sliding-window"):
            plan_run(SpecConfig(max_new_tokens=40, tree_depth=3, tree_width=2), PROMPT, base, draft)


def test_longrope_crossing_its_original_context_mid_run(tmp_path):
    """Phi-3 with longrope whose original context (30) falls in the middle of the runs: our vanilla output
    equals transformers' generate (which encodes the sequence again with the long factors at that point),
    and every mode equals vanilla, though verification forwards straddle the switch and rejected tokens
    are cropped back before it."""
    base_dir, draft_dir = make_family_pair(tmp_path, "phi3", override={})
    base, draft = load_decoder(base_dir, torch.float32, CPU), load_decoder(draft_dir, torch.float32, CPU)
    assert base.long_from == 30 and len(PROMPT) < 30 < len(PROMPT) + 40
    ref = tokens_of(generate(base, None, plan_run(SpecConfig(mode="vanilla", max_new_tokens=40), PROMPT, base, None)))
    hf = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    with torch.inference_mode():
        out = hf.generate(torch.tensor([PROMPT]), max_new_tokens=40, do_sample=False, eos_token_id=None,
                          pad_token_id=0)
    assert_greedy_equal(ref, out[0, len(PROMPT):].tolist(), base, PROMPT, case="transformers' generate")
    accepted = 0
    for s in [dict(mode="speculative", draft_len=k) for k in (3, 6)] + [
            dict(mode="easyspec", layer_parallel=n, calibration=c, draft_len=6)
            for n, c in itertools.product((1, 3), POLICIES)]:
        records = list(generate(base, draft, plan_run(SpecConfig(max_new_tokens=40, **s), PROMPT, base, draft)))
        if assert_greedy_equal(tokens_of(records), ref, base, PROMPT, case=s):
            accepted += sum(r.accepted for r in records)
    assert accepted > 0
    with pytest.raises(SettingsError, match="longrope's original context"):
        plan_run(SpecConfig(max_new_tokens=40, tree_depth=3, tree_width=2), PROMPT, base, draft)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_cli_loads_each_family_from_a_local_folder(capsys, family_pairs, name):
    from easyspec.app.cli import main

    base, draft = family_pairs[name]
    outs = []
    for mode in ("vanilla", "easyspec"):
        code = main(["generate", "--base", str(base), "--draft", str(draft), "--prompt", "abc",
                     "--max-new-tokens", "12", "--mode", mode, "--json"])
        out, err = capsys.readouterr()
        assert code == 0, err
        outs.append(json.loads(out)["token_ids"])
    assert outs[0] == outs[1] and len(outs[0]) == 12


# -- refusals: every family the decoder cannot run is refused at load, naming the family and what is missing ----

REFUSED = {
    "mixtral": ("Mixtral", "mixture-of-experts"),
    "qwen3_moe": ("Qwen3-MoE", "mixture-of-experts"),
    "deepseek_v3": ("DeepSeek-V3", "multi-head latent attention"),
    "qwen3_next": ("Qwen3-Next", "hybrid linear-attention"),
    "qwen3_5": ("Qwen3.5", "hybrid linear-attention"),
    "gpt_oss": ("gpt-oss", "attention sinks"),
    "llama4_text": ("Llama 4", "mixture-of-experts"),
    "falcon_h1": ("Falcon-H1", "state-space"),
    "gemma3": ("Gemma 3 multimodal", "vision tower"),
}


@pytest.mark.parametrize("model_type", sorted(REFUSED))
def test_unsupported_families_are_refused_with_the_reason(tmp_path, model_type):
    from transformers import AutoConfig

    from easyspec.core.models.loading import ModelLoadError

    AutoConfig.for_model(model_type).save_pretrained(tmp_path)
    family, missing = REFUSED[model_type]
    with pytest.raises(ModelLoadError) as err:
        load_decoder(tmp_path, torch.float32, CPU)
    assert f"model type {model_type!r} ({family}) is not supported" in str(err.value)
    assert missing in str(err.value)


def test_unsupported_features_of_a_supported_family_are_refused(tmp_path):
    """A supported model type with a feature the decoder lacks is refused too, never run wrongly."""
    from easyspec.core.models.loading import ModelLoadError, decoder_config

    cases = [
        (hf_config("qwen2", layer_types=["full_attention", "linear_attention"], n_layers=2), "linear_attention"),
        (hf_config("llama", hidden_act="relu"), "'relu' activation"),
        (hf_config("gemma3_text", use_bidirectional_attention=True), "bidirectionally"),
        (hf_config("llama", rope_parameters={"rope_type": "proportional", "rope_theta": 1e4}), "RoPE 'proportional'"),
    ]
    for cfg, message in cases:
        with pytest.raises(ModelLoadError, match=message):
            decoder_config(cfg)


def test_cli_refuses_a_mixture_of_experts_pair_with_a_message(capsys, tmp_path, family_pairs):
    from transformers import AutoConfig

    from easyspec.app.cli import main
    from helpers import byte_tokenizer

    AutoConfig.for_model("mixtral").save_pretrained(tmp_path)
    byte_tokenizer().save_pretrained(tmp_path)
    base = family_pairs["qwen3"][0]
    code = main(["generate", "--base", str(base), "--draft", str(tmp_path), "--prompt", "abc", "--json"])
    out, err = capsys.readouterr()
    assert code != 0 and "model type 'mixtral' (Mixtral) is not supported" in err and "Traceback" not in err


# -- vocabularies: embedding tables of different sizes over one tokenizer are aligned; other tokenizers refused ---

def test_draft_with_a_larger_embedding_table_is_aligned_to_the_shared_vocabulary(tmp_path):
    """A Qwen3 draft whose embedding table is padded past the tokenizer (288 rows against the base's 272),
    as Qwen2.5 checkpoints of different sizes are: both score the 272 shared ids, and greedy output equals
    vanilla in every mode."""
    from easyspec.core.models.loading import resolve_pair
    from easyspec.core.session import Session
    from helpers import VOCAB

    base = save_checkpoint(tmp_path / "base", family_config("qwen3", n_layers=8), seed=0)
    state = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).state_dict()
    padded = {k: torch.cat([v, 5 * torch.ones(16, v.shape[1])]) if v.shape[0] == VOCAB else v
              for k, v in state.items()}  # the extra rows would win every argmax if they were scored
    draft = save_checkpoint(tmp_path / "draft", family_config("qwen3", n_layers=8, vocab_size=VOCAB + 16), seed=1,
                            base_state=padded, noise=0.01)
    with Session(resolve_pair(str(base), str(draft))) as s:
        assert s.base.cfg.vocab_size == s.draft.cfg.vocab_size == VOCAB
        ref = tokens_of(s.generate(s.plan(SpecConfig(mode="vanilla", max_new_tokens=30), PROMPT)))
        for cfg in (SpecConfig(mode="speculative", max_new_tokens=30),
                    SpecConfig(layer_parallel=2, max_new_tokens=30)):
            records = list(s.generate(s.plan(cfg, PROMPT)))
            assert_greedy_equal(tokens_of(records), ref, s.base, PROMPT, case=cfg.mode)
            assert sum(r.accepted for r in records) > 0


def test_embedding_table_smaller_than_the_tokenizer_and_other_tokenizers_are_refused(tmp_path):
    import shutil

    from easyspec.core.models.loading import ModelLoadError, load_pair, resolve_pair
    from helpers import VOCAB

    base = save_checkpoint(tmp_path / "base", family_config("qwen3"), seed=0)
    small = save_checkpoint(tmp_path / "small", family_config("qwen3", vocab_size=VOCAB - 8), seed=1)
    with pytest.raises(ModelLoadError, match=f"has {VOCAB - 8} embedding rows and the base {VOCAB}.*{VOCAB} tokens"):
        load_pair(resolve_pair(str(base), str(small)))
    other = tmp_path / "other"
    shutil.copytree(base, other)
    data = json.loads((other / "tokenizer.json").read_text())
    vocab = data["model"]["vocab"]
    a, b = (t for t, i in sorted(vocab.items(), key=lambda kv: kv[1])[5:7])  # swap ids 5 and 6
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (other / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(ModelLoadError, match=f"first difference at id 5: base {a!r}, draft {b!r}"):
        load_pair(resolve_pair(str(base), str(other)))


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_dashboard_loads_a_family_from_a_local_folder(family_pairs, name, tmp_path, monkeypatch):
    """The dashboard's context on a custom local pair of the family: a greedy generate handler run emits
    the same tokens as the vanilla run of the same session."""
    pytest.importorskip("gradio")
    from easyspec.app.context import AppContext, AppOptions
    from easyspec.app.generate_tab import make_handlers
    from easyspec.app.state import UserState

    monkeypatch.setenv("EASYSPEC_CACHE", str(tmp_path))
    base, draft = family_pairs[name]
    ctx = AppContext.start(AppOptions(base=str(base), draft=str(draft), allow_custom_models=True, probe=False))
    try:
        values = dict(prompt="The quick brown fox", chat=True, mode="easyspec", layer_parallel=2,
                      calibration="on-mismatch", draft_len=4, temperature=0, top_p=1, top_k=0, seed=0,
                      max_new_tokens=16)
        last = list(make_handlers(ctx).generate(values, UserState()))[-1]
        assert last["status"].startswith("**Done**: easyspec"), last["status"]
        details = last["details"]
        ids = ctx.session.encode("The quick brown fox", True)
        vanilla = tokens_of(ctx.session.generate(ctx.session.plan(SpecConfig(mode="vanilla", max_new_tokens=16), ids)))
        assert details["token_ids"] == vanilla and f"`{base}`" in ctx.models_markdown()
    finally:
        ctx.close()
