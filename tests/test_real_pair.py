"""The real offline pair (Qwen2.5-Coder 0.5B draft / 1.5B base, fp32): the decoder against
transformers, vanilla against transformers' greedy generate, and every mode against vanilla.

The pair is loaded once per test run and each prompt's vanilla output is computed once.
Without the offline-pair extra these tests skip, unless EASYSPEC_REQUIRE_REAL_PAIR=1 (CI) makes
that a failure. The pair is held per module, so that the multi-device module can use the memory.
"""
from __future__ import annotations

import gc
import itertools

import pytest
import torch

from easyspec.core.engine.decoder import ForwardOptions

from conftest import REAL_VANILLA, assert_greedy_equal, tokens_of

pytestmark = pytest.mark.real_pair

PROMPTS = {
    "code-fib": "Write a Python function that returns the n-th Fibonacci number.",
    "code-bash": "Write a bash command that counts the lines of all .py files in a folder.",
    "chat-sky": "Explain in two sentences why the sky is blue.",
}
NEW_TOKENS = 24


@pytest.fixture(scope="module")
def real_pair(real_source):
    from easyspec.core.models.loading import load_pair

    return load_pair(real_source, dtype="float32")


@pytest.fixture(scope="module")
def prompt_ids(real_pair):
    from easyspec.core.models.text import encode_prompt

    return {name: encode_prompt(real_pair.tokenizer, text, chat=True) for name, text in PROMPTS.items()}


@pytest.fixture(scope="module")
def vanilla_outputs(real_pair, prompt_ids):
    from easyspec.core.planning import plan_run
    from easyspec.core.engine.loop import Stopping, generate
    from easyspec.core.settings import SpecConfig

    cfg = SpecConfig(mode="vanilla", max_new_tokens=NEW_TOKENS)
    outputs = {name: tokens_of(generate(real_pair.base.decoder, None, plan_run(cfg, ids, real_pair.base.decoder, None),
                                        Stopping(real_pair.eos_ids)))
               for name, ids in prompt_ids.items()}
    REAL_VANILLA.update(outputs)  # reused by the multi-device real-pair tests
    return outputs


def test_decoder_logits_match_transformers_on_real_draft(real_pair, prompt_ids):
    from transformers import AutoModelForCausalLM

    dec = real_pair.draft.decoder
    hf = AutoModelForCausalLM.from_pretrained(real_pair.draft.folder, dtype=torch.float32).eval()
    ids = torch.tensor(prompt_ids["code-fib"])
    with torch.inference_mode():
        ref = hf(ids[None]).logits[0]
        cache = dec.new_cache(len(ids))
        ours = [dec.forward(ids[:-4], 0, cache, ForwardOptions(all_logits=True))]
        ours += [dec.forward(ids[t: t + 1], t, cache) for t in range(len(ids) - 4, len(ids))]
    diff = (torch.cat(ours) - ref).abs().max().item()
    assert diff < 1e-4, f"max abs logit difference {diff:.2e}"


def test_vanilla_equals_transformers_generate(real_pair, prompt_ids, vanilla_outputs):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(real_pair.base.folder, dtype=torch.float32).eval()
    try:
        for name in ("code-fib", "chat-sky"):
            ids = torch.tensor([prompt_ids[name]])
            with torch.inference_mode():
                out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS,
                                  do_sample=False, eos_token_id=sorted(real_pair.eos_ids), pad_token_id=151643)
            expected = out[0, ids.shape[1]:].tolist()
            assert_greedy_equal(vanilla_outputs[name], expected, real_pair.base.decoder, prompt_ids[name], case=name)
    finally:
        del hf
        gc.collect()


SETTINGS = [dict(mode="speculative")] + [
    dict(mode="easyspec", layer_parallel=n, calibration=c)
    for n, c in itertools.product(range(1, 6), ("none", "every-round", "on-mismatch"))]


@pytest.mark.parametrize("name", sorted(PROMPTS))
def test_every_mode_equals_vanilla_on_real_pair(real_pair, prompt_ids, vanilla_outputs, name):
    from easyspec.core.engine.loop import Stopping, generate
    from easyspec.core.planning import plan_run
    from easyspec.core.settings import SpecConfig

    base, draft = real_pair.base.decoder, real_pair.draft.decoder
    for s in SETTINGS:
        records = list(generate(base, draft, plan_run(SpecConfig(max_new_tokens=NEW_TOKENS, **s), prompt_ids[name],
                                                      base, draft), Stopping(real_pair.eos_ids)))
        assert_greedy_equal(tokens_of(records), vanilla_outputs[name], base, prompt_ids[name], case=s)
