"""Pilot evaluation: prompt files (good and bad), the settings grid, estimates, the runner, export."""
from __future__ import annotations

import csv
import io
import json

import pytest

from easyspec.core.settings import SpecConfig
from easyspec.core.evaluation.pilot import (PilotGrid, PilotProgress, PilotRun, Throughput, describe_seconds,
                                 estimate_seconds, measure_throughput, pilot_json, rows_to_csv, run_pilot,
                                 summarise)
from easyspec.core.evaluation.prompt_sets import (BUILTIN_SETS, MAX_FILE_BYTES, builtin_prompts, parse_prompts,
                                       read_prompt_file)


# -- prompt files ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", BUILTIN_SETS)
def test_builtin_sets_have_a_few_dozen_distinct_prompts(name):
    prompts = builtin_prompts(name)
    assert len(prompts) >= 24 and len(set(prompts)) == len(prompts)
    assert all(p.strip() and len(p) < 2000 for p in prompts)


def test_jsonl_and_csv_uploads():
    jsonl = b'{"prompt": "first"}\n\n{"prompt": "second \\u00e9", "id": 3}\n'
    assert parse_prompts(jsonl, "p.jsonl") == ["first", "second é"]
    data = '\ufeffid,Prompt\n1,"multi\nline, with comma"\n2,plain\n'.encode()
    assert parse_prompts(data, "p.csv") == ["multi\nline, with comma", "plain"]
    assert parse_prompts(b'{"prompt": "x"}', "noext") == ["x"]  # sniffed as JSON Lines


@pytest.mark.parametrize("data, name, message", [
    (b'{"prompt": "ok"}\n{"prompt": \n', "p.jsonl", "line 2: not valid JSON"),
    (b'{"text": "no prompt key"}\n', "p.jsonl", 'line 1: expected an object with a "prompt" key'),
    (b'["a list"]\n', "p.jsonl", "line 1: expected an object"),
    (b'{"prompt": 5}\n', "p.jsonl", "must be a string"),
    (b'{"prompt": "   "}\n', "p.jsonl", "the prompt is empty"),
    (b"text,label\nhello,1\n", "p.csv", 'no "prompt" column'),
    (b"prompt\n\n", "p.csv", "no prompts found"),
    (b"", "p.jsonl", "no prompts found"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "p.csv", "binary file"),
    (b'{"prompt": "caf\xe9"}\n', "p.jsonl", "not UTF-8"),
    (b"x" * (MAX_FILE_BYTES + 1), "p.csv", "the limit is"),
    (b'{"prompt": "x"}\n', "p.xlsx", "unknown file type"),
])
def test_bad_prompt_files_give_clear_messages(data, name, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace('"', '"')) as info:
        parse_prompts(data, name)
    assert name in str(info.value)


def test_read_prompt_file(tmp_path):
    path = tmp_path / "prompts.csv"
    path.write_text("prompt\nhello\n")
    assert read_prompt_file(path) == ["hello"]
    with pytest.raises(ValueError, match="no such file"):
        read_prompt_file(tmp_path / "missing.csv")


# -- grid and estimate -------------------------------------------------------------------------
def test_grid_settings_and_validation():
    grid = PilotGrid(layer_parallel=(2, 4, 2), calibration=("none", "every-round"), draft_len=(3, 5))
    labels = [s.label for s in grid.settings()]
    assert labels[0] == "vanilla" and labels[1:3] == ["speculative k=3", "speculative k=5"]
    assert len(labels) == 1 + 2 + 2 * 2 * 2  # N repeats dropped
    assert "easyspec N=4 every-round k=5" in labels
    cfg = grid.settings()[-1].config
    assert (cfg.mode, cfg.layer_parallel, cfg.calibration, cfg.draft_len) == ("easyspec", 4, "every-round", 5)
    assert len(PilotGrid(speculative=False).settings()) == 1 + 4
    for bad, match in [(dict(layer_parallel=()), "at least one layer parallel"),
                       (dict(calibration=("sometimes",)), "unknown calibration policy"),
                       (dict(draft_len=(0,)), "draft lengths"), (dict(max_new_tokens=0), "max new tokens"),
                       (dict(temperature=-1.0), "temperature")]:
        with pytest.raises(ValueError, match=match):
            PilotGrid(**bad)


