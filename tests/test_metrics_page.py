"""The Prometheus metrics (core/exporter.py) and the app's /metrics page on a small random pair: the page
parses with prometheus_client's own parser, its counters are the sums of the runs' records, every metric
has a help text and no label carries a prompt, and with a login set the page refuses a request without it."""
from __future__ import annotations

import base64
import json
import urllib.error
import urllib.parse
import urllib.request

import pytest

pytest.importorskip("gradio")

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from conftest import tokens_of  # noqa: E402
from easyspec.core.engine.loop import generate  # noqa: E402
from easyspec.core.planning import plan_run  # noqa: E402
from easyspec.core.settings import SpecConfig  # noqa: E402
from easyspec.core.exporter import Exporter, plan_label  # noqa: E402
from easyspec.core.engine.monitor import ALERT  # noqa: E402

PROMPT = list(range(10, 30))
COLLAPSE = dict(mode="easyspec", groups="0-7", calibration="none", draft_len=5, max_new_tokens=80,
                expected_acceptance=0.9, on_low_acceptance="fallback", base_token_s=1e-9)


def _samples(page: bytes) -> dict[tuple, float]:
    """(sample name, sorted labels) -> value, for every sample of the page."""
    out = {}
    for family in text_string_to_metric_families(page.decode()):
        assert family.documentation, f"{family.name} has no help text"
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _value(samples, name, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_counters_are_the_sums_of_the_runs_records(decoders):
    base, draft = decoders["qwen2"]
    exporter = Exporter(draft.cfg.n_layers)
    runs = [(SpecConfig(**COLLAPSE), "equal"), (SpecConfig(**COLLAPSE), "tie"),
            (SpecConfig(mode="speculative", max_new_tokens=30), None)]
    recorded = []
    for cfg, check in runs:
        records = list(generate(base, draft, plan_run(cfg, PROMPT, base, draft)))
        exporter.record_run(records, cfg.as_dict(), check)
        recorded.append(records)
    s = _samples(exporter.page())
    plan = dict(mode="easyspec", plan="0-7")
    assert plan_label(runs[0][0].as_dict(), 8) == "0-7" and plan_label(runs[2][0].as_dict(), 8) == "sequential"
    mine = [r for records in recorded[:2] for r in records]
    drafting = [r for r in mine if r.drafted]
    sd = "easyspec:spec_decode_"
    assert _value(s, f"{sd}num_drafts_total", **plan) == len(drafting) > 0
    assert _value(s, f"{sd}num_draft_tokens_total", **plan) == sum(len(r.drafted) for r in drafting)
    assert _value(s, f"{sd}num_accepted_tokens_total", **plan) == sum(r.accepted for r in drafting) > 0
    for i in range(5):
        assert _value(s, f"{sd}num_accepted_tokens_per_pos_total", **plan, position=str(i)) == \
            sum(r.accepted > i for r in drafting)
    assert _value(s, "easyspec:generation_tokens_total", **plan) == len(tokens_of(mine)) == 160
    assert _value(s, "easyspec:rounds_total", **plan) == sum(r.index > 0 for r in mine)
    assert _value(s, "easyspec:calibrations_total", **plan) == sum(r.calibrated for r in mine) > 0
    assert _value(s, "easyspec:low_acceptance_alerts_total", **plan) == sum(ALERT in r.flags for r in mine) > 0
    assert _value(s, "easyspec:fallbacks_total", **plan, to="sequential") == 2
    assert _value(s, "easyspec:fallbacks_total", **plan, to="off") == 2
    assert _value(s, "easyspec:greedy_checks_total", **plan, outcome="equal") == 1
    assert _value(s, "easyspec:greedy_checks_total", **plan, outcome="tie") == 1
    assert _value(s, "easyspec:requests_total", **plan) == 2
    assert _value(s, "easyspec:request_latency_seconds_count", **plan) == 2
    assert _value(s, "easyspec:request_latency_seconds_sum", **plan) == pytest.approx(
        sum(records[-1].end_ns / 1e9 for records in recorded[:2]))
    assert _value(s, "easyspec:phase_seconds_sum", **plan, phase="verify") == pytest.approx(
        sum(r.phase_s["verify"] for r in mine))
    spec = dict(mode="speculative", plan="sequential")
    assert _value(s, "easyspec:generation_tokens_total", **spec) == 30
    assert _value(s, "easyspec:fallbacks_total", **spec, to="sequential") == 0
    # labels are mode, plan and the small fixed sets; never a prompt or its tokens
    keys = {k for (_, labels) in s for k, _ in labels}
    assert keys <= {"mode", "plan", "position", "to", "outcome", "phase", "le"}
    with pytest.raises(ValueError, match="greedy check outcome 'same'"):
        exporter.record_run(recorded[2], runs[2][0].as_dict(), "same")


def test_each_app_has_its_own_registry(decoders):
    base, draft = decoders["qwen2"]
    one, two = Exporter(8), Exporter(8)
    cfg = SpecConfig(mode="speculative", max_new_tokens=10)
    one.record_run(list(generate(base, draft, plan_run(cfg, PROMPT, base, draft))), cfg.as_dict())
    assert _value(_samples(one.page()), "easyspec:generation_tokens_total", mode="speculative", plan="sequential") == 10
    assert _value(_samples(two.page()), "easyspec:generation_tokens_total", mode="speculative", plan="sequential") == 0


LOGIN = ("watcher", "pa:ss wörd")


@pytest.fixture(scope="module")
def launched(pair_dirs, tmp_path_factory):
    """The whole dashboard launched in this process with a login, as `easyspec app --auth` launches it."""
    from app_server import free_port

    from easyspec.app.context import AppContext, AppOptions
    from easyspec.app.dashboard import build_app, launch_settings, metrics_route

    patch = pytest.MonkeyPatch()
    patch.setenv("EASYSPEC_CACHE", str(tmp_path_factory.mktemp("cache")))
    base, draft = pair_dirs["qwen2"]
    options = AppOptions(base=str(base), draft=str(draft), allow_custom_models=True, probe=False, port=free_port(),
                         auth=(LOGIN,), on_low_acceptance="fallback")
    ctx = AppContext.start(options)
    demo = build_app(ctx)
    demo.queue(default_concurrency_limit=4)
    demo.launch(**{**launch_settings(options, ctx.files_dir, [metrics_route(ctx)]), "quiet": True},
                prevent_thread_lock=True)
    try:
        yield ctx, f"http://127.0.0.1:{options.port}"
    finally:
        demo.close()
        ctx.close()
        patch.undo()


def _get(url, headers=None):
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=30) as resp:
            return resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def _basic(user, password):
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_metrics_page_needs_the_login_and_counts_a_generate_run(launched):
    from easyspec.app.generate_tab import make_handlers
    from easyspec.app.state import UserState

    ctx, url = launched
    status, body, headers = _get(f"{url}/metrics")
    assert status == 401 and headers.get("www-authenticate", headers.get("WWW-Authenticate", "")).startswith("Basic")
    assert _get(f"{url}/metrics", _basic(LOGIN[0], "wrong"))[0] == 401
    assert _get(f"{url}/metrics", {"Authorization": "Basic !!!"})[0] == 401
    assert _get(f"{url}/metrics", {"Cookie": "access-token-x=y"})[0] == 401
    # a Generate run through the screen's handler (the launch default: fallback), then the page counts it
    generate = make_handlers(ctx).generate
    views = list(generate(dict(prompt="The quick brown fox", chat=True, mode="easyspec", layer_parallel=4,
                               calibration="none", draft_len=5, temperature=0, top_p=1, top_k=0, seed=0,
                               max_new_tokens=60, grouping="custom plan", plan="0-7"), UserState(), "en"))
    assert "fallback: sequential drafting" in views[-1]["status"], views[-1]["status"]
    status, body, headers = _get(f"{url}/metrics", _basic(*LOGIN))
    assert status == 200 and headers.get("content-type", headers.get("Content-Type", "")).startswith("text/plain")
    s = _samples(body)
    labels = dict(mode="easyspec", plan="0-7")
    assert _value(s, "easyspec:generation_tokens_total", **labels) == len(views[-1]["details"]["token_ids"]) == 60
    assert _value(s, "easyspec:fallbacks_total", **labels, to="sequential") == 1
    assert _value(s, "easyspec:pair_info", base=ctx.info.base, draft=ctx.info.draft, dtype="float32", device="cpu",
                  devices="1") == 1
    assert s[("easyspec:queue_depth", ())] == 0.0  # read from Gradio's device queue (NaN if not found), now idle
    # the dashboard's own login cookie opens the page too
    form = urllib.parse.urlencode({"username": LOGIN[0], "password": LOGIN[1]}).encode()
    with urllib.request.urlopen(urllib.request.Request(f"{url}/login", data=form), timeout=30) as resp:
        cookies = [c.split(";")[0] for c in resp.headers.get_all("set-cookie")]
        assert json.loads(resp.read()) == {"success": True}
    assert _get(f"{url}/metrics", {"Cookie": "; ".join(cookies)})[0] == 200


