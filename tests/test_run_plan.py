"""The run plan (issue 18): settings resolved once per run by `Session.plan`, N's default and limit in one
place, settings and figures that import without torch, and the tuner's result applied whole."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import tokens_of
from easyspec.core.engine.loop import generate
from easyspec.core.planning import plan_run
from easyspec.core.settings import (DEFAULT_LAYER_PARALLEL, SettingsError, SpecConfig, default_layer_parallel,
                                    max_layer_parallel)
from easyspec.core.tuner.cache import pair_key, save_tuning
from easyspec.core.tuner.types import Candidate, PolicyResult, TuneResult

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def counted(monkeypatch):
    """Every Session.plan and Session.generate call of the test, in order (the plans they made and ran)."""
    from easyspec.core.session import Session

    calls = {"plan": [], "generate": []}
    plan, run = Session.plan, Session.generate

    def counted_plan(self, settings, prompt_ids):
        calls["plan"].append(plan(self, settings, prompt_ids))
        return calls["plan"][-1]

    def counted_generate(self, p):
        calls["generate"].append(p)
        return run(self, p)

    monkeypatch.setattr(Session, "plan", counted_plan)
    monkeypatch.setattr(Session, "generate", counted_generate)
    return calls


def assert_one_plan_per_run(calls: dict, runs: int) -> None:
    """`runs` generations, each of its own plan, and no resolution that did not run."""
    ran = calls["generate"]
    assert len(ran) == runs, [p.settings.mode for p in ran]
    assert len({id(p) for p in ran}) == runs  # no plan ran twice
    assert len(calls["plan"]) == runs and all(any(p is q for q in calls["plan"]) for p in ran)


def test_generate_resolves_once_per_run(app_ctx, counted):
    from easyspec.app.generate_tab import make_handlers
    from easyspec.app.state import UserState

    generate_handler = make_handlers(app_ctx).generate
    values = dict(prompt="The quick brown fox", chat=True, mode="easyspec", layer_parallel=2, calibration="auto",
                  draft_len=3, temperature=0, top_p=1, top_k=0, seed=0, max_new_tokens=6)
    views = list(generate_handler(values, UserState()))
    assert views[-1]["status"].startswith("**Done**")
    assert_one_plan_per_run(counted, 1)
    assert counted["generate"][0].settings.calibration == "every-round"  # auto without a tuned plan


def test_compare_resolves_once_per_run(app_ctx, counted):
    from easyspec.app.compare_tab import make_compare
    from easyspec.app.state import UserState

    columns = {f"{name}_{c}": value for c in range(1, 5)
               for name, value in (("mode", "vanilla" if c == 1 else "easyspec"), ("layer_parallel", 2),
                                   ("calibration", "every-round"), ("draft_len", 3))}
    values = dict(prompt="The quick brown fox", chat=True, max_new_tokens=6, temperature=0, seed=0, columns=3,
                  **columns)
    views = list(make_compare(app_ctx)(values, UserState()))
    assert views[-1]["status"].startswith("**Done**")
    assert_one_plan_per_run(counted, 3)


def test_pilot_resolves_once_per_run(app_ctx, counted):
    from easyspec.app.pilot_tab import make_handlers
    from easyspec.app.state import UserState

    pilot = make_handlers(app_ctx).pilot
    values = dict(prompt="The quick brown fox", source="typed prompts", prompt_set="code", n_prompts=1,
                  layer_parallel=[2], calibration=["every-round"], draft_len=[3], speculative=True, max_new_tokens=6,
                  chat=True, temperature=0)
    views = list(pilot(values, UserState()))
    assert views[-1]["status"].startswith("**Done**")
    assert_one_plan_per_run(counted, 1 + 3)  # the warm-up, then vanilla, speculative and easyspec N=2


def test_cli_resolves_once_per_run(pair_dirs, counted, capsys):
    from easyspec.app.cli import main

    base, draft = map(str, pair_dirs["qwen2"])
    code = main(["generate", "--base", base, "--draft", draft, "--prompt", "abc", "--max-new-tokens", "6", "--json",
                 "--check-lossless"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert json.loads(out)["lossless"]
    assert_one_plan_per_run(counted, 2)  # the run and the vanilla run it is checked against


def test_the_engine_runs_only_a_resolved_plan(decoders):
    base, draft = decoders["qwen2"]
    with pytest.raises(AssertionError, match="RunPlan"):
        list(generate(base, draft, SpecConfig(max_new_tokens=4)))
    plan = plan_run(SpecConfig(max_new_tokens=4), [1, 2, 3], base, draft)
    assert len(tokens_of(generate(base, draft, plan))) == 4
    assert plan.layers == ((0, 1), (1, 5), (5, 7), (7, 8)) and plan.settings.layer_parallel == DEFAULT_LAYER_PARALLEL


# -- N's default and limit ------------------------------------------------------------------------
def test_the_layer_parallel_default_and_limit(decoders):
    base, draft = decoders["qwen2"]  # an 8-layer draft: 6 middle layers
    assert DEFAULT_LAYER_PARALLEL == 4 and default_layer_parallel() == 4 and default_layer_parallel(2) == 2
    assert default_layer_parallel(1, middle=3) == 3 and max_layer_parallel(8) == 6 and max_layer_parallel(8, 2) == 2
    assert plan_run(SpecConfig(), [1, 2], base, draft).settings.layer_parallel == 4
    assert plan_run(SpecConfig(), [1, 2], base, draft, devices=2).settings.layer_parallel == 2
    with pytest.raises(SettingsError, match=r"--layer-parallel must be between 1 and the number of middle layers \(6"):
        plan_run(SpecConfig(layer_parallel=7), [1, 2], base, draft)
    with pytest.raises(SettingsError, match="N <= G") as err:
        plan_run(SpecConfig(layer_parallel=3), [1, 2], base, draft, devices=2)
    assert err.value.field == "layer_parallel"
    assert err.value.render({"layer_parallel": "layer-parallel size N"}).startswith("layer-parallel size N 3 is more")


# Ways a module could write N's default (4, or min(4, G)) or its limit (the draft's layers less head and tail).
HARD_CODED = [re.compile(p) for p in (r"\bmin\(\s*4\s*,", r"\blayer_parallel\s*(?::\s*int\s*)?=\s*4\b",
                                      r"\b4 if [\w.]*devices", r"(draft_layers|n_layers)(\s+or\s+\d+)?\)?\s*-\s*2\b")]


def test_no_module_but_settings_hard_codes_the_layer_parallel_default_or_limit():
    offenders = []
    for path in sorted((ROOT / "core").rglob("*.py")) + sorted((ROOT / "app").glob("*.py")):
        if path.name == "settings.py" and path.parent.name == "core":
            continue
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if any(p.search(line) for p in HARD_CODED):
                offenders.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not offenders, "N's default or limit written outside core/settings.py:\n" + "\n".join(offenders)
    for line in ("n = min(4, devices)", "middle = (self.info.draft_layers or 3) - 2", "if n <= n_layers - 2:"):
        assert any(p.search(line) for p in HARD_CODED), line  # the scan itself finds such lines


def test_settings_and_figures_import_without_torch():
    modules = ["easyspec.core.settings"] + [f"easyspec.visualizations.{p.stem}"
                                           for p in sorted((ROOT / "visualizations").glob("*.py"))]
    code = ("import importlib, importlib.abc, sys\n"
            "class Block(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path, target=None):\n"
            "        if name.split('.')[0] == 'torch':\n"
            "            raise ImportError('torch is blocked')\n"
            "sys.meta_path.insert(0, Block())\n"
            f"for m in {modules!r}:\n"
            "    importlib.import_module(m)\n"
            "assert 'torch' not in sys.modules\n"
            "print(len(sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    blocked = subprocess.run([sys.executable, "-c", code.replace(f"{modules!r}", "['easyspec.core.engine.loop']")],
                             capture_output=True, text=True)
    assert "torch is blocked" in blocked.stderr  # the block works: the engine itself needs torch


# -- the tuner's result, applied whole ------------------------------------------------------------
def tuned(plan: str, policy: str) -> TuneResult:
    """A tuning result as the tuner saves it: the chosen plan and the measured policies on it."""
    return TuneResult(plan=plan, acceptance_rate=0.8, baseline_rate=0.85, steps=4, sequential_steps=8, tolerance=0.05,
                      candidates=(Candidate("0|1|2|3|4|5|6|7", 8, "sequential", 100, 85, 1.0),
                                  Candidate(plan, 4, "search", 100, 80, 0.5)),
                      policies=tuple(PolicyResult(p, r, 10.0, 0.1) for p, r in
                                     (("none", 0.5), ("every-round", 0.8), ("on-mismatch", 0.79))),
                      recommended_policy=policy, draft_len=5)


def test_auto_applies_the_tuned_plan_and_its_policy_unless_the_user_chose_one(decoders):
    base, draft = decoders["qwen2"]
    result = tuned("0|1-3|4-6|7", "on-mismatch")
    plan = plan_run(SpecConfig(groups="auto"), [1, 2], base, draft, tuning=result)
    assert plan.layers == ((0, 1), (1, 4), (4, 7), (7, 8)) and plan.settings.calibration == "on-mismatch"
    assert plan.applied == ("tuned plan 0|1-3|4-6|7", "tuned calibration on-mismatch")
    assert plan.settings.expected_acceptance == 0.79  # the measured rate of that plan and policy
    chosen = plan_run(SpecConfig(groups="auto", calibration="none"), [1, 2], base, draft, tuning=result)
    assert chosen.settings.calibration == "none" and chosen.applied == ("tuned plan 0|1-3|4-6|7",)
    equal = plan_run(SpecConfig(layer_parallel=3), [1, 2], base, draft, tuning=result)
    assert equal.settings.calibration == "every-round" and equal.applied == ()  # not the tuned plan: the default
    with pytest.raises(SettingsError, match="not been tuned yet"):
        plan_run(SpecConfig(groups="auto"), [1, 2], base, draft)


def test_groups_auto_applies_the_tuned_policy_through_the_cli(pair_dirs, tmp_path, monkeypatch, capsys):
    from easyspec.app.cli import main

    monkeypatch.setenv("EASYSPEC_CACHE", str(tmp_path / "cache"))
    base, draft = pair_dirs["qwen2"]
    save_tuning(tuned("0|1-3|4-6|7", "on-mismatch"), pair_key(base, draft, "float32"))
    args = ["generate", "--base", str(base), "--draft", str(draft), "--prompt", "abc", "--groups", "auto",
            "--max-new-tokens", "8", "--json", "--check-lossless"]
    assert main(args) == 0
    out, err = capsys.readouterr()
    run = json.loads(out)
    assert run["lossless"] and run["settings"]["calibration"] == "on-mismatch"
    assert run["settings"]["applied"] == ["tuned plan 0|1-3|4-6|7", "tuned calibration on-mismatch"]
    assert "calibration on-mismatch (tuned plan 0|1-3|4-6|7, tuned calibration on-mismatch)" in err
    assert main([*args, "--calibration", "every-round"]) == 0
    run = json.loads(capsys.readouterr().out)
    assert run["settings"]["calibration"] == "every-round" and run["settings"]["applied"] == ["tuned plan 0|1-3|4-6|7"]


def test_the_cli_and_the_dashboard_save_the_same_run_header(app_ctx, pair_dirs, tmp_path, capsys):
    """One builder (Session.run_header) for a saved run's header: the same fields from the CLI's --save-run and
    the dashboard's run file, each saying where it came from."""
    from easyspec.app.cli import main
    from easyspec.app.generate_tab import make_handlers
    from easyspec.app.state import UserState
    from easyspec.core.engine.records import load_run

    values = dict(prompt="abc", chat=False, mode="easyspec", layer_parallel=2, calibration="every-round", draft_len=3,
                  temperature=0, top_p=1, top_k=0, seed=0, max_new_tokens=6)
    last = list(make_handlers(app_ctx).generate(values, UserState()))[-1]
    dashboard = load_run(last["run_file"])[0]
    base, draft = map(str, pair_dirs["qwen2"])
    saved = tmp_path / "run.jsonl"
    code = main(["generate", "--base", base, "--draft", draft, "--prompt", "abc", "--max-new-tokens", "6",
                 "--layer-parallel", "2", "--calibration", "every-round", "--draft-len", "3", "--json",
                 "--save-run", str(saved)])
    assert code == 0, capsys.readouterr().err
    cli = load_run(saved)[0]
    assert dashboard.settings == cli.settings and dashboard.prompt_ids == cli.prompt_ids
    assert (dashboard.base, dashboard.draft, dashboard.device, dashboard.dtype) == (cli.base, cli.draft, "cpu", "float32")
    assert cli.extra == {"devices": 1, "draft_dtype": "float32", "source": "cli"}
    assert dashboard.extra == {**cli.extra, "source": "dashboard", "label": dashboard.extra["label"]}
    assert dashboard.created and cli.created
