"""`easyspec bench acceptance|speed` on a small random pair: tables, files and equality columns."""
from __future__ import annotations

import json
import re

import pytest

from easyspec.app.cli import main


def test_bench_acceptance_and_speed(pair_dirs, tmp_path, capsys):
    base, draft = pair_dirs["qwen2"]
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "def add(a, b):"}\n{"prompt": "hello there"}\n')
    common = ["--base", str(base), "--draft", str(draft), "--prompts", str(prompts), "--max-new-tokens", "12"]
    out = tmp_path / "acc"
    assert main(["bench", "acceptance", *common, "--layer-parallel", "2,4", "--calibration", "none,every-round",
                 "--temperatures", "0,0.8", "--out", str(out), "--json", "--report", str(tmp_path / "acc.html"),
                 "--report-lang", "ja"]) == 0
    result = json.loads(capsys.readouterr().out)
    rows = result["rows"]
    assert {(r["temperature"], r["layer_parallel"], r["calibration"]) for r in rows} == {
        (t, n, c) for t in (0.0, 0.8) for n in (1, 2, 4) for c in ("none", "every-round")}
    for r in rows:
        assert 0 <= r["acceptance_rate"] <= 1 and len(r["per_position_acceptance"]) == 5
        if r["layer_parallel"] == 1:
            assert r["relative_drop"] == 0
        if r["temperature"] == 0:
            assert r["equal_to_vanilla"] is True  # greedy runs are lossless
        assert r["memory_source"] == "rss" and r["largest_run_peak_memory_mib"] > 0  # each run's own, largest
    assert "| T | N |" in (out.with_suffix(".md")).read_text()
    for t in ("0", "0.8"):  # the charts, self-contained HTML
        assert "plotly" in (tmp_path / f"acc_T{t}.html").read_text()[:200000].lower()
    assert json.loads(out.with_suffix(".json").read_text())["meta"]["command"].startswith("easyspec")
    report = _report_data(tmp_path / "acc.html")  # the greedy pass, in Japanese
    assert report["lang"] == "ja" and report["grid"]["temperature"] == 0.0
    greedy = {(r["layer_parallel"], r["calibration"]): r for r in rows if r["temperature"] == 0}
    for s in report["settings"][1:]:
        assert s["acceptance_rate"] == greedy[(s["layer_parallel"], s["calibration"])]["acceptance_rate"]
        assert s["equal_count"] == s["compared_count"] == 2
    assert "T=0.8" in report["notes"][0]

    out = tmp_path / "speed"
    assert main(["bench", "speed", *common, "--layer-parallel", "2", "--repeats", "2", "--out", str(out),
                 "--report", str(tmp_path / "speed.html")]) == 0
    table = capsys.readouterr().out
    assert "transformers assisted k=5 constant" in table and "easyspec N=2 every-round k=5" in table
    rows = {r["setting"]: r for r in json.loads(out.with_suffix(".json").read_text())["rows"]}
    assert rows["vanilla"]["speedup_median"] == 1.0
    assert all(r["equal_to_vanilla"] == "2/2" for r in rows.values()), rows  # every row equals vanilla, HF too
    assert all(r["tokens_per_s_median"] > 0 for r in rows.values())
    for label, r in rows.items():  # the largest run peak over a setting's runs; transformers' runs are not traced
        traced = not label.startswith("transformers")
        assert (r["memory_source"] == "rss") == traced and (r["largest_run_peak_memory_bytes"] is not None) == traced
        if traced:
            assert r["largest_run_peak_memory_bytes"] > r["largest_run_memory_growth_bytes"] >= 0
    assert "run peak GiB" in out.with_suffix(".md").read_text()
    report = _report_data(tmp_path / "speed.html")
    assert [s["setting"] for s in report["settings"]] == [x for x in rows if not x.startswith("transformers")]
    assert len(report["settings"]) == 3 and "transformers" in report["notes"][0]
    for s in report["settings"]:  # 2 prompts x 2 repeats; the same medians as the speed table
        assert s["runs"] == 4 and s["speedup_spread"]["n"] == 4
        assert s["speedup_spread"]["median"] == pytest.approx(rows[s["setting"]]["speedup_median"], rel=2e-3)
        assert s["speedup_spread"]["min"] == pytest.approx(rows[s["setting"]]["speedup_min"], rel=2e-3)


