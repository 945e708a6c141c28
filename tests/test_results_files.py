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
