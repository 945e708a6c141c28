"""The real offline pair in bf16: the prompts of `benchmarks/engine_baseline.py`, where bf16 runs part from
vanilla on some prompts (results/engine_baseline.md). Every such difference must be a rounding tie
(core/engine/lossless.py); a real difference is a bug. Run under the heavy lock (README, tests)."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

from conftest import tokens_of

pytestmark = pytest.mark.real_pair
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


@pytest.mark.parametrize("setting", ["speculative"])
def test_bf16_differences_from_vanilla_are_rounding_ties(real_source, setting, caplog):
    from engine_baseline import PROMPTS, SETTINGS

    from easyspec.core.planning import plan_run
    from easyspec.core.engine.loop import Stopping, generate
    from easyspec.core.settings import SpecConfig
    from easyspec.core.models.loading import load_pair
    from easyspec.core.engine.lossless import Fp32Reference, compare_greedy
    from easyspec.core.models.text import encode_prompt

    pair = load_pair(real_source, dtype="bfloat16")
    base, draft, stopping = pair.base.decoder, pair.draft.decoder, Stopping(pair.eos_ids)
    reference = Fp32Reference(base)
    options = dict(SETTINGS)[setting]
    checks = {}
    with caplog.at_level(logging.INFO, logger="easyspec.core.engine.lossless"):
        for name, text in PROMPTS.items():
            ids = encode_prompt(pair.tokenizer, text, chat=True)
            got, vanilla = (tokens_of(generate(base, draft, plan_run(SpecConfig(max_new_tokens=48, draft_len=5, **s),
                                                                     ids, base, draft), stopping)) for s in (options,
                                                                                                             {"mode": "vanilla"}))
            checks[name] = compare_greedy(reference, ids, got, vanilla)
    print({name: c.describe() for name, c in checks.items()})
    assert all(c.verdict in ("equal", "tie") for c in checks.values()), {n: c.describe() for n, c in checks.items()}