def test_estimate_scales_with_prompts_and_tokens():
    speed = Throughput(prefill_tokens_per_s=100.0, tokens_per_s={"vanilla": 4.0, "easyspec": 8.0,
                                                                  "speculative": 6.0})
    grid = PilotGrid(max_new_tokens=32)  # vanilla, speculative, 4 easyspec
    one = estimate_seconds([50], grid, speed)
    assert one == pytest.approx(6 * 0.5 + 32 / 4 + 32 / 6 + 4 * 32 / 8)
    assert estimate_seconds([50, 50], grid, speed) == pytest.approx(2 * one)
    assert describe_seconds(42) == "42 s" and describe_seconds(125) == "2 min 05 s"


# -- the runner on the small random pair ---------------------------------------------------------
@pytest.fixture(scope="module")
def session(pair_dirs):
    from easyspec.core.session import Session

    base, draft = pair_dirs["qwen2"]
    with Session.open(base=str(base), draft=str(draft)) as s:
        yield s


def test_pilot_runner_rows_speedup_and_equality(session):
    prompts = ["The quick brown fox", "0123456789"]
    grid = PilotGrid(layer_parallel=(2, 4), calibration=("none", "every-round"), draft_len=(3,),
                     max_new_tokens=24, chat=False)
    events = list(run_pilot(session, prompts, grid))
    runs = [e for e in events if isinstance(e, PilotRun)]
    progress = [e for e in events if isinstance(e, PilotProgress)]
    n_settings = len(grid.settings())
    assert len(runs) == n_settings * len(prompts)
    assert [p.done for p in progress] == sorted(p.done for p in progress) and progress[-1].label == "done"
    assert progress[-1].done == progress[-1].total == len(runs)
    for run in runs:
        row = run.row
        assert row["new_tokens"] == len(run.token_ids) > 0
        assert row["tokens_per_s"] > 0 and row["total_s"] > 0
        if row["mode"] == "vanilla":
            assert row["speedup"] == 1.0 and row["acceptance_rate"] is None and row["equal_to_vanilla"] is None
        else:
            vanilla = next(r for r in runs if r.prompt_index == run.prompt_index and r.row["mode"] == "vanilla")
            assert row["speedup"] == pytest.approx(row["tokens_per_s"] / vanilla.row["tokens_per_s"], rel=1e-2)
            assert row["equal_to_vanilla"] is True and row["greedy_check"] == "equal", row  # greedy: lossless
            assert 0 <= row["acceptance_rate"] <= 1 and row["mean_accepted_length"] >= 1
            assert row["drafted"] >= row["accepted"]
        phases = sum(row[f"{p}_s"] for p in ("draft.attn", "draft.mlp", "verify", "calibrate", "sample", "overhead"))
        assert phases == pytest.approx(row["total_s"], rel=1e-3, abs=1e-5)  # rows round to microseconds
    summary = summarise([r.row for r in runs])
    assert [s["setting"] for s in summary] == [s.label for s in grid.settings()]
    assert all(s["prompts"] == 2 for s in summary) and summary[0]["speedup"] == pytest.approx(1.0)
    assert all(s["equal_to_vanilla"] is True for s in summary[1:])
    assert all((s["greedy_equal"], s["greedy_tie"], s["greedy_different"]) == (2, 0, 0) for s in summary[1:])
    assert summary[0]["greedy_equal"] is None  # vanilla is the reference, not compared
    text = rows_to_csv([r.row for r in runs])
    parsed = list(csv.DictReader(io.StringIO(text)))
    assert len(parsed) == len(runs) and parsed[0]["setting"] == "vanilla" and "draft.attn_s" in parsed[0]
    blob = json.loads(pilot_json([r.row for r in runs], grid, prompts, {"base": "x"}))
    assert blob["grid"]["layer_parallel"] == [2, 4] and len(blob["summary"]) == n_settings
    assert blob["prompts"] == prompts


def test_pilot_checks_every_setting_before_running(session):
    with pytest.raises(ValueError, match="setting 'easyspec N=7 none k=5'.*layer-parallel"):
        list(run_pilot(session, ["hi"], PilotGrid(layer_parallel=(2, 7), calibration=("none",))))
    with pytest.raises(ValueError, match="no prompts"):
        list(run_pilot(session, [], PilotGrid()))


def test_pilot_stops_within_one_round(session):
    calls = {"n": 0}

    def should_stop() -> bool:
        calls["n"] += 1
        return calls["n"] > 3  # after the third round of the first run

    grid = PilotGrid(layer_parallel=(2,), calibration=("none",), max_new_tokens=40, chat=False)
    events = list(run_pilot(session, ["The quick brown fox"], grid, should_stop=should_stop))
    assert not any(isinstance(e, PilotRun) for e in events)
    assert events[-1].label == "stopped"
    # the session is free again: the next generation runs at once
    records = list(session.generate(session.plan(SpecConfig(max_new_tokens=4), session.encode("abc", False))))
    assert sum(len(r.token_ids) for r in records) == 4


