"""EasySpec Studio's dashboard: a Gradio Blocks app over one engine session.

Screens: Generate, Compare, Pilot, How it works (one module each). The session is loaded once per
process; every run that needs the devices goes through one queue (`concurrency_id="device"`, one
at a time), so several browsers can share the app without loading models twice or interleaving
rounds. Per-user data lives in `gr.State`. API endpoints for `gradio_client`: `generate`,
`compare`, `pilot` (each takes a `prompt`), plus `replay`. `/metrics` serves the Prometheus
metrics of the finished runs (core/exporter.py), behind the same login as the pages.
What it is not: the screens' handlers (their own modules) or the engine; it holds no per-user data.
"""
from __future__ import annotations

import base64
import binascii
import hmac
import math
import sys

import gradio as gr
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from easyspec.core.exporter import CONTENT_TYPE
from easyspec.core.i18n import text

from . import compare_tab, explainer_tab, generate_tab, i18n, pilot_tab
from .context import AppContext, AppOptions
from .fields import name_input_errors
from .logs import configure as configure_logging
from .state import UserState

# Gradio's own upload limit: above every screen's limit (a saved run: 50 MB), so that a file over a
# screen's limit gets that screen's message, which names the limit.
MAX_UPLOAD = "64mb"
CSS = """
.gradio-container {max-width: 1500px !important}
#es-header h1 {margin-bottom: 0}
.es-card-value {font-variant-numeric: tabular-nums}
"""


def build_app(ctx: AppContext) -> gr.Blocks:
    with gr.Blocks(title="EasySpec Studio", analytics_enabled=False) as demo:
        state = gr.State(UserState)  # called once per browser session
        with gr.Row(equal_height=False):
            with gr.Column(scale=5):
                gr.Markdown(text("app.header"), elem_id="es-header")
            with gr.Column(scale=1, min_width=220):
                switch = i18n.language_switch()
        gr.Markdown(ctx.models_markdown(), elem_id="es-models")
        with gr.Tabs():
            with gr.Tab("Generate", id="generate"):
                generate_views = generate_tab.build(ctx, state, switch)
            with gr.Tab("Compare", id="compare"):
                compare_views = compare_tab.build(ctx, state, switch)
            with gr.Tab("Pilot", id="pilot") as pilot:
                pilot_views = pilot_tab.build(ctx, state, pilot, switch)
            with gr.Tab("How it works", id="explainer") as explainer:
                explainer_views = explainer_tab.build(ctx, state, explainer, switch)
        i18n.wire(demo, switch, state, [generate_views, compare_views, pilot_views, explainer_views])
    # Gradio gives a state with a callable initial value a page-load event of its own, public by
    # default; it is plumbing, not part of the API.
    for fn in demo.fns.values():
        if fn.fn is UserState:
            fn.api_visibility = "private"
    name_input_errors(demo)
    return demo


def _logged_in(request: Request, users: tuple[tuple[str, str], ...]) -> bool:
    """HTTP basic credentials of one of the users, or the login cookie Gradio set for the pages."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "basic":
        try:
            user, _, password = base64.b64decode(value, validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return any(hmac.compare_digest(user.encode(), u.encode()) & hmac.compare_digest(password.encode(), p.encode())
                   for u, p in users)
    app = request.app
    cookie_id = getattr(app, "cookie_id", None)
    tokens = getattr(app, "tokens", {})
    return cookie_id is not None and any(request.cookies.get(name) in tokens for name in
                                         (f"access-token-{cookie_id}", f"access-token-unsecure-{cookie_id}"))


def metrics_route(ctx: AppContext) -> Route:
    """GET /metrics: the exporter's page; with a login set, 401 unless the request is logged in."""
    users = ctx.options.auth

    def metrics(request: Request) -> Response:
        if users and not _logged_in(request, users):
            return Response("log in to read the metrics (HTTP basic, or the dashboard's login)\n", status_code=401,
                            headers={"WWW-Authenticate": 'Basic realm="EasySpec Studio"'}, media_type="text/plain")
        return Response(ctx.exporter.page(), media_type=CONTENT_TYPE)

    return Route("/metrics", metrics, methods=["GET"])


def queue_depth(demo: gr.Blocks) -> float:
    """Events waiting for or holding the device (Gradio's queue for concurrency id "device", made at
    launch); NaN, Prometheus's "unknown", where that queue is not found (another Gradio's internals)."""
    q = getattr(getattr(demo, "_queue", None), "event_queue_per_concurrency_id", {}).get("device")
    try:
        return float(len(q.queue) + q.current_concurrency)
    except (AttributeError, TypeError):
        return math.nan


def launch_settings(options: AppOptions, files_dir, routes: list | None = None) -> dict:
    """Gradio's launch arguments for these options (`routes`: extra routes for its FastAPI app)."""
    return dict(app_kwargs={"routes": list(routes or [])}, server_name=options.host, server_port=options.port, share=options.share, css=CSS,
                theme=gr.themes.Soft(), max_file_size=MAX_UPLOAD, footer_links=["api", "gradio"],
                allowed_paths=[str(files_dir)], quiet=False, auth=list(options.auth) or None,
                # Gradio's own refusals (a file path that was not uploaded, ...) reach clients as
                # their one-line message; the handlers turn every error into a message themselves.
                show_error=True,
                # Gradio keeps every session's latest value of each output component (figures,
                # tables, the report) until the session is evicted: least recently used first,
                # once more than this many sessions are held.
                state_session_capacity=options.max_sessions,
                auth_message="EasySpec Studio: log in with the user name and password from the operator.")


def serve(options: AppOptions) -> int:
    """Load the session once, build the app and serve it until interrupted."""
    configure_logging()  # the engine's progress and warnings go to the server log (stderr)
    if options.exposed and not options.auth:
        print("easyspec app: WARNING: other machines can reach this app and no login is required "
              "(add --auth-file FILE or --auth USER:PASSWORD)", file=sys.stderr)
    print(f"easyspec app: loading {options.pair_name or options.base} "
          f"({options.dtype}, {options.device}, G={options.devices}) …", file=sys.stderr)
    ctx = AppContext.start(options)
    try:
        if ctx.throughput is not None:
            rates = ", ".join(f"{m} {r:.1f} tok/s" for m, r in ctx.throughput.tokens_per_s.items())
            print(f"easyspec app: measured {rates}", file=sys.stderr)
        demo = build_app(ctx)
        demo.queue(default_concurrency_limit=4)
        ctx.exporter.track_queue(lambda: queue_depth(demo))
        demo.launch(**launch_settings(options, ctx.files_dir, [metrics_route(ctx)]))
    finally:
        ctx.close()
    return 0
