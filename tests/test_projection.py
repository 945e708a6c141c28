"""The G-device projection: consistent with its inputs at G = 1, sensible as G grows."""
from __future__ import annotations

import pytest

from easyspec.core.planning import plan_run
from easyspec.core.engine.loop import generate
from easyspec.core.settings import SpecConfig
from easyspec.core.engine.grouping import layer_groups
from easyspec.core.evaluation.projection import COMM_MODELS, Latencies, Shape, latencies_from_runs, project

LAT = Latencies(draft_attn_layer=1e-4, draft_mlp_layer=1e-4, draft_head=2e-4, calibrate=5e-3, verify=20e-3,
                vanilla_step=18e-3, round_rest=1e-3)
BASE, DRAFT = Shape(28, 1536, 12), Shape(24, 896, 14)


def test_single_device_projection_reproduces_its_inputs():
    p = project(LAT, BASE, DRAFT, 5, 1, COMM_MODELS["nvlink"], layer_groups(24, 1), 4.0, 4.0)
    assert p["vanilla"]["tokens_per_s"] == pytest.approx(1 / 18e-3)
    step = 24 * 2e-4 + 2e-4
    assert p["speculative"]["round_s"] == pytest.approx(5e-3 + 4 * step + 20e-3 + 1e-3)
    assert p["easyspec"]["round_s"] == pytest.approx(p["speculative"]["round_s"])  # N = 1 is sequential
    assert p["speculative"]["utilisation"] == [pytest.approx(1.0 - 1e-3 / p["speculative"]["round_s"])]


def test_more_devices_help_easyspec_more_than_speculative():
    plan = layer_groups(24, 4)
    p1 = project(LAT, BASE, DRAFT, 5, 1, COMM_MODELS["nvlink"], layer_groups(24, 1), 4.0, 4.0)
    p4 = project(LAT, BASE, DRAFT, 5, 4, COMM_MODELS["nvlink"], plan, 4.0, 3.9)
    assert p4["vanilla"]["tokens_per_s"] > p1["vanilla"]["tokens_per_s"]
    assert p4["easyspec"]["draft_s"] < p4["speculative"]["draft_s"]
    assert p4["easyspec"]["tokens_per_s"] > p4["speculative"]["tokens_per_s"]
    spec_util = p4["speculative"]["utilisation"]
    assert spec_util[0] > spec_util[1] and len(spec_util) == 4  # devices 1..3 idle while drafting
    assert min(p4["easyspec"]["utilisation"][1:]) > max(spec_util[1:])
    # 12 heads over 5 devices: each holds ceil(12 / 5) = 3 heads, the share of 4 devices
    p5 = project(LAT, BASE, DRAFT, 5, 5, COMM_MODELS["nvlink"], plan, 4.0, 3.9)
    assert p5["vanilla"]["round_s"] >= p4["vanilla"]["round_s"]
    with pytest.raises(ValueError, match="larger than G"):
        project(LAT, BASE, DRAFT, 5, 2, COMM_MODELS["nvlink"], plan, 4.0, 3.9)
    one = project(LAT, BASE, DRAFT, 5, 1, COMM_MODELS["nvlink"], plan, 4.0, 4.0)  # batched on one device
    assert one["easyspec"]["round_s"] == pytest.approx(p1["speculative"]["round_s"])


def test_latencies_from_measured_runs(decoders):
    base, draft = decoders["qwen2"]
    prompt = list(range(10, 30))
    spec = list(generate(base, draft, plan_run(SpecConfig(mode="speculative", max_new_tokens=30), prompt, base, draft)))
    van = list(generate(base, draft, plan_run(SpecConfig(mode="vanilla", max_new_tokens=10), prompt, base, draft)))
    easy = list(generate(base, draft, plan_run(SpecConfig(max_new_tokens=30), prompt, base, draft)))
    lat = latencies_from_runs(spec, van, easy)
    assert all(v > 0 for v in (lat.draft_attn_layer, lat.draft_mlp_layer, lat.draft_head, lat.calibrate,
                                lat.verify, lat.vanilla_step))
    assert lat.verify < 1.0 and lat.draft_attn_layer < lat.verify
