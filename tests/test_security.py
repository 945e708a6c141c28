"""Security of `easyspec app`: loopback by default, other addresses only when the operator says so,
Gradio's login, uploads read as data only, and no request that can pick a server path or a model."""
from __future__ import annotations

import json
import pickle

import httpx
import pytest

from conftest import GUARDED_LOGIN
from easyspec.app.cli import build_parser
from easyspec.app.context import AppOptions, is_loopback, parse_auth

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

# Everything a request may set; a model, a folder or a server path is not among them.
REQUEST_PARAMETERS = {"prompt", "chat", "mode", "layer_parallel", "calibration", "draft_len", "temperature", "top_p",
                      "top_k", "seed", "max_new_tokens", "columns", "source", "prompt_set", "n_prompts",
                      "speculative", "upload", "hardware", "run_file", "speed", "lang",
                      "grouping", "plan", "tolerance", "tokens",  # a layer plan is text like '0|1-4|...', not a path
                      "tree_depth", "tree_width", "adaptive", "on_low_acceptance",
                      "draft_dtypes",  # draft precisions: names like 'int8', checked against DRAFT_DTYPES
                      "min_speedup", "max_acceptance_drop", "equality",  # the pilot's acceptance criteria
                      "contexts",  # prompt lengths: whole numbers among pilot.CONTEXTS
                      # the cluster projected for: names among the presets ("this pair": the loaded one), numbers
                      "devices", "execution", "context", "base_model", "draft_model", "accepted_length",
                      "base_config", "draft_config"} | {
    f"{p}_{c}" for p in ("mode", "layer_parallel", "calibration", "draft_len", "grouping") for c in range(1, 5)}
UPLOADS = {"upload", "run_file", "base_config", "draft_config"}  # files the client sends; Gradio refuses others


def test_loopback_by_default_and_other_addresses_only_when_allowed():
    assert build_parser().parse_args(["app"]).host == "127.0.0.1"
    assert AppOptions().host == "127.0.0.1" and not AppOptions().exposed
    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        assert is_loopback(host) and AppOptions(host=host).host == host
    for host in ("0.0.0.0", "::", "192.168.1.5", "example.org"):
        with pytest.raises(ValueError, match=f"--host {host} would serve the app to other machines: add "
                                             f"--allow-remote"):
            AppOptions(host=host)
        assert AppOptions(host=host, allow_remote=True).exposed
    with pytest.raises(ValueError, match="--allow-remote"):
        AppOptions(share=True)


def test_auth_from_flags_and_file(tmp_path):
    users = tmp_path / "users.txt"
    users.write_text("# who may log in\nalice:pa:ss:word\n\n bob :x\n")
    assert parse_auth(["carol:c"], str(users)) == (("carol", "c"), ("alice", "pa:ss:word"), ("bob", "x"))
    with pytest.raises(ValueError) as info:
        parse_auth(["alice:"])
    assert "expected USER:PASSWORD" in str(info.value)
    with pytest.raises(ValueError) as info:
        parse_auth(["topsecretword"])
    assert "topsecretword" not in str(info.value)  # a password typed without its user is never echoed
    users.write_bytes(b"\xff\xfe")
    with pytest.raises(ValueError, match="cannot be read as UTF-8"):
        parse_auth(None, str(users))


def test_login_is_required(guarded_app):
    url, _ = guarded_app
    api = url + "gradio_api/call/generate"
    assert httpx.post(api, json={"data": ["hi"]}, timeout=30).status_code in (401, 403)
    assert httpx.get(url + "metrics", timeout=30).status_code == 401  # the metrics page: the same login
    assert httpx.get(url + "metrics", auth=GUARDED_LOGIN, timeout=30).status_code == 200
    # a wrong password: Gradio's login itself refuses it, not some later failure
    refused = httpx.post(url + "login/", data={"username": GUARDED_LOGIN[0], "password": "wrong password"}, timeout=30)
    assert refused.status_code == 400 and refused.json() == {"detail": "Incorrect credentials."} \
        and not refused.cookies, (refused.status_code, refused.text[:300])
    with pytest.raises(ValueError, match=r"^Could not login to http://127\.0\.0\.1:\d+/?\.$"):
        Client(url, auth=(GUARDED_LOGIN[0], "wrong password"), verbose=False)
    accepted = httpx.post(url + "login/", data=dict(zip(("username", "password"), GUARDED_LOGIN)), timeout=30)
    assert accepted.status_code == 200 and accepted.cookies, accepted.status_code
    client = Client(url, auth=GUARDED_LOGIN, verbose=False)
    details = client.predict(prompt="hi", max_new_tokens=3, api_name="/generate")[6]
    assert details["new_tokens"] == 3


