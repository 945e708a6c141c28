"""The `easyspec` command line: its JSON contract, lossless check, saved runs and bad input."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from easyspec.app.cli import main
from helpers import byte_tokenizer


@pytest.fixture(scope="module")
def pair_args(pair_dirs):
    base, draft = pair_dirs["qwen2"]
    return ["--base", str(base), "--draft", str(draft)]


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_json_output_contract(capsys, pair_args, tmp_path):
    """The JSON line's values, each recomputed from the run file it saved (not only its keys)."""
    from easyspec.core.engine.records import load_run

    saved = tmp_path / "run.jsonl"
    code, out, err = run(capsys, "generate", *pair_args, "--prompt", "def f(x):", "--max-new-tokens", "20",
                         "--json", "--check-lossless", "--save-run", str(saved))
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert len(result["token_ids"]) == 20 and isinstance(result["text"], str) and result["text"]
    assert all(isinstance(t, int) and 0 <= t < 272 for t in result["token_ids"])
    assert result["lossless"] is True and result["first_difference"] is None
    assert result["greedy_check"]["verdict"] == "equal" and result["greedy_check"]["dtype"] == "float32"
    assert "lossless True (token for token equal)" in err
    assert saved.exists() and "tok/s" in err
    assert result["stop"] == "max_new_tokens" and result["mode"] == result["settings"]["mode"] == "easyspec"
    header, records = load_run(saved)
    assert [t for r in records for t in r.token_ids] == result["token_ids"]
    assert header.settings == result["settings"] and list(header.prompt_ids) and \
        result["prompt_tokens"] == len(header.prompt_ids)
    m = result["metrics"]
    k = result["settings"]["draft_len"]
    drafting = [r for r in records[1:] if r.drafted]  # the first record is the prefill
    drafted, accepted = sum(len(r.drafted) for r in drafting), sum(r.accepted for r in drafting)
    assert isinstance(m["rounds"], int) and m["rounds"] == len(records) - 1 >= 1
    assert m["new_tokens"] == 20 and (m["drafted"], m["accepted"]) == (drafted, accepted) and drafted > 0
    assert m["acceptance_rate"] == pytest.approx(accepted / drafted) and 0 <= m["acceptance_rate"] <= 1
    assert m["mean_accepted_length"] == pytest.approx(sum(len(r.token_ids) for r in drafting) / len(drafting))
    assert 1 <= m["mean_accepted_length"] <= k + 1
    per_position = [sum(r.accepted > i for r in drafting) / sum(len(r.drafted) > i for r in drafting)
                    for i in range(k)]
    assert m["per_position_acceptance"] == pytest.approx(per_position) and len(per_position) == k
    assert m["total_s"] == pytest.approx(records[-1].end_ns / 1e9) and m["total_s"] > 0
    assert m["tokens_per_s"] == pytest.approx(20 / m["total_s"])
    phase = {p: sum(r.phase_s.get(p, 0.0) for r in records) for p in ("draft.attn", "draft.mlp", "verify",
                                                                        "calibrate")}
    assert m["draft_s"] == pytest.approx(phase["draft.attn"] + phase["draft.mlp"]) and m["draft_s"] > 0
    assert m["verify_s"] == pytest.approx(phase["verify"]) and m["verify_s"] > 0
    assert m["calibrate_s"] == pytest.approx(phase["calibrate"]) and m["calibrate_s"] > 0  # every-round
    assert m["draft_s"] + m["verify_s"] + m["calibrate_s"] <= m["total_s"] * 1.001
    # the summary line on stderr says the same figures
    assert f"20 tokens in {m['total_s']:.2f} s ({m['tokens_per_s']:.2f} tok/s)" in err, err
    assert f"rounds {m['rounds']}, AR {m['acceptance_rate']:.3f}, AL {m['mean_accepted_length']:.2f}" in err, err


def test_streams_text_without_json(capsys, pair_args):
    code, out, err = run(capsys, "generate", *pair_args, "--prompt", "hello", "--chat", "--max-new-tokens", "8",
                         "--mode", "speculative")
    assert code == 0 and out.endswith("\n") and "mode speculative" in err


def test_modes_agree_through_the_cli(capsys, pair_args):
    outs = []
    for mode in ("vanilla", "speculative", "easyspec"):
        code, out, err = run(capsys, "generate", *pair_args, "--prompt", "abc", "--max-new-tokens", "16",
                             "--mode", mode, "--json")
        assert code == 0, err
        outs.append(json.loads(out)["token_ids"])
    assert outs[0] == outs[1] == outs[2]


def test_trees_and_adaptive_through_the_cli(capsys, pair_args, tmp_path):
    saved = tmp_path / "tree.jsonl"
    for extra in (["--tree-depth", "3", "--tree-width", "2", "--save-run", str(saved)], ["--adaptive"],
                  ["--tree-depth", "2", "--adaptive", "--mode", "speculative"]):
        code, out, err = run(capsys, "generate", *pair_args, "--prompt", "abc", "--max-new-tokens", "16", "--json",
                             "--check-lossless", *extra)
        assert code == 0, err
        result = json.loads(out)
        assert result["lossless"] is True and result["settings"]["adaptive"] == ("--adaptive" in extra)
    from easyspec.core.engine.records import load_run

    header, records = load_run(saved)
    assert header.settings["tree_depth"] == 3 and any(len(r.tree_tokens) == 6 for r in records)


