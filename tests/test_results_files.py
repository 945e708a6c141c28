"""Each results producer in benchmarks/ on a tiny run: its JSON keeps the raw runs and the meta, and
the figures of its table, recomputed here by hand from those raw runs, equal the table."""
from __future__ import annotations

import importlib.util
import json
import statistics
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
META = {"command", "date", "machine", "commit", "libraries"}


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cells(md: str, first: str) -> list[str]:
    line = next(x for x in md.splitlines() if x.startswith(f"| {first} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_engine_baseline_table_comes_from_its_raw_runs(pair_dirs, tmp_path):
    base, draft = pair_dirs["qwen2"]
    mod = _script("engine_baseline")
    out = tmp_path / "baseline"
    mod.main(["--base", str(base), "--draft", str(draft), "--dtypes", "float32", "--max-new-tokens", "6",
              "--limit", "2", "--out", str(out)])
    data = json.loads(out.with_suffix(".json").read_text())
    md = out.with_suffix(".md").read_text()
    assert META <= set(data["meta"]) and data["meta"]["command"].startswith("python benchmarks/engine_baseline.py")
    assert len(data["runs"]) == len(mod.SETTINGS) * 2
    assert mod.rows_from_runs(data["runs"]) == data["rows"] and mod.rebuild_markdown(data) == md
    vanilla = {r["prompt"]: r for r in data["runs"] if r["setting"] == "vanilla"}
    for row in data["rows"]:
        runs = [r for r in data["runs"] if r["setting"] == row["setting"]]
        assert all(r["token_ids"] == [t for d in r["rounds"] for t in d["token_ids"]] for r in runs)
        tokens = sum(len(r["token_ids"]) for r in runs)
        assert row["tokens_per_s"] == pytest.approx(tokens / sum(r["wall_s"] for r in runs), abs=1e-4)
        rates = [len(r["token_ids"]) / r["wall_s"] / (len(vanilla[r["prompt"]]["token_ids"])
                                                       / vanilla[r["prompt"]]["wall_s"]) for r in runs]
        assert row["speedup_median"] == pytest.approx(statistics.median(rates), abs=1e-4)
        same = sum(r["token_ids"] == vanilla[r["prompt"]]["token_ids"] for r in runs)
        cells = _cells(md, row["setting"])
        assert cells[3] == f"{row['tokens_per_s']:.2f}" and cells[8] == f"{same}/2"
        rounds = [d for r in runs for d in r["rounds"] if d["drafted"] and d["index"] > 0]
        if rounds:
            ar = sum(d["accepted"] for d in rounds) / sum(len(d["drafted"]) for d in rounds)
            assert cells[1] == f"{ar:.3f}"
            assert cells[2] == f"{sum(len(d['token_ids']) for d in rounds) / len(rounds):.2f}"
        else:
            assert row["setting"] == "vanilla" and cells[1] == "-"


def test_devices_cpu_states_its_criterion_and_computes_table_projection_and_verdict_from_raw_runs(pair_dirs,
                                                                                                    tmp_path):
    from easyspec.core.projection import COMM_MODELS, Shape, latencies_from_runs, project
    from easyspec.core.grouping import layer_groups
    from easyspec.core import metrics
    from easyspec.core.bench import records_from_raw

    base, draft = pair_dirs["qwen2"]
    mod = _script("devices_cpu")
    out = tmp_path / "devices"
    code = mod.main(["--base", str(base), "--draft", str(draft), "--max-new-tokens", "6", "--repeats", "1",
                     "--out", str(out)])
    data = json.loads(out.with_suffix(".json").read_text())
    md = out.with_suffix(".md").read_text()
    assert META <= set(data["meta"]) and data["criterion"] == mod.CRITERION and data["status"] == "done"
    assert len(data["runs"]) == len(mod.SETTINGS) * 2
    assert mod.rebuild(data) == {k: data[k] for k in ("rows", "projection", "verdict")} and mod.markdown(data) == md
    one = {r["setting"]: records_from_raw(r["rounds"]) for r in data["runs"] if r["devices"] == 1}
    lat = latencies_from_runs(one["speculative"], one["vanilla"], one["easyspec N=2 every-round"])
    shape_b, shape_d = Shape(**data["shapes"]["base"]), Shape(**data["shapes"]["draft"])
    low, high = mod.CRITERION["g1_projection_band"]
    in_band = []
    for row in data["rows"]:
        run = next(r for r in data["runs"] if r["setting"] == row["setting"] and r["devices"] == row["devices"])
        measured = len(run["token_ids"]) / run["wall_s"]
        assert row["tokens_per_s"] == pytest.approx(measured, abs=1e-4)
        proj = project(lat, shape_b, shape_d, 5, row["devices"], COMM_MODELS["gloo-cpu"],
                       layer_groups(shape_d.layers, 2), metrics.compute(one["speculative"]).mean_accepted_length,
                       metrics.compute(one["easyspec N=2 every-round"]).mean_accepted_length)
        projected = proj[mod.PROJECTION_KEY[row["setting"]]]["tokens_per_s"]
        cells = _cells(md.split("## Projection")[1], f"{row['setting']} | {row['devices']}")
        assert cells[-1] == f"{projected / measured:.2f}"
        assert row["same_tokens_as_g1"] == (run["token_ids"] == next(
            r["token_ids"] for r in data["runs"] if r["setting"] == row["setting"] and r["devices"] == 1))
        if row["devices"] == 1:
            in_band.append(low <= projected / measured <= high)
    passed = all(in_band) and all(r["same_tokens_as_g1"] for r in data["rows"])
    assert data["verdict"]["passed"] == passed and code == (0 if passed else 1)