def test_no_request_parameter_picks_a_model_or_a_path(app_url):
    api = Client(app_url, verbose=False).view_api(print_info=False, return_format="dict")
    assert not api["unnamed_endpoints"]
    for name, endpoint in api["named_endpoints"].items():
        params = {p["parameter_name"] for p in endpoint["parameters"]}
        assert params <= REQUEST_PARAMETERS, (name, params - REQUEST_PARAMETERS)
        files = {p["parameter_name"] for p in endpoint["parameters"] if "filepath" in json.dumps(p["type"])}
        assert files <= UPLOADS, (name, files)


CLUSTER = ["a100-80gb", 8, "CUDA graphs", 1024, "this pair", "this pair", 3.0]  # the projection's choices


@pytest.mark.parametrize("api, data", [("replay", ["{path}", "instant", "en"]),
                                       ("pilot", ["", "uploaded file", "code", 1, [2], ["none"], [3], [], [0], False, 4,
                                                  True, 0, "{path}", 1.0, 10, "ties allowed", *CLUSTER, None, None,
                                                  None, "en"]),
                                       ("project", ["", "typed prompts", "code", 1, [2], ["none"], [3], [], [0], False,
                                                    4, True, 0, None, *CLUSTER, "{path}", None, None, "en"])])
def test_a_request_cannot_make_the_server_read_its_own_files(app_url, tmp_path, api, data):
    secret = tmp_path / "secret.jsonl"
    secret.write_text('{"prompt": "not for you"}\n')
    fd = {"path": str(secret), "meta": {"_type": "gradio.FileData"}, "orig_name": "x.jsonl"}
    payload = [fd if d == "{path}" else d for d in data]
    base = app_url + "gradio_api"
    event = httpx.post(f"{base}/call/{api}", json={"data": payload}, timeout=30).json()["event_id"]
    reply = httpx.get(f"{base}/call/{api}/{event}", timeout=60).text
    assert "event: error" in reply and "not uploaded by a user" in reply and "not for you" not in reply
    assert httpx.get(f"{app_url}gradio_api/file={secret}", timeout=30).status_code == 403
    assert httpx.get(f"{app_url}gradio_api/file=/etc/passwd", timeout=30).status_code == 403


def test_uploads_are_read_as_data_only(app_url, tmp_path):
    client = Client(app_url, verbose=False)
    sneaky = tmp_path / "prompts.jsonl"
    sneaky.write_bytes(pickle.dumps({"prompt": "x"}))  # never unpickled: it is not JSON text
    with pytest.raises(AppError, match="not valid JSON|binary file|not UTF-8"):
        client.predict(source="uploaded file", upload=handle_file(str(sneaky)), api_name="/pilot")
    formula = tmp_path / "prompts.csv"
    formula.write_text('prompt\n"=cmd|\' /C calc\'!A0"\n')  # a spreadsheet formula stays text
    out = client.predict(source="uploaded file", upload=handle_file(str(formula)), n_prompts=1, layer_parallel=[2],
                         calibration=["none"], draft_len=[3], speculative=False, max_new_tokens=4, chat=False,
                         api_name="/pilot")
    assert out[0].startswith("**Done**: 2 of 2 runs")
    # a saved run names its models, but replaying it loads nothing: its tokens are shown with this session's
    run_file = client.predict(prompt="abc", max_new_tokens=4, api_name="/generate")[7]
    lines = open(run_file).read().splitlines()
    header = json.loads(lines[0])
    header.update(base="/etc", draft="/root/.ssh")
    other = tmp_path / "other.jsonl"
    other.write_text("\n".join([json.dumps(header), *lines[1:]]) + "\n")
    out = client.predict(run_file=handle_file(str(other)), speed="instant", api_name="/replay")
    assert out[0].startswith("**Replayed**") and out[6]["new_tokens"] == 4
