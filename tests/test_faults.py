"""Faults, as the app and the command line show them: a worker rank killed mid-run, a rank that stops
answering, running out of memory (the operator's budget and a real allocation failure), a corrupt or
partial model file, a cache folder that cannot be written, and writers that never leave half a file.

Each fault gives one clear message, and the app serves the next request (ranks restarted).
`tests/test_parallel_faults.py` covers the same rank faults at the Session level.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import time
from pathlib import Path

import psutil
import pytest

from conftest import GUARDED_LOGIN
from easyspec.app.cli import main

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

PROMPT = "The quick brown fox"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def guarded(guarded_app):
    url, proc = guarded_app
    return Client(url, auth=GUARDED_LOGIN, verbose=False), proc


def worker_ranks(proc) -> list[psutil.Process]:
    """The app's spawned rank processes (not multiprocessing's resource tracker)."""
    return [p for p in psutil.Process(proc.pid).children(recursive=True)
            if "spawn_main" in " ".join(p.cmdline())]


def run_then(client, fault, max_new_tokens: int = 200):
    """Start a generation, apply `fault` once it streams, and return the AppError it ends with."""
    job = client.submit(prompt=PROMPT, chat=False, max_new_tokens=max_new_tokens, layer_parallel=2,
                        api_name="/generate")
    deadline = time.monotonic() + 120
    while job.status().code.name not in ("ITERATING", "FINISHED") and time.monotonic() < deadline:
        time.sleep(0.05)
    fault()
    with pytest.raises(AppError) as info:
        job.result(timeout=120)
    return str(info.value)


def reference(client) -> list[int]:
    return client.predict(prompt=PROMPT, chat=False, max_new_tokens=12, layer_parallel=2,
                          api_name="/generate")[6]["token_ids"]


def test_killed_rank_gives_a_clear_error_and_the_next_run_restarts_the_ranks(guarded):
    client, proc = guarded
    before = reference(client)
    ranks = worker_ranks(proc)
    assert len(ranks) == 1
    message = run_then(client, lambda: os.kill(ranks[0].pid, signal.SIGKILL))
    assert re.search(r"multi-device run failed: rank 1 exited with code -9\. .*The app is still running", message)
    assert not ranks[0].is_running()
    assert reference(client) == before  # ranks restarted, same greedy tokens
    assert len(worker_ranks(proc)) == 1 and proc.poll() is None


def test_rank_that_stops_answering_times_out(guarded):
    client, proc = guarded
    rank = worker_ranks(proc)[0]
    start = time.monotonic()
    message = run_then(client, lambda: os.kill(rank.pid, signal.SIGSTOP))
    assert "a rank stopped answering" in message and "All ranks were stopped" in message
    assert time.monotonic() - start < 60  # --timeout 8 plus the shutdown
    assert len(reference(client)) == 12 and proc.poll() is None


def test_idle_longer_than_the_collective_timeout_keeps_the_ranks(guarded):
    """Idle followers wait inside a collective that times out after --timeout (8 s here); rank 0
    pings them while idle, so the next request after a long pause is served by the same ranks."""
    client, proc = guarded
    reference(client)
    ranks = worker_ranks(proc)
    time.sleep(20)
    assert len(reference(client)) == 12
    assert [r.pid for r in worker_ranks(proc)] == [r.pid for r in ranks]


def test_rank_killed_while_idle_is_replaced_before_the_next_request(guarded):
    client, proc = guarded
    before = reference(client)
    rank = worker_ranks(proc)[0]
    os.kill(rank.pid, signal.SIGKILL)
    time.sleep(1)
    assert reference(client) == before  # no error: the dead rank is noticed and the ranks restarted
    assert rank.pid not in [r.pid for r in worker_ranks(proc)] and len(worker_ranks(proc)) == 1


def test_cli_killed_rank_is_one_error_line(pair_dirs, capsys):
    """`easyspec generate --devices 2` with its worker rank killed once the run streams (or, on a
    slow machine, while it loads): one line naming the rank, exit status 1, nothing left running."""
    import threading

    base, draft = pair_dirs["qwen2"]
    me = psutil.Process()
    killed: list[int] = []

    def own_ranks() -> list[psutil.Process]:  # this process's own children: not the app fixtures' ranks
        return [p for p in me.children() if "spawn_main" in " ".join(p.cmdline())]

    def kill_rank() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            for rank in own_ranks():
                # Once the rank has joined the process group (its gloo connections are up), rank 0
                # notices its death at the next collective: while loading or while generating.
                if any(c.status == psutil.CONN_ESTABLISHED for c in rank.net_connections()):
                    os.kill(rank.pid, signal.SIGKILL)
                    killed.append(rank.pid)
            time.sleep(0.05)

    killer = threading.Thread(target=kill_rank, daemon=True)
    killer.start()
    code = main(["generate", "--base", str(base), "--draft", str(draft), "--prompt", "x" * 50, "--devices", "2",
                 "--layer-parallel", "2", "--max-new-tokens", "400"])
    killer.join()
    err = capsys.readouterr().err
    assert killed and code == 1, err
    assert re.search(r"easyspec: error: multi-device run failed: rank 1 exited with code -9", err), err
    assert "Traceback" not in err and not own_ranks()


def test_memory_budget_breach_is_an_out_of_memory_error(guarded):
    client, proc = guarded
    long_prompt = "x " * 200  # ~400 tokens: its KV caches need more than the 1 MB budget
    with pytest.raises(AppError) as info:
        client.predict(prompt=long_prompt, chat=False, max_new_tokens=16, api_name="/generate")
    message = str(info.value)
    assert re.search(r"out of device memory for a prompt of \d+ tokens plus 16 new tokens \(the KV caches for \d+ "
                     r"tokens need [\d.]+ MB, over the memory budget of 1 MB set at start\)\. Shorten the prompt",
                     message), message
    assert len(reference(client)) == 12 and proc.poll() is None


def test_cli_out_of_memory_budget_and_real_allocation_failure(pair_dirs, tmp_path_factory, capsys):
    from helpers import make_pair

    base, draft = pair_dirs["qwen2"]
    code = main(["generate", "--base", str(base), "--draft", str(draft), "--prompt", "x" * 200,
                 "--memory-budget-mb", "0.1", "--max-new-tokens", "8"])
    err = capsys.readouterr().err
    assert code == 1 and "easyspec: error: out of device memory for a prompt of 200 tokens plus 8" in err, err
    assert "over the memory budget of 0.1 MB" in err
    # A context window so long that the buffers of one run cannot be allocated at all: the allocator's
    # own refusal takes the same path (the CPU form of torch.OutOfMemoryError).
    huge_b, huge_d = make_pair(tmp_path_factory.mktemp("huge"), "qwen2", noise=0.01,
                               max_position_embeddings=2 ** 50)
    capsys.readouterr()
    code = main(["generate", "--base", str(huge_b), "--draft", str(huge_d), "--prompt", "abc", "--max-new-tokens",
                 str(10 ** 13)])
    err = capsys.readouterr().err
    assert code == 1 and "out of device memory" in err and "can't allocate memory" in err, err
    assert len(err.strip().splitlines()) <= 2, err  # the layer plan line, then the error


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_partial_weight_file_is_named_with_what_to_do(pair_dirs, tmp_path, capsys):
    base, draft = pair_dirs["qwen2"]
    broken = tmp_path / "base"
    shutil.copytree(base, broken)
    _truncate(broken / "model.safetensors")
    code = main(["generate", "--base", str(broken), "--draft", str(draft), "--prompt", "a"])
    err = capsys.readouterr().err
    assert code == 2 and "model.safetensors: corrupt or partial weight file" in err
    assert "run `easyspec cache clear` and start again to rebuild it" in err
    code = main(["app", "--allow-custom-models", "--base", str(broken), "--draft", str(draft), "--port", "7999"])
    assert code == 2 and "corrupt or partial weight file" in capsys.readouterr().err


def test_partial_file_in_the_offline_cache_points_at_cache_clear(pair_dirs, tmp_path, monkeypatch, capsys):
    """A converted offline pair (marked complete) whose weights were cut short afterwards."""
    from easyspec.core.models import offline_pair as op

    base, draft = pair_dirs["qwen2"]
    spec = op.OFFLINE_PAIRS["qwen2.5-coder"]
    monkeypatch.setenv("EASYSPEC_CACHE", str(tmp_path / "cache"))
    for role, src, model in (("draft", draft, spec.draft), ("base", base, spec.base)):
        dest = tmp_path / "cache" / "qwen2.5-coder" / role
        shutil.copytree(src, dest)
        (dest / op.MARKER).write_text(model.sha256 + "\n")
    _truncate(tmp_path / "cache" / "qwen2.5-coder" / "base" / "model.safetensors")
    code = main(["generate", "--pair", "qwen2.5-coder", "--prompt", "a"])
    err = capsys.readouterr().err
    assert code == 2 and "qwen2.5-coder/base/model.safetensors: corrupt or partial weight file" in err
    assert main(["cache", "clear"]) == 0 and "cleared the cache" in capsys.readouterr().out
    assert not (tmp_path / "cache" / "qwen2.5-coder").exists()  # the next use rebuilds it


def test_cache_folder_that_cannot_be_written(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("EASYSPEC_CACHE", str(blocker / "cache"))
    code = main(["generate", "--pair", "qwen2.5-coder", "--prompt", "a"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot write the easyspec model cache at" in err and "set EASYSPEC_CACHE" in err, err


def test_output_file_that_cannot_be_written(pair_dirs, tmp_path, capsys):
    base, draft = pair_dirs["qwen2"]
    code = main(["generate", "--base", str(base), "--draft", str(draft), "--prompt", "a", "--max-new-tokens", "2",
                 "--save-run", str(tmp_path / "no-such-folder" / "run.jsonl")])
    err = capsys.readouterr().err
    assert code == 1 and "easyspec: error: " in err and "no-such-folder/run.jsonl: No such file" in err, err
    assert "Traceback" not in err and "internal error" not in err


def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path):
    from easyspec.core.files import atomic_writer, write_text_atomic
    from easyspec.core.engine.records import RunHeader, save_run

    target = tmp_path / "run.jsonl"
    write_text_atomic(target, "old\n")

    class Unwritable:
        def __getattr__(self, name):
            raise RuntimeError("disk full")

    with pytest.raises(Exception):
        save_run(target, RunHeader(settings={}, base="b", draft="d", prompt_ids=(1,), device="cpu",
                                   dtype="float32", created=""), [Unwritable()])
    with pytest.raises(RuntimeError):
        with atomic_writer(target) as f:
            f.write("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["run.jsonl"]


# Calls that write a file. `open` and its kin count when their mode can write ('w', 'a', 'x', '+') or
# is not a literal (the check cannot tell); the others always write.
WRITING_METHODS = {"write_text", "write_bytes", "write_html", "write_image", "save_pretrained", "savefig",
                   "to_csv", "to_json", "to_parquet", "to_pickle"}
WRITING_FUNCTIONS = {("json", "dump"), ("pickle", "dump"), ("torch", "save"), ("np", "save"), ("numpy", "save"),
                     ("pio", "write_html"), ("pio", "write_image"), ("shutil", "copyfile"), ("shutil", "copy"),
                     ("shutil", "copy2")}
OPENERS = {"open": 1, "fdopen": 1, "os.open": 1}  # name -> index of the mode among positional arguments (Path.open: 0)
# (file, function): why it may write directly. Each must still write (a stale entry fails the check).
DIRECT_WRITERS = {
    ("core/models/offline_pair.py", "join_pieces"): "joins into a partial file, then os.replace",
    ("core/models/offline_pair.py", "convert_gguf"): "writes into a hidden folder that is renamed into place",
    ("core/models/offline_pair.py", "ensure_model"): "marks the hidden folder complete before the rename",
    ("benchmarks/faults.py", "truncated_copy"): "damages a weight file on purpose",
    ("benchmarks/faults.py", "main"): "writes a file where a folder should be, on purpose",
    ("benchmarks/rerun_results.py", "heavy_lock"): "creates an empty lock file for flock; no data is written",
    ("benchmarks/long_prefill.py", "reset_peak"): "writes the kernel's /proc/self/clear_refs control, not a file",
}
READ_ONLY_FLAGS = {"O_RDONLY", "O_CLOEXEC", "O_NONBLOCK", "O_NOFOLLOW", "O_DIRECTORY"}
SCANNED = ("core", "app", "visualizations", "benchmarks")


def _mode_can_write(call, opener: str) -> bool:
    import ast

    index = 0 if isinstance(call.func, ast.Attribute) and opener == "open" and not (
        isinstance(call.func.value, ast.Name) and call.func.value.id in ("io", "gzip", "bz2", "lzma", "codecs")) \
        else OPENERS[opener]
    mode = next((k.value for k in call.keywords if k.arg == "mode"), None)
    if mode is None and len(call.args) > index:
        mode = call.args[index]
    if mode is None:
        return False  # the default mode reads
    if opener == "os.open":  # flags, not a mode: reads only when every flag named is a read-only one
        names = {n.attr if isinstance(n, ast.Attribute) else getattr(n, "id", None) for n in ast.walk(mode)
                 if isinstance(n, (ast.Attribute, ast.Name))} - {"os"}
        return not names or not names <= READ_ONLY_FLAGS
    if not (isinstance(mode, ast.Constant) and isinstance(mode.value, str)):
        return True
    return any(c in mode.value for c in "wax+")


def direct_writes(source: str) -> list[tuple[int, str, str]]:
    """(line, enclosing function, call) for every call in `source` that writes a file directly."""
    import ast

    found = []

    def visit(node, where: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                visit(child, child.name if where == "<module>" else where)
                continue
            if isinstance(child, ast.Call):
                f = child.func
                name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
                owner = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else ""
                if (isinstance(f, ast.Attribute) and name in WRITING_METHODS) or (owner, name) in WRITING_FUNCTIONS \
                        or (name in OPENERS and (owner, name) != ("os", "open") and _mode_can_write(child, name)) \
                        or ((owner, name) == ("os", "open") and _mode_can_write(child, "os.open")):
                    found.append((child.lineno, where, ast.unparse(child)[:80]))
            visit(child, where)

    visit(ast.parse(source), "<module>")
    return found


def test_the_writer_check_sees_every_kind_of_direct_write():
    source = """
