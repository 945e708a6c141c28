"""Settings the engine must refuse before a run starts (issue 17, items 11-13 and 15): empty stop
strings, non-finite or non-integer numbers, an expected acceptance outside [0, 1], and the CUDA
device of a rank on a machine that holds only part of a multi-node world."""
from __future__ import annotations

import pytest
import torch

from easyspec.core.engine.loop import Stopping
from easyspec.core.settings import SamplingConfig, SpecConfig
from easyspec.core.runtime.parallel import rank_device
from easyspec.core.runtime.ranks import local_placement

INF, NAN = float("inf"), float("nan")


@pytest.mark.parametrize("stops", [("",), ("ok", "")])
def test_empty_stop_strings_are_refused(stops):
    with pytest.raises(ValueError, match="--stop: a stop string must not be empty"):
        SpecConfig(stop_strings=stops)
    with pytest.raises(ValueError, match="--stop: a stop string must not be empty"):
        Stopping(stop_strings=stops, decode=lambda ids: "")


def test_stop_strings_must_be_text():
    with pytest.raises(ValueError, match="--stop: a stop string must be text; got 5"):
        SpecConfig(stop_strings=(5,))
    assert SpecConfig(stop_strings=("\n\n",)).stop_strings == ("\n\n",)


@pytest.mark.parametrize("field, value, message", [
    ("temperature", INF, "--temperature must be a finite number; got inf"),
    ("temperature", NAN, "--temperature must be a finite number; got nan"),
    ("temperature", -INF, "--temperature must be a finite number"),
    ("top_p", NAN, "--top-p must be a finite number"),
    ("top_k", NAN, "--top-k must be a whole number; got nan"),
    ("top_k", 2.0, "--top-k must be a whole number; got 2.0"),
    ("seed", INF, "--seed must be a whole number; got inf"),
    ("seed", True, "--seed must be a whole number; got True"),
    ("seed", 2**63, "--seed must be between 0 and"),
    ("seed", -1, "--seed must be between 0 and"),
])
def test_sampling_refuses_non_finite_and_non_integer_values(field, value, message):
    with pytest.raises(ValueError, match=message):
        SamplingConfig(**{"temperature": 1.0, field: value})


@pytest.mark.parametrize("field, flag", [("draft_len", "--draft-len"), ("max_new_tokens", "--max-new-tokens"),
                                         ("layer_parallel", "--layer-parallel"),
                                         ("sequential_head", "--sequential-head"),
                                         ("sequential_tail", "--sequential-tail"), ("tree_depth", "--tree-depth"),
                                         ("tree_width", "--tree-width")])
@pytest.mark.parametrize("value", [INF, NAN, 3.0])
def test_spec_config_counts_must_be_whole_numbers(field, flag, value):
    with pytest.raises(ValueError, match=f"{flag} must be a whole number"):
        SpecConfig(**{field: value})


@pytest.mark.parametrize("value, message", [(NAN, "expected acceptance must be a finite number"),
                                            (INF, "expected acceptance must be a finite number"),
                                            (1.5, "expected acceptance must be between 0 and 1; got 1.5"),
                                            (-0.1, "expected acceptance must be between 0 and 1")])
def test_expected_acceptance_is_checked(value, message):
    with pytest.raises(ValueError, match=message):
        SpecConfig(expected_acceptance=value)
    assert SpecConfig(expected_acceptance=0.75).expected_acceptance == 0.75


def test_saved_settings_still_load():
    cfg = SpecConfig(stop_strings=("END",), expected_acceptance=0.5, sampling=SamplingConfig(0.7, 0.9, 5, 3))
    assert SpecConfig.from_dict(cfg.as_dict()) == cfg


def test_dashboard_settings_refuse_non_finite_numbers():
    pytest.importorskip("gradio")
    from easyspec.app.settings import spec_config

    good = dict(mode="easyspec", layer_parallel=4, calibration="none", draft_len=5, temperature=0, top_p=1,
                top_k=0, seed=0, max_new_tokens=8)
    for field, value, message in [("temperature", INF, "temperature must be a finite number"),
                                  ("top_p", NAN, "top-p must be a finite number"),
                                  ("seed", INF, "seed must be a whole number; got inf"),
                                  ("top_k", NAN, "top-k must be a whole number; got nan"),
                                  ("max_new_tokens", INF, "max new tokens must be a whole number"),
                                  ("tree_depth", NAN, "tree depth must be a whole number")]:
        with pytest.raises(ValueError, match=message):
            spec_config(**{**good, field: value})
    # a large seed stays exact (a float would round it past the limit)
    assert spec_config(**{**good, "seed": 2**63 - 1}).sampling.seed == 2**63 - 1


# -- item 15: the CUDA device of a rank, on one node or several -----------------------------------------
TORCHRUN = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