def _report_data(path) -> dict:
    html = path.read_text(encoding="utf-8")
    return json.loads(re.search(r'<script type="application/json" id="report-data">(.*?)</script>', html, re.S)
                      .group(1))


def test_bench_compares_chain_tree_and_adaptive_in_one_run(pair_dirs, tmp_path, capsys):
    base, draft = pair_dirs["qwen2"]
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "def add(a, b):"}\n')
    common = ["--base", str(base), "--draft", str(draft), "--prompts", str(prompts), "--max-new-tokens", "12",
              "--tree-depth", "3", "--tree-width", "2", "--adaptive"]
    out = tmp_path / "tree"
    assert main(["bench", "speed", *common, "--layer-parallel", "2", "--repeats", "1", "--no-transformers",
                 "--out", str(out)]) == 0
    capsys.readouterr()
    rows = {r["setting"]: r for r in json.loads(out.with_suffix(".json").read_text())["rows"]}
    for label in ("easyspec N=2 every-round k=5", "easyspec N=2 every-round k=5 tree 3x2",
                  "easyspec N=2 every-round k=5 adaptive", "easyspec N=2 every-round k=5 tree 3x2 adaptive",
                  "speculative k=5 tree 3x2"):
        assert rows[label]["equal_to_vanilla"] == "1/1" and 0 <= rows[label]["acceptance_rate"] <= 1, rows[label]
    assert rows["vanilla"]["acceptance_rate"] is None and "| AR | AL |" in out.with_suffix(".md").read_text()
    out = tmp_path / "acc"
    assert main(["bench", "acceptance", *common, "--layer-parallel", "2", "--calibration", "none",
                 "--temperatures", "0", "--out", str(out), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert {(r["layer_parallel"], r["drafting"]) for r in rows} == {
        (n, d) for n in (1, 2) for d in ("chain", "tree 3x2", "chain adaptive", "tree 3x2 adaptive")}
    assert all(r["equal_to_vanilla"] is True and r["relative_drop"] is not None for r in rows)


def test_bench_rejects_bad_settings(pair_dirs, capsys):
    base, draft = pair_dirs["qwen2"]
    code = main(["bench", "acceptance", "--base", str(base), "--draft", str(draft), "--prompts", "nope.jsonl"])
    assert code == 2 and "nope.jsonl" in capsys.readouterr().err
    code = main(["bench", "acceptance", "--base", str(base), "--draft", str(draft), "--prompts", ","])  # no set named
    assert code == 2 and "no such file" in capsys.readouterr().err
    code = main(["bench", "speed", "--base", str(base), "--draft", str(draft), "--calibration", "sometimes"])
    assert code == 2 and "unknown calibration policy" in capsys.readouterr().err


def _md_cells(md: str, first: str) -> list[str]:
    """The cells of the Markdown table row whose first cell is `first`."""
    line = next(x for x in md.splitlines() if x.startswith(f"| {first} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_bench_tables_are_computed_from_the_raw_runs_they_keep(pair_dirs, tmp_path, capsys):
    """Each results JSON keeps every run's tokens and rounds; AR, AL, tok/s and equality recomputed
    here by hand from those raw runs equal the JSON rows and the Markdown table."""
    from easyspec.core.evaluation import bench

    base, draft = pair_dirs["qwen2"]
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "def add(a, b):"}\n{"prompt": "hello there"}\n')
    common = ["--base", str(base), "--draft", str(draft), "--prompts", str(prompts), "--max-new-tokens", "6"]
    out = tmp_path / "speed"
    assert main(["bench", "speed", *common, "--layer-parallel", "2", "--repeats", "2", "--no-transformers",
                 "--out", str(out)]) == 0
    data = json.loads(out.with_suffix(".json").read_text())
    md = out.with_suffix(".md").read_text()
    assert {"command", "date", "machine", "commit", "libraries"} <= set(data["meta"])
    assert len(data["runs"]) == 3 * 2 * 2  # settings x prompts x repeats
    assert bench.rows_from_runs("speed", data) == data["rows"] and bench.rebuild_markdown("speed", data) == md
    for row in data["rows"]:
        runs = [r for r in data["runs"] if r["setting"] == row["setting"]]
        assert all(r["token_ids"] == [t for d in r["rounds"] for t in d["token_ids"]] for r in runs)
        rates = sorted(len(r["token_ids"]) / r["seconds"] for r in runs)
        assert row["tokens_per_s_median"] == pytest.approx((rates[1] + rates[2]) / 2, abs=1e-4)
        rounds = [d for r in runs for d in r["rounds"] if d["drafted"]]
        if rounds:
            ar = sum(d["accepted"] for d in rounds) / sum(len(d["drafted"]) for d in rounds)
            assert row["acceptance_rate"] == pytest.approx(ar, abs=1e-4)
            assert _md_cells(md, row["setting"])[4] == f"{ar:.3f}"
        assert _md_cells(md, row["setting"])[1] == f"{row['tokens_per_s_median']:.2f}"

    out = tmp_path / "acc"
    assert main(["bench", "acceptance", *common, "--layer-parallel", "2", "--calibration", "none",
                 "--temperatures", "0", "--out", str(out)]) == 0
    capsys.readouterr()
    data = json.loads(out.with_suffix(".json").read_text())
    assert bench.rows_from_runs("acceptance", data) == data["rows"]
    assert bench.rebuild_markdown("acceptance", data) == out.with_suffix(".md").read_text()
    for row in data["rows"]:
        runs = [r for r in data["runs"] if r["config"]["mode"] == "easyspec"
                and r["config"]["layer_parallel"] == row["layer_parallel"]]
        rounds = [d for r in runs for d in r["rounds"] if d["drafted"] and d["index"] > 0]
        assert row["acceptance_rate"] == pytest.approx(
            sum(d["accepted"] for d in rounds) / sum(len(d["drafted"]) for d in rounds), abs=1e-4)
        assert row["mean_accepted_length"] == pytest.approx(
            sum(len(d["token_ids"]) for d in rounds) / len(rounds), abs=1e-4)
        vanilla = {r["prompt_index"]: r["token_ids"] for r in data["runs"] if r["config"]["mode"] == "vanilla"}
        assert row["equal_to_vanilla"] == all(r["token_ids"] == vanilla[r["prompt_index"]] for r in runs)


@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_transformers_model_sharing_our_weights_equals_its_own_load(pair_dirs, family):
    """The speed bench's transformers base shares our decoder's weights (no second copy in memory): its
    parameters are views of our stacked tensors, and its logits equal transformers' own from_pretrained."""
    import torch

    from easyspec.core.evaluation.bench import _hf_model
    from easyspec.core.models.loading import load_decoder

    base, _ = pair_dirs[family]
    ours = load_decoder(base, torch.float32, torch.device("cpu"))
    shared, own = _hf_model(base, "float32", share=ours), _hf_model(base, "float32")
    ptrs = {t.untyped_storage().data_ptr() for t in vars(ours.w).values() if t is not None}
    assert {p.untyped_storage().data_ptr() for p in shared.parameters()} <= ptrs
    assert shared.generation_config.to_dict() == own.generation_config.to_dict()
    ids = torch.tensor([[3, 17, 5, 9, 21, 4, 11]])
    with torch.inference_mode():
        torch.testing.assert_close(shared(ids).logits, own(ids).logits, rtol=0, atol=1e-5)
        a = shared.generate(ids, do_sample=False, max_new_tokens=8, attention_mask=torch.ones_like(ids))
        b = own.generate(ids, do_sample=False, max_new_tokens=8, attention_mask=torch.ones_like(ids))
    assert a.tolist() == b.tolist()
