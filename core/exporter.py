"""Prometheus metrics of an EasySpec process, from the round records of its finished runs.

What it is: one `CollectorRegistry` per app (never prometheus_client's global one, so that two apps
or tests in one process do not mix counts) holding counters, histograms and gauges named after
vLLM's `spec_decode` metrics with an `easyspec:` prefix, and `record_run`, which adds one finished
run: every counter grows by the sums of that run's records (docs/conventions.md#metrics defines
the figures). Labels are the mode and the layer plan, never the prompt. `page` is the text
exposition format that `/metrics` serves (the dashboard mounts it, app/dashboard.py); the Grafana
dashboard in assets/grafana_dashboard.json reads these names.
"""
from __future__ import annotations

from typing import Callable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .engine.grouping import describe, plan_of
from .engine.monitor import ALERT, OFF, SEQUENTIAL
from .engine.records import PHASES, RoundRecord
from .settings import SpecConfig

CONTENT_TYPE = CONTENT_TYPE_LATEST
OUTCOMES = ("equal", "tie", "different")  # lossless.GreedyCheck.verdict
LABELS = ("mode", "plan")
SECONDS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120, 300)


def plan_label(settings: dict, draft_layers: int | None) -> str:
    """The layer plan a run drafted with, in `--groups` notation: "sequential" for speculative decoding,
    "none" for vanilla; an equal-groups plan as its groups (a bounded set of values: one per N)."""
    mode = settings.get("mode")
    if mode == "vanilla":
        return "none"
    if mode != "easyspec":
        return "sequential"
    try:
        return describe(plan_of(SpecConfig.from_dict(settings), draft_layers or 1))
    except (KeyError, TypeError, ValueError):  # settings from another version or another draft
        return str(settings.get("groups") or f"N={settings.get('layer_parallel')}")


class Exporter:
    """The metrics of one app; `record_run` after each finished run, `page()` for /metrics."""

    def __init__(self, draft_layers: int | None = None):
        self.draft_layers = draft_layers
        self.registry = r = CollectorRegistry(auto_describe=True)
        sd = "easyspec:spec_decode_"
        self.drafts = Counter(f"{sd}num_drafts", "Drafting rounds (one draft, then one verify forward of the base).",
                              LABELS, registry=r)
        self.draft_tokens = Counter(f"{sd}num_draft_tokens", "Tokens drafted (for a tree: along its line).",
                                    LABELS, registry=r)
        self.accepted = Counter(f"{sd}num_accepted_tokens", "Drafted tokens the base accepted.", LABELS, registry=r)
        self.per_pos = Counter(f"{sd}num_accepted_tokens_per_pos",
                               "Rounds that accepted the draft token at this position (0 = first drafted token).",
                               LABELS + ("position",), registry=r)
        self.drafted_per_pos = Counter(f"{sd}num_drafted_tokens_per_pos",
                                       "Rounds that drafted a token at this position (the per-position denominator).",
                                       LABELS + ("position",), registry=r)
        self.emitted = Counter("easyspec:generation_tokens", "Tokens emitted (output), prefill token included.",
                               LABELS, registry=r)
        self.rounds = Counter("easyspec:rounds", "Rounds after the prefill: drafting rounds and base-only steps.",
                              LABELS, registry=r)
        self.calibrations = Counter("easyspec:calibrations",
                                    "Rounds that began with a bonus calibration of the draft's cache.", LABELS,
                                    registry=r)
        self.alerts = Counter("easyspec:low_acceptance_alerts",
                              "Rounds flagged low-acceptance: rolling acceptance far below the expectation.",
                              LABELS, registry=r)
        self.fallbacks = Counter("easyspec:fallbacks",
                                 "Fallback switches of --on-low-acceptance fallback (to: sequential | off).",
                                 LABELS + ("to",), registry=r)
        self.greedy_checks = Counter("easyspec:greedy_checks",
                                     "Greedy outputs compared with vanilla decoding, by outcome "
                                     "(equal | tie: a rounding tie | different: a bug).",
                                     LABELS + ("outcome",), registry=r)
        self.requests = Counter("easyspec:requests", "Finished runs.", LABELS, registry=r)
        self.latency = Histogram("easyspec:request_latency_seconds", "Wall time of a run, prefill to last token.",
                                 LABELS, buckets=SECONDS, registry=r)
        self.ttft = Histogram("easyspec:time_to_first_token_seconds", "Time from a run's start to its first token.",
                              LABELS, buckets=SECONDS, registry=r)
        self.phase = Histogram("easyspec:phase_seconds", "Seconds a run spent in each phase (records.PHASES).",
                               LABELS + ("phase",), buckets=SECONDS, registry=r)
        self.queue = Gauge("easyspec:queue_depth", "Device runs waiting in the queue or running now.", registry=r)
        self.pair = Gauge("easyspec:pair_info", "The loaded model pair (value 1; the labels say which).",
                          ("base", "draft", "dtype", "device", "devices"), registry=r)

    def set_pair(self, base: str, draft: str | None, dtype: str, device: str, devices: int) -> None:
        self.pair.labels(base, draft or "", dtype, device, str(devices)).set(1)

    def track_queue(self, depth: Callable[[], float]) -> None:
        """Read the queue depth from `depth` at every scrape."""
        self.queue.set_function(depth)

    def record_run(self, records: Sequence[RoundRecord], settings: dict, greedy_check: str | None = None) -> None:
        """Add one finished run (its records and SpecConfig.as_dict() settings); `greedy_check` is its
        comparison with vanilla's greedy output (equal | tie | different), when one was made."""
        if not records:
            return
        key = (settings.get("mode", "?"), plan_label(settings, self.draft_layers))
        steps = [r for r in records if "prefill" not in r.origins and r.index > 0]
        drafting = [r for r in steps if r.drafted]
        self.requests.labels(*key).inc()
        self.drafts.labels(*key).inc(len(drafting))
        self.draft_tokens.labels(*key).inc(sum(len(r.drafted) for r in drafting))
        self.accepted.labels(*key).inc(sum(r.accepted for r in drafting))
        for i in range(max((len(r.drafted) for r in drafting), default=0)):
            self.per_pos.labels(*key, str(i)).inc(sum(r.accepted > i for r in drafting))
            self.drafted_per_pos.labels(*key, str(i)).inc(sum(len(r.drafted) > i for r in drafting))
        self.emitted.labels(*key).inc(sum(len(r.token_ids) for r in records))
        self.rounds.labels(*key).inc(len(steps))
        self.calibrations.labels(*key).inc(sum(r.calibrated for r in records))
        self.alerts.labels(*key).inc(sum(ALERT in r.flags for r in records))
        for flag, to in ((SEQUENTIAL, "sequential"), (OFF, "off")):
            self.fallbacks.labels(*key, to).inc(sum(flag in r.flags for r in records))
        if greedy_check is not None:
            if greedy_check not in OUTCOMES:
                raise ValueError(f"greedy check outcome {greedy_check!r}: expected one of {', '.join(OUTCOMES)}")
            self.greedy_checks.labels(*key, greedy_check).inc()
        self.latency.labels(*key).observe(records[-1].end_ns / 1e9)
        self.ttft.labels(*key).observe(records[0].end_ns / 1e9)
        for p in PHASES:
            self.phase.labels(*key, p).observe(sum(r.phase_s.get(p, 0.0) for r in records))

    def page(self) -> bytes:
        """The registry in Prometheus' text exposition format."""
        return generate_latest(self.registry)