def _torchrun(monkeypatch, rank, world, local_rank, local_world, gpus):
    for name, value in zip(TORCHRUN, (rank, world, local_rank, local_world)):
        monkeypatch.setenv(name, str(value))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)


@pytest.mark.parametrize("rank", [0, 5, 8, 15])
def test_two_nodes_of_eight_gpus_give_every_rank_its_local_gpu(monkeypatch, rank):
    _torchrun(monkeypatch, rank, 16, rank % 8, 8, gpus=8)
    local_rank, local_world = local_placement(rank, 16)
    assert (local_rank, local_world) == (rank % 8, 8)
    assert rank_device("cuda", local_rank, local_world) == torch.device("cuda", rank % 8)


def test_a_node_with_too_few_gpus_is_refused(monkeypatch):
    _torchrun(monkeypatch, 9, 16, 1, 8, gpus=4)
    with pytest.raises(ValueError, match="8 ranks on this machine .* need 8 CUDA devices, but it has 4"):
        rank_device("cuda", *local_placement(9, 16))


def test_spawned_ranks_count_the_whole_world_on_this_machine(monkeypatch):
    for name in TORCHRUN:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LOCAL_RANK", "3")  # a stray variable without torchrun's RANK is not ours
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert local_placement(1, 2) == (1, 2)
    assert rank_device("cuda", *local_placement(1, 2)) == torch.device("cuda", 1)
    with pytest.raises(ValueError, match="4 ranks on this machine .* need 4 CUDA devices, but it has 2"):
        rank_device("cuda", *local_placement(0, 4))
    assert rank_device("cpu", *local_placement(0, 4)) == torch.device("cpu")


@pytest.mark.parametrize("argv, message", [
    (["app", "--timeout", "nan"], "--timeout must be a finite number; got nan"),
    (["app", "--memory-budget-mb", "inf"], "--memory-budget-mb must be a finite number; got inf"),
    (["bench", "gpu", "--time-budget-s", "inf"], "--time-budget-s must be a finite number; got inf"),
    (["tune", "--tolerance", "inf"], "--tolerance must be a finite number; got inf"),
])
def test_every_float_flag_refuses_inf_and_nan(argv, message):
    """Checked right after parsing (argparse's float() takes 'inf' and 'nan'), so nothing starts."""
    from easyspec.app.cli import _check_finite, build_parser

    with pytest.raises(ValueError, match=message):
        _check_finite(build_parser().parse_args(argv))
    _check_finite(build_parser().parse_args(argv[:-1] + ["1.5"]))


def test_dashboard_fields_name_a_non_finite_number():
    """A raw request can carry NaN or Infinity (Python's JSON reads both); a whole-number field
    cannot round them, and the message must still name the field."""
    gr = pytest.importorskip("gradio")
    from easyspec.app.fields import _checked

    seed = gr.Number(0, label="seed", precision=0, minimum=0)
    temperature = gr.Slider(0, 2, label="temperature")
    for component, value, message in [(seed, NAN, "seed must be a finite number; got nan"),
                                      (seed, INF, "seed must be a finite number; got inf"),
                                      (temperature, INF, "temperature must be a finite number; got inf")]:
        with pytest.raises(gr.Error, match=message):
            _checked(component, component.preprocess)(value)
    assert _checked(seed, seed.preprocess)(7.0) == 7


@pytest.mark.parametrize("value", [INF, NAN])
def test_settings_built_in_python_refuse_non_finite_numbers(value, pair_dirs):
    """The same refusal for callers that skip the CLI: the tuner, the GPU bench, the app's launch
    options and a Session (checked before any model loads)."""
    from easyspec.app.context import AppOptions
    from easyspec.core.evaluation.gpu_bench import BenchConfig
    from easyspec.core.models.loading import resolve_pair
    from easyspec.core.session import Session
    from easyspec.core.tuner.types import TuneConfig

    with pytest.raises(ValueError, match="--tolerance must be a finite number"):
        TuneConfig(tolerance=value)
    with pytest.raises(ValueError, match="--time-budget-s must be a finite number"):
        BenchConfig(time_budget_s=value)
    with pytest.raises(ValueError, match="--timeout must be a finite number"):
        AppOptions(timeout_s=value)
    with pytest.raises(ValueError, match="--memory-budget-mb must be a finite number"):
        AppOptions(memory_budget_mb=value)
    base, draft = pair_dirs["qwen2"]
    source = resolve_pair(str(base), str(draft), None)
    with pytest.raises(ValueError, match="--memory-budget-mb must be a finite number"):
        Session(source, memory_budget_mb=value)
    with pytest.raises(ValueError, match="--timeout must be a finite number"):
        Session(source, timeout_s=value)
