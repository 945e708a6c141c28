"""The bad-input catalogue: one table of bad inputs across the command line, the dashboard's fields
(through `gradio_client`), uploaded pilot files and uploaded saved runs. Each row names the input
and a piece of the specific message it must produce: a readable line, never a traceback and never
Gradio's generic "Error". The app must keep serving afterwards (checked at the end).

Command lines run in-process (`main(argv)`); the app runs on the small random pair (`app_url`).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

import pytest

from easyspec.app.cli import main

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

PROMPT = "The quick brown fox"
LATIN1 = "prompt\ncafé crème\n".encode("latin-1")
RUN_HEADER = {"kind": "header", "settings": {"mode": "easyspec"}, "base": "b", "draft": "d", "prompt_ids": [1, 2],
              "device": "cpu", "dtype": "float32", "created": "", "extra": {}, "version": 1}


@dataclass(frozen=True)
class Case:
    name: str
    where: str  # "cli" | an API name ("/generate", "/compare", "/pilot", "/replay")
    args: tuple | dict  # argv (with {base}/{draft}/{tmp}) or keyword arguments for the API
    message: str  # a regular expression the message must match
    upload: tuple[str, bytes] | None = None  # (file name, content) passed as the file argument


def cli(name: str, *argv: str, message: str) -> Case:
    return Case(name, "cli", argv, message)


PAIR = ("--base", "{base}", "--draft", "{draft}")
CASES = [
    # -- command line -------------------------------------------------------------------------
    cli("empty prompt", "generate", *PAIR, "--prompt", "  ", message="the prompt is empty"),
    cli("prompt and prompt file", "generate", *PAIR, "--prompt", "a", "--prompt-file", "x.txt",
        message="give exactly one of --prompt TEXT or --prompt-file FILE"),
    cli("missing prompt file", "generate", *PAIR, "--prompt-file", "{tmp}/none.txt", message="none.txt: no such file"),
    cli("prompt file not UTF-8", "generate", *PAIR, "--prompt-file", "{tmp}/latin1.txt",
        message="latin1.txt: not UTF-8 text"),
    cli("unknown mode", "generate", *PAIR, "--prompt", "a", "--mode", "turbo", message="unknown mode 'turbo'"),
    cli("unknown calibration", "generate", *PAIR, "--prompt", "a", "--calibration", "sometimes",
        message="unknown calibration policy 'sometimes'"),
    cli("draft length 0", "generate", *PAIR, "--prompt", "a", "--draft-len", "0", message="--draft-len must be >= 1"),
    cli("max new tokens 0", "generate", *PAIR, "--prompt", "a", "--max-new-tokens", "0",
        message="--max-new-tokens must be >= 1"),
    cli("N beyond the middle layers", "generate", *PAIR, "--prompt", "a", "--layer-parallel", "99",
        message="--layer-parallel must be between 1 and the number of middle layers"),
    cli("lossless check while sampling", "generate", *PAIR, "--prompt", "a", "--temperature", "0.8",
        "--check-lossless", message="needs --temperature 0"),
    cli("draft without base", "generate", "--draft", "{draft}", "--prompt", "a", message="--draft needs --base"),
    cli("unknown dtype", "generate", *PAIR, "--prompt", "a", "--dtype", "float8", message="unknown dtype 'float8'"),
    cli("no such base folder", "generate", "--base", "{tmp}/nowhere", "--draft", "{draft}", "--prompt", "a",
        message="nowhere: no such checkpoint folder"),
    cli("a file as base", "generate", "--base", "{tmp}/latin1.txt", "--draft", "{draft}", "--prompt", "a",
        message="not a checkpoint folder"),
    cli("prompt beyond the context window", "generate", *PAIR, "--prompt", "x" * 300, "--max-new-tokens", "300",
        message="exceeds the base model's context window of 512 tokens"),
    cli("devices 0", "generate", *PAIR, "--prompt", "a", "--devices", "0", message="--devices must be >= 1"),
    cli("memory budget 0", "generate", *PAIR, "--prompt", "a", "--memory-budget-mb", "0",
        message="--memory-budget-mb must be > 0"),
    cli("bench list not integers", "bench", "speed", *PAIR, "--layer-parallel", "a,b",
        message="--layer-parallel: comma-separated integers expected"),
    cli("app on all interfaces", "app", "--host", "0.0.0.0", message="--allow-remote"),
    cli("app share link", "app", "--share", "true", message="--share true publishes the app.*--allow-remote"),
    cli("app port 0", "app", "--port", "0", message="--port must be between 1 and 65535"),
    cli("app auth without colon", "app", "--auth", "alice", message="expected USER:PASSWORD"),
    cli("app auth file missing", "app", "--auth-file", "{tmp}/nope.txt", message="nope.txt: no such file"),
    cli("app auth file empty", "app", "--auth-file", "{tmp}/empty.txt", message="no USER:PASSWORD lines"),
    cli("app custom models off", "app", *PAIR, message="custom models .* are off"),
    cli("app timeout 0", "app", "--timeout", "0", message="--timeout must be > 0"),
    # -- dashboard fields through gradio_client -----------------------------------------------------------
    Case("blank prompt", "/generate", dict(prompt="   "), "the prompt is empty"),
    Case("prompt too long", "/generate", dict(prompt="x" * 20_001), "20001 characters; the limit is 20000"),
    Case("N out of range", "/generate", dict(prompt=PROMPT, layer_parallel=70),
         "layer-parallel size N must be between 1 and 6; got 70"),
    Case("k out of range", "/generate", dict(prompt=PROMPT, draft_len=0), "draft length k must be between 1 and 12"),
    Case("max new tokens not a number", "/generate", dict(prompt=PROMPT, max_new_tokens="many"),
         "max new tokens must be a number; got 'many'"),
    Case("max new tokens missing", "/generate", dict(prompt=PROMPT, max_new_tokens=None),
         "max new tokens must be a number; got None"),
    Case("top-p 0", "/generate", dict(prompt=PROMPT, top_p=0.0), "top-p must be between 0.05 and 1"),
    Case("negative top-k", "/generate", dict(prompt=PROMPT, top_k=-3), r"top-k \(0 = off\) must be at least 0"),
    Case("temperature 5", "/generate", dict(prompt=PROMPT, temperature=5), "temperature .* must be between 0 and 2"),
    Case("unknown mode", "/generate", dict(prompt=PROMPT, mode="turbo"),
         "mode must be one of vanilla, speculative, easyspec; got 'turbo'"),
    Case("unknown calibration", "/generate", dict(prompt=PROMPT, calibration="sometimes"),
         "calibration policy must be one of none, every-round, on-mismatch"),
    Case("context window", "/generate", dict(prompt="x" * 300, max_new_tokens=256),
         "exceeds the base model's context window"),
    Case("compare 9 columns", "/compare", dict(prompt=PROMPT, columns=9), "columns must be one of 2, 3, 4; got 9"),
    Case("compare column too long", "/compare", dict(prompt="x" * 300, max_new_tokens=256, columns=2),
         "column 1: .*context window"),
    Case("pilot no typed prompts", "/pilot", dict(prompt="", source="typed prompts"), "type at least one prompt"),
    Case("pilot no N ticked", "/pilot", dict(source="built-in set", layer_parallel=[]),
         "tick at least one layer-parallel size"),
    Case("pilot N not offered", "/pilot", dict(source="built-in set", layer_parallel=[2, 99]),
         "layer-parallel size N: every ticked value must be one of"),
    Case("pilot set as a path", "/pilot", dict(source="built-in set", prompt_set="../../etc/passwd"),
         "built-in set must be one of code, chat, math, summarisation"),
    Case("pilot unknown interconnect", "/pilot", dict(source="typed prompts", prompt="hi", comm="pigeon"),
         "interconnect model must be one of"),
    Case("pilot upload missing", "/pilot", dict(source="uploaded file"), "choose a JSONL or CSV file to upload first"),
    Case("replay without a file", "/replay", dict(run_file=None, speed="instant"), "choose a saved run file"),
    # -- uploaded pilot files --------------------------------------------------------------------------
    Case("pilot latin-1 csv", "/pilot", dict(source="uploaded file"), r"prompts.csv: not UTF-8 text",
         upload=("prompts.csv", LATIN1)),
    Case("pilot csv wrong columns", "/pilot", dict(source="uploaded file"),
         "no \"prompt\" column in the header row \\(columns found: 'question', 'answer'\\)",
         upload=("prompts.csv", b"question,answer\nwhy,because\n")),
    Case("pilot huge file", "/pilot", dict(source="uploaded file"), "the file is 1.5 MB; the limit is 1 MB",
         upload=("prompts.csv", b"prompt\n" + b"a" * 1_500_000 + b"\n")),
    Case("pilot empty file", "/pilot", dict(source="uploaded file"), "no prompts found \\(the file is empty\\)",
         upload=("prompts.jsonl", b"")),
    Case("pilot binary file", "/pilot", dict(source="uploaded file"), "looks like a binary file",
         upload=("prompts.csv", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")),
    Case("pilot jsonl wrong key", "/pilot", dict(source="uploaded file"),
         'line 1: expected an object with a "prompt" key', upload=("prompts.jsonl", b'{"question": "?"}\n')),
    Case("pilot jsonl broken line", "/pilot", dict(source="uploaded file"), "line 2: not valid JSON",
         upload=("prompts.jsonl", b'{"prompt": "a"}\n{"prompt": \n')),
    Case("pilot prompt not a string", "/pilot", dict(source="uploaded file"), '"prompt" must be a string, got int',
         upload=("prompts.jsonl", b'{"prompt": 5}\n')),
    Case("pilot spreadsheet", "/pilot", dict(source="uploaded file"), "Invalid file type",
         upload=("prompts.xlsx", b"PK\x03\x04")),
    # -- uploaded saved runs -------------------------------------------------------------------------
    Case("replay a prompt file", "/replay", dict(speed="instant"), "not a replayable easyspec run",
         upload=("run.jsonl", b'{"prompt": "x"}\n')),
    Case("replay header only", "/replay", dict(speed="instant"), "the saved run has a header but no rounds",
         upload=("run.jsonl", json.dumps(RUN_HEADER).encode() + b"\n")),
    Case("replay future version", "/replay", dict(speed="instant"), "version 99 is not supported",
         upload=("run.jsonl", json.dumps({**RUN_HEADER, "version": 99}).encode() + b"\n")),
    Case("replay cut off mid-line", "/replay", dict(speed="instant"), "not a replayable easyspec run",
         upload=("run.jsonl", json.dumps(RUN_HEADER).encode() + b'\n{"kind": "round", "index": 0, "tok')),
    Case("replay binary", "/replay", dict(speed="instant"), "not a replayable easyspec run",
         upload=("run.jsonl", b"\xff\xfe\x00\x01" * 10)),
]


def test_the_catalogue_is_large_and_varied():
    kinds = {c.where for c in CASES}
    assert len(CASES) >= 25 and {"cli", "/generate", "/compare", "/pilot", "/replay"} <= kinds
    assert len({c.name + c.where for c in CASES}) == len(CASES)
    assert sum(c.upload is not None for c in CASES) >= 10


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad-input")
    (tmp / "latin1.txt").write_bytes(LATIN1)
    (tmp / "empty.txt").write_text("# no users yet\n")
    return tmp


@pytest.fixture(scope="module")
def client(app_url):
    return Client(app_url, verbose=False)


@pytest.mark.parametrize("case", [c for c in CASES if c.where == "cli"], ids=lambda c: c.name)
def test_command_line(case, pair_dirs, files, capsys):
    base, draft = pair_dirs["qwen2"]
    argv = [a.format(base=base, draft=draft, tmp=files) for a in case.args]
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2, (code, err)
    assert err.startswith("easyspec: error: ") and len(err.strip().splitlines()) == 1, err
    assert re.search(case.message, err), err
    assert "Traceback" not in err + out


@pytest.mark.parametrize("case", [c for c in CASES if c.where != "cli"], ids=lambda c: c.name)
def test_app(case, client, tmp_path):
    kwargs = dict(case.args)
    if case.upload is not None:
        name, content = case.upload
        (tmp_path / name).write_bytes(content)
        kwargs["run_file" if case.where == "/replay" else "upload"] = handle_file(str(tmp_path / name))
    with pytest.raises(AppError) as info:
        client.predict(**kwargs, api_name=case.where)
    message = str(info.value)
    assert re.search(case.message, message), message
    assert "Traceback" not in message and "verbose error reporting" not in message


def test_the_app_still_serves(client):
    details = client.predict(prompt="abc", max_new_tokens=3, api_name="/generate")[6]
    assert details["new_tokens"] == 3


# -- issue 17, items 11-12: empty stop strings and non-finite numbers (a block of its own) ----------------
# (gradio_client refuses to send NaN or infinities, so the dashboard's side is in test_config_checks.py)
FINITE_CASES = [
    cli("empty stop string", "generate", *PAIR, "--prompt", "a", "--stop", "",
        message="--stop: a stop string must not be empty"),
    cli("empty stop string among others", "generate", *PAIR, "--prompt", "a", "--stop", "END", "--stop", "",
        message="--stop: a stop string must not be empty"),
    cli("temperature inf", "generate", *PAIR, "--prompt", "a", "--temperature", "inf",
        message="--temperature must be a finite number; got inf"),
    cli("temperature nan", "generate", *PAIR, "--prompt", "a", "--temperature", "nan",
        message="--temperature must be a finite number; got nan"),
    cli("top-p nan", "generate", *PAIR, "--prompt", "a", "--top-p", "nan", message="--top-p must be a finite number"),
    cli("memory budget inf", "generate", *PAIR, "--prompt", "a", "--memory-budget-mb", "inf",
        message="--memory-budget-mb must be a finite number; got inf"),
    cli("tune tolerance nan", "tune", *PAIR, "--tolerance", "nan", message="--tolerance must be a finite number"),
]


@pytest.mark.parametrize("case", FINITE_CASES, ids=lambda c: c.name)
def test_finite_numbers_and_stop_strings_on_the_command_line(case, pair_dirs, files, capsys):
    test_command_line(case, pair_dirs, files, capsys)