def test_grafana_dashboard_reads_the_exported_names(decoders):
    import re
    from importlib import resources

    base, draft = decoders["qwen2"]
    exporter = Exporter(8)
    cfg = SpecConfig(**COLLAPSE)
    exporter.record_run(list(generate(base, draft, plan_run(cfg, PROMPT, base, draft))), cfg.as_dict(), "equal")
    names = {name for name, _ in _samples(exporter.page())}
    dash = json.loads(resources.files("easyspec.assets").joinpath("grafana_dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"easyspec:[a-z_]+", e)}
    assert used and used <= names, used - names
    titles = {p["title"] for p in dash["panels"]}
    assert {"Acceptance rate", "Mean accepted length", "Per-position acceptance", "Tokens/s", "Phase split"} <= titles
    assert all(p["datasource"]["uid"] == "${DS_PROMETHEUS}" for p in dash["panels"])
    assert [v["name"] for v in dash["templating"]["list"]] == ["mode", "plan"]


def test_pilot_runs_are_counted_with_their_greedy_checks(launched):
    """A Pilot screen run adds each of its runs (vanilla first on each prompt), with the greedy comparison."""
    from easyspec.app.pilot_tab import make_handlers
    from easyspec.app.state import UserState

    ctx, url = launched
    before = _samples(_get(f"{url}/metrics", _basic(*LOGIN))[1])
    pilot = make_handlers(ctx).pilot
    views = list(pilot(dict(prompt="The quick brown fox", source="typed prompts", prompt_set="code", n_prompts=1,
                            layer_parallel=[2], calibration=["every-round"], draft_len=[3], speculative=False,
                            max_new_tokens=8, chat=True, temperature=0), UserState(), "en"))
    assert views[-1]["status"].startswith("**Done**"), views[-1]["status"]
    after = _samples(_get(f"{url}/metrics", _basic(*LOGIN))[1])

    def added(name, **labels):
        return _value(after, name, **labels) - _value(before, name, **labels)

    easyspec = dict(mode="easyspec", plan=plan_label(SpecConfig(layer_parallel=2, calibration="every-round",
                                                                draft_len=3).as_dict(), ctx.info.draft_layers))
    assert added("easyspec:requests_total", mode="vanilla", plan="none") == 1
    assert added("easyspec:requests_total", **easyspec) == 1
    assert added("easyspec:generation_tokens_total", **easyspec) == 8
    assert added("easyspec:greedy_checks_total", **easyspec, outcome="equal") == 1