def test_measure_throughput(session):
    speed = measure_throughput(session, new_tokens=4)
    assert speed.prefill_tokens_per_s > 0 and speed.tokens_per_s["vanilla"] > 0
    assert set(speed.tokens_per_s) >= {"vanilla", "easyspec", "speculative"}


def test_measure_throughput_keeps_n_within_g_devices(pair_dirs):
    """With G ranks the probe's easyspec run must use N <= G (it used N = 4 once and failed at launch)."""
    from easyspec.core.session import Session

    base, draft = pair_dirs["qwen2"]
    with Session.open(base=str(base), draft=str(draft), devices=2) as two:
        speed = measure_throughput(two, new_tokens=3)
    assert speed.tokens_per_s["easyspec"] > 0


def test_pilot_runs_layer_plans_next_to_n_and_resolves_auto(session, tmp_path, monkeypatch):
    """A typed plan and the tuned one ("auto") run as settings of their own; untuned "auto" is refused first."""
    from easyspec.core.evaluation.report import context_for
    from easyspec.visualizations.report import pilot_report_html
    from easyspec.core.tuner.types import TuneConfig
    from easyspec.visualizations.pilot_charts import pilot_figure

    monkeypatch.setenv("EASYSPEC_CACHE", str(tmp_path / "cache"))
    grid = PilotGrid(layer_parallel=(2,), plans=("0|1-3|4-6|7", "auto"), calibration=("every-round",),
                     draft_len=(3,), speculative=False, max_new_tokens=16, chat=False)
    assert [s.label for s in grid.settings()][2:] == ["easyspec plan 0|1-3|4-6|7 every-round k=3",
                                                      "easyspec auto every-round k=3"]
    with pytest.raises(ValueError, match="setting 'easyspec auto every-round k=3': .*not been tuned yet"):
        list(run_pilot(session, ["abc"], grid))
    tuned = session.tune([session.encode("tuning prompt", False)], TuneConfig(max_new_tokens=12, policies=False))
    runs = [e for e in run_pilot(session, ["The quick brown fox"], grid) if isinstance(e, PilotRun)]
    rows = {r.setting.label: r.row for r in runs}
    assert rows["easyspec auto every-round k=3"]["groups"] == tuned.plan
    assert rows["easyspec plan 0|1-3|4-6|7 every-round k=3"]["groups"] == "0|1-3|4-6|7"
    assert rows["easyspec N=2 every-round k=3"]["groups"] is None
    assert all(r["equal_to_vanilla"] for r in rows.values() if r["mode"] != "vanilla")
    summary = summarise(list(rows.values()))
    fig = pilot_figure(summary)
    stars = [t for t in fig.data if t.marker.symbol == "star"]
    assert {t.name for t in stars} == {"plan 0|1-3|4-6|7 every-round k=3", "auto every-round k=3"}
    html = pilot_report_html(runs, grid, context_for(session, ["The quick brown fox"], "test"), "en")
    assert "2, 0|1-3|4-6|7, auto" in html and "easyspec auto every-round k=3" in html
    assert PilotGrid(layer_parallel=(), plans=("auto",)).settings()[-1].config.groups == "auto"
    with pytest.raises(ValueError, match="at least one layer parallel"):
        PilotGrid(layer_parallel=())


def test_measure_throughput_measures_every_mode_it_names_in_its_own_run(session, monkeypatch):
    """Each rate is the decode rate of that mode's own probe run (speculative once showed easyspec's)."""
    from easyspec.core.evaluation.pilot import _decode_rate

    runs, generate = [], session.generate

    def recorded(plan):
        records = list(generate(plan))
        runs.append((plan.settings, records))
        yield from records

    monkeypatch.setattr(session, "generate", recorded)
    speed = measure_throughput(session, new_tokens=6)
    measured = [(cfg, records) for cfg, records in runs[1:]]  # the first run is the warm-up
    assert [cfg.mode for cfg, _ in measured] == list(speed.tokens_per_s) == ["vanilla", "speculative", "easyspec"]
    for cfg, records in measured:
        assert speed.tokens_per_s[cfg.mode] == _decode_rate(records)
    spec, easy = (cfg for cfg, _ in measured[1:])
    assert speed.settings == {"vanilla": "", "speculative": f"k={spec.draft_len}",
                              "easyspec": f"N={easy.layer_parallel} {easy.calibration} k={easy.draft_len}"}
    assert spec.layer_parallel == 1 and easy.layer_parallel > 1


