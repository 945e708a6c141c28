"""core/ speaks through `logging`, and the front ends show it on stderr as the bare lines users know.

core/ never prints: its progress and warnings go to module loggers under `easyspec.` that the command
line and the dashboard's launch configure once (`app/logs.py`), so `--json` keeps stdout to itself
and a program that imports the engine decides where its messages go.
"""
from __future__ import annotations

import ast
import logging
from pathlib import Path

from easyspec.app import logs
from easyspec.app.cli import main

CORE = Path(__file__).resolve().parent.parent / "core"


def _writes_to_the_console(tree: ast.AST) -> list[int]:
    """Lines of print() calls and of sys.stderr / sys.stdout references."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
            lines.append(node.lineno)
        elif (isinstance(node, ast.Attribute) and node.attr in ("stderr", "stdout")
              and isinstance(node.value, ast.Name) and node.value.id == "sys"):
            lines.append(node.lineno)
    return lines


def test_core_never_prints():
    found = {p.name: lines for p in sorted(CORE.rglob("*.py"))
             if (lines := _writes_to_the_console(ast.parse(p.read_text(encoding="utf-8"))))}
    assert len(list(CORE.rglob("*.py"))) > 20 and not found, f"use a module logger instead: {found}"
    assert _writes_to_the_console(ast.parse('import sys\nprint("x", file=sys.stderr)')) == [2, 2]


def test_core_messages_reach_stderr_once_as_bare_lines(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("EASYSPEC_CACHE", str(tmp_path))
    for _ in range(2):  # configured by every call of main (tests call it many times): one handler
        assert main(["cache", "info"]) == 0
    logs.configure()
    handlers = [h for h in logging.getLogger("easyspec").handlers if isinstance(h, logs.StderrHandler)]
    assert len(handlers) == 1
    capsys.readouterr()
    logging.getLogger("easyspec.core.evaluation.bench").info("speed: prompt 1/2 repeat 1/3: vanilla")
    logging.getLogger("easyspec.core.session").warning("easyspec: %s", "rank 1 exited")
    out, err = capsys.readouterr()  # pytest swapped sys.stderr after configure: still seen
    assert out == "" and err == "speed: prompt 1/2 repeat 1/3: vanilla\neasyspec: rank 1 exited\n"


def test_cli_progress_from_core_on_stderr_and_the_table_alone_on_stdout(capsys, tmp_path):
    assert main(["bench", "gpu", "--device", "cpu", "--presets", "tiny", "--repeats", "1", "--warmup", "0",
                 "--context", "8", "--out", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert any(" s] built tiny " in line for line in lines), err  # gpu_bench's progress, through its logger
    assert lines[-1].startswith(f"easyspec: wrote {tmp_path / 'gpu_bench_cpu.json'} ("), err
    assert out.startswith("easyspec bench gpu | ") and "built tiny" not in out