@pytest.fixture(scope="module")
def other_tokenizer_draft(pair_dirs, tmp_path_factory):
    """The draft's weights with a tokenizer whose token-to-id map differs (two ids swapped)."""
    folder = tmp_path_factory.mktemp("other_tok")
    shutil.copytree(pair_dirs["qwen2"][1], folder, dirs_exist_ok=True)
    data = json.loads((folder / "tokenizer.json").read_text())
    vocab = data["model"]["vocab"]
    a, b = sorted(vocab)[:2]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (folder / "tokenizer.json").write_text(json.dumps(data))
    return folder


@pytest.fixture(scope="module")
def not_a_causal_lm(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bert")
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "vocab_size": 10}))
    byte_tokenizer().save_pretrained(folder)
    return folder


BAD = {
    "empty prompt": (["--prompt", "   "], "prompt is empty"),
    "no prompt": ([], "exactly one of --prompt"),
    "unknown mode": (["--prompt", "x", "--mode", "turbo"], "unknown mode 'turbo'"),
    "unknown calibration": (["--prompt", "x", "--calibration", "sometimes"], "unknown calibration policy"),
    "N below 1": (["--prompt", "x", "--layer-parallel", "0"], "--layer-parallel must be >= 1"),
    "N above middle layers": (["--prompt", "x", "--layer-parallel", "7"], "number of middle layers (6"),
    "no middle layers": (["--prompt", "x", "--sequential-head", "4", "--sequential-tail", "4"], "leave no middle"),
    "draft len 0": (["--prompt", "x", "--draft-len", "0"], "--draft-len must be >= 1"),
    "negative temperature": (["--prompt", "x", "--temperature", "-1"], "--temperature must be >= 0"),
    "top-p zero": (["--prompt", "x", "--top-p", "0"], "--top-p must be in (0, 1]"),
    "top-p above one": (["--prompt", "x", "--top-p", "1.5"], "--top-p must be in (0, 1]"),
    "negative top-k": (["--prompt", "x", "--top-k", "-2"], "--top-k must be >= 0"),
    "lossless with sampling": (["--prompt", "x", "--temperature", "0.7", "--check-lossless"], "needs --temperature 0"),
    "prompt too long": (["--prompt", "x" * 600], "context window of 512"),
    "unknown dtype": (["--prompt", "x", "--dtype", "float8"], "unknown dtype"),
    "missing prompt file": (["--prompt-file", "/nonexistent/p.txt"], "no such file"),
    "negative tree depth": (["--prompt", "x", "--tree-depth", "-1"], "--tree-depth must be >= 0"),
    "tree width 0": (["--prompt", "x", "--tree-depth", "2", "--tree-width", "0"], "--tree-width must be >= 1"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_gets_a_clear_message(capsys, pair_args, case):
    argv, message = BAD[case]
    code, out, err = run(capsys, "generate", *pair_args, *argv)
    assert code == 2 and out == ""
    assert message in err and "Traceback" not in err


def test_bad_models_get_clear_messages(capsys, pair_dirs, other_tokenizer_draft, not_a_causal_lm, tmp_path):
    base = str(pair_dirs["qwen2"][0])
    cases = [
        (["--base", base, "--draft", str(other_tokenizer_draft)], "does not share the base"),
        (["--base", str(tmp_path / "missing"), "--draft", base], "no such checkpoint folder"),
        (["--base", base, "--draft", str(not_a_causal_lm)], "model type 'bert' is not supported"),
        (["--base", str(tmp_path), "--draft", base], "no config.json"),
    ]
    for argv, message in cases:
        code, out, err = run(capsys, "generate", *argv, "--prompt", "x", "--max-new-tokens", "2")
        assert code == 2 and message in err, (argv, err)


def test_binary_prompt_file_is_refused(capsys, pair_args, tmp_path):
    f = tmp_path / "p.bin"
    f.write_bytes(b"\xff\xfe\x00\x81")
    code, _, err = run(capsys, "generate", *pair_args, "--prompt-file", str(f))
    assert code == 2 and "not UTF-8" in err


def test_unwritable_cache_folder_is_reported(capsys, tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setenv("EASYSPEC_CACHE", str(blocker / "cache"))
    code, _, err = run(capsys, "generate", "--pair", "qwen2.5-coder", "--prompt", "x")
    assert code == 2 and "EASYSPEC_CACHE" in err


def test_console_script_runs(pair_args):
    proc = subprocess.run([sys.executable, "-m", "easyspec.app.cli", "generate", *pair_args, "--prompt", "hi",
                           "--max-new-tokens", "4", "--json"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)["token_ids"]) == 4


def test_memory_is_the_runs_own_and_labelled(capsys, pair_args):
    """--json carries this run's peak, its start and the growth; the summary says what the peak is."""
    code, out, err = run(capsys, "generate", *pair_args, "--prompt", "abc", "--max-new-tokens", "6", "--json")
    assert code == 0, err
    m = json.loads(out)["metrics"]
    assert m["memory_source"] == "rss" and "peak_memory_bytes" not in m
    assert m["run_peak_memory_bytes"] >= m["run_start_memory_bytes"] > 0
    assert m["run_memory_growth_bytes"] == m["run_peak_memory_bytes"] - m["run_start_memory_bytes"]
    assert (f"peak RSS during this run (process, incl. loaded models) {m['run_peak_memory_bytes'] / 2**30:.2f} GiB "
            f"(growth above the run's start +{m['run_memory_growth_bytes'] / 2**20:.0f} MiB)") in err