def test_the_pilot_note_names_only_the_measured_modes():
    speed = Throughput(prefill_tokens_per_s=100.0, tokens_per_s={"vanilla": 4.04, "easyspec": 8.0},
                       settings={"vanilla": "", "easyspec": "N=4 every-round k=5"})
    assert speed.describe() == "vanilla 4.0 tok/s, easyspec N=4 every-round k=5 8.0 tok/s"
    assert speed.decode_rate("speculative") == 4.04  # estimated at vanilla's, never shown as measured
    with pytest.raises(ValueError, match="needs vanilla"):
        measure_throughput(None, modes=("easyspec",))


# -- the context-length axis -------------------------------------------------------------------
def test_each_context_length_runs_every_setting_again_with_vanilla_first():
    grid = PilotGrid(layer_parallel=(2,), calibration=("none",), draft_len=(3,), contexts=(0, 96, 0))
    settings = grid.settings()
    assert grid.contexts == (0, 96)  # repeats dropped
    assert [(s.label, s.context) for s in settings] == [
        ("vanilla", 0), ("speculative k=3", 0), ("easyspec N=2 none k=3", 0),
        ("vanilla · ctx 96", 96), ("speculative k=3 · ctx 96", 96), ("easyspec N=2 none k=3 · ctx 96", 96)]
    assert settings[-1].reference == "speculative k=3 · ctx 96"
    assert PilotGrid().contexts == (0,) and all(s.context == 0 for s in PilotGrid().settings())
    for bad in ((), (-1,), (1.5,), (10**6,)):
        with pytest.raises(ValueError, match="context lengths must be whole numbers of prompt tokens"):
            PilotGrid(contexts=bad)


def test_prompts_are_brought_to_the_context_length_with_the_shared_document(session, monkeypatch):
    from easyspec.core.evaluation import pilot
    from easyspec.core.evaluation.pilot import prompt_ids_at, shared_document

    prompt = "The quick brown fox"
    own = session.encode(prompt, False)
    assert prompt_ids_at(session, [prompt], False, 0) == [own]
    assert prompt_ids_at(session, [prompt], False, len(own) - 1) == [own]  # already that long: as given
    (ids,) = prompt_ids_at(session, [prompt], False, 200)
    assert abs(len(ids) - 200) <= 4 and ids[-len(own):] == own  # the question comes last
    text = session.decode(ids)
    assert text.startswith(shared_document()[:40]) and text.endswith(prompt)
    assert prompt_ids_at(session, [prompt], False, 200) == [ids]  # the same document every time
    assert len(shared_document()) > 100_000 and "def " in shared_document()  # this package's own code
    monkeypatch.setattr(pilot, "shared_document", lambda: "a short document")
    with pytest.raises(ValueError, match="the shared document holds 16 tokens, fewer than the 200 asked for"):
        prompt_ids_at(session, [prompt], False, 200)


def test_speedups_compare_with_vanilla_at_the_same_context_length(session):
    grid = PilotGrid(layer_parallel=(2,), calibration=("every-round",), draft_len=(3,), max_new_tokens=12,
                     chat=False, contexts=(0, 160))
    runs = [e for e in run_pilot(session, ["The quick brown fox"], grid) if isinstance(e, PilotRun)]
    assert [r.setting.label for r in runs] == [s.label for s in grid.settings()]
    for run in runs:
        vanilla = next(r for r in runs if r.row["mode"] == "vanilla" and r.setting.context == run.setting.context)
        assert run.row["context"] == run.setting.context
        assert run.row["prompt_tokens"] == vanilla.row["prompt_tokens"]
        assert (run.row["prompt_tokens"] > 150) == (run.setting.context == 160)
        if run.row["mode"] != "vanilla":
            assert run.row["speedup"] == pytest.approx(run.row["tokens_per_s"] / vanilla.row["tokens_per_s"], rel=1e-2)
            assert run.row["equal_to_vanilla"] is True
    summary = {s["setting"]: s for s in summarise([r.row for r in runs])}
    long = summary["easyspec N=2 every-round k=3 · ctx 160"]
    ref = next(r for r in runs if r.setting.label == "vanilla · ctx 160").row
    assert long["context"] == 160 and long["mean_prompt_tokens"] == ref["prompt_tokens"]
    assert long["speedup"] == pytest.approx(long["tokens_per_s"] / ref["tokens_per_s"], rel=1e-3)