import json, os, pickle, torch
import plotly.io as pio
def f(fig, path, rows, p):
    open(path, "w").write("x")
    open(path, mode="ab")
    p.open("w")
    p.open(mode="x")
    open(path, rows)
    os.fdopen(3, "w")
    p.write_text("x")
    p.write_bytes(b"x")
    fig.write_html(path)
    fig.write_image(path)
    pio.write_html(fig, path)
    json.dump(rows, p)
    pickle.dump(rows, p)
    torch.save(rows, path)
    os.open(path, os.O_WRONLY)
def g(path, p, fig):
    open(path)
    open(path, "rb")
    p.open()
    json.dumps({})
    fig.to_html()
    os.open(path, os.O_RDONLY | os.O_CLOEXEC)
"""
    found = direct_writes(source)
    assert [line for line, _, _ in found] == list(range(5, 20)), found
    assert {where for _, where, _ in found} == {"f"}


def test_every_writer_writes_atomically():
    """Files are written only through core/files.py (a temporary name, then a rename), in core/, app/,
    visualizations/ and benchmarks/; DIRECT_WRITERS lists the few places that may write directly and why."""
    offenders, allowed_seen = [], set()
    for folder in SCANNED:
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel == "core/files.py":
                continue
            for line, where, call in direct_writes(path.read_text(encoding="utf-8")):
                if (rel, where) in DIRECT_WRITERS:
                    allowed_seen.add((rel, where))
                else:
                    offenders.append(f"{rel}:{line} in {where}: {call}")
    assert not offenders, "direct file writes (use core/files.py):\n" + "\n".join(offenders)
    assert allowed_seen == set(DIRECT_WRITERS), f"stale exceptions: {set(DIRECT_WRITERS) - allowed_seen}"
