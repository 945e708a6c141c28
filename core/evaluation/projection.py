"""Projection of tokens/s and per-device utilisation for G devices: a model, never a measurement.

Inputs, all measured on ONE device: per-phase latencies of a round (from a run's timeline spans, or
from `easyspec bench gpu`), the acceptance (mean accepted length) of each setting, and the models'
shapes; plus a stated communication cost model (latency + bytes / bandwidth per collective).

For G devices (docs/method.md#multi-device-form):
- base at TP = G: its forward time scales with the largest per-device share of heads,
  ceil(H / G) / H (heads that do not divide by G leave some devices idle), plus two all-reduces of
  the hidden states per layer;
- vanilla: one base step per token;
- speculative: the draft at TP = 1 on device 0 (the others idle), then the base verify at TP = G;
- easyspec: in each fuzzy group of N <= G layers one attention per device plus an all-gather, the
  group's N MLPs on every device; sequential layers, LM head and calibration as measured. On one
  device (G = 1) a group's batched attentions are counted as N attentions: the model claims no
  single-device saving (the GPU table measures that one).
Utilisation of device r = its busy time / round time (replicated work counts as busy).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

from ..settings import Group
from ..engine.records import RoundRecord


@dataclass(frozen=True)
class CommModel:
    name: str
    latency_s: float  # per collective
    bandwidth_bytes_per_s: float  # bus bandwidth

    def all_reduce(self, nbytes: float, g: int) -> float:  # ring all-reduce
        return 0.0 if g == 1 else self.latency_s + 2 * (g - 1) / g * nbytes / self.bandwidth_bytes_per_s

    def all_gather(self, nbytes_per_rank: float, g: int) -> float:
        return 0.0 if g == 1 else self.latency_s + (g - 1) * nbytes_per_rank / self.bandwidth_bytes_per_s


# Stated assumptions, not measurements: NVLink (A100/H100 class), PCIe 4 without NVLink, and gloo
# over loopback between CPU processes (a few hundred microseconds per collective, as measured here).
COMM_MODELS = {
    "nvlink": CommModel("nvlink", 10e-6, 150e9),
    "pcie": CommModel("pcie", 20e-6, 16e9),
    "gloo-cpu": CommModel("gloo-cpu", 300e-6, 2e9),
}


@dataclass(frozen=True)
class Shape:
    layers: int
    hidden: int
    heads: int
    bytes_per_value: int = 2


@dataclass(frozen=True)
class Latencies:
    """One device, one round (seconds): per draft layer attention / MLP for one token, the draft's
    LM head, the calibration forward, the base verify of k + 1 tokens, a vanilla base step, and the
    rest of a round (sampling, bookkeeping)."""

    draft_attn_layer: float
    draft_mlp_layer: float
    draft_head: float
    calibrate: float
    verify: float
    vanilla_step: float
    round_rest: float


def latencies_from_runs(speculative: Sequence[RoundRecord], vanilla: Sequence[RoundRecord],
                        easyspec: Sequence[RoundRecord] = ()) -> Latencies:
    """Per-phase medians from measured single-device runs: speculative (sequential draft layers),
    vanilla, and optionally an easyspec run whose calibration spans give the calibration time."""
    def median(xs: list[float]) -> float:
        xs = sorted(xs)
        return xs[len(xs) // 2] if xs else 0.0

    rounds = [r for r in speculative if r.drafted and r.index > 0]
    spans = [s for r in rounds for s in r.spans if s.rank == 0]
    attn = [s.seconds for s in spans if s.phase == "draft.attn"]
    mlp = [s.seconds for s in spans if s.phase == "draft.mlp" and s.label != "head"]
    head = [s.seconds for s in spans if s.phase == "draft.mlp" and s.label == "head"]
    # the first draft step of a round reads the last round's tokens: count it as the calibration
    steps = [sum(s.seconds for s in r.spans if s.rank == 0 and s.phase.startswith("draft.")) for r in rounds]
    drafted = [len(r.drafted) for r in rounds]
    per_step = median([t / d for t, d in zip(steps, drafted)])
    rest = median([r.phase_s.get("sample", 0.0) + r.phase_s.get("overhead", 0.0) for r in rounds])
    base_steps = [r.phase_s.get("verify", 0.0) for r in vanilla if r.index > 0]
    calibrations = [s.seconds for r in easyspec for s in r.spans if s.rank == 0 and s.phase == "calibrate"
                    and r.index > 0]
    return Latencies(draft_attn_layer=median(attn), draft_mlp_layer=median(mlp), draft_head=median(head),
                     calibrate=median(calibrations) if calibrations else per_step, verify=median([r.phase_s.get("verify", 0.0) for r in rounds]),
                     vanilla_step=median(base_steps), round_rest=rest)


def _tp_share(heads: int, g: int) -> float:
    return math.ceil(heads / g) / heads


def project(lat: Latencies, base: Shape, draft: Shape, k: int, g: int, comm: CommModel,
            plan: Sequence[Group], al_speculative: float, al_easyspec: float) -> dict:
    """tokens/s, round seconds and per-device utilisation of vanilla, speculative and easyspec on G devices."""
    assert g >= 1 and k >= 1
    if g > 1 and any(b - a > g for a, b in plan):
        raise ValueError(f"a fuzzy group larger than G = {g} cannot run one layer per device")
    share = _tp_share(base.heads, g)
    reduce_verify = 2 * base.layers * comm.all_reduce((k + 1) * base.hidden * base.bytes_per_value, g)
    verify = lat.verify * share + reduce_verify
    vanilla = lat.vanilla_step * share + 2 * base.layers * comm.all_reduce(base.hidden * base.bytes_per_value, g)

    seq_step = draft.layers * (lat.draft_attn_layer + lat.draft_mlp_layer) + lat.draft_head
    spec_draft = lat.calibrate + (k - 1) * seq_step
    spec_round = spec_draft + verify + lat.round_rest

    gather = comm.all_gather(draft.hidden * draft.bytes_per_value, g)
    fuzzy_step, busy_attn = lat.draft_head, [0.0] * g
    for a, b in plan:
        n = b - a
        if g == 1:  # one device: the group's attentions run batched; counted as n attentions (no saving)
            fuzzy_step += n * (lat.draft_attn_layer + lat.draft_mlp_layer)
            busy_attn[0] += n * lat.draft_attn_layer
            continue
        fuzzy_step += lat.draft_attn_layer + n * lat.draft_mlp_layer + (gather if n > 1 else 0.0)
        for r in range(g):
            busy_attn[r] += lat.draft_attn_layer if (n == 1 or r < n) else 0.0
    easy_draft = lat.calibrate + (k - 1) * fuzzy_step
    easy_round = easy_draft + verify + lat.round_rest

    verify_busy = lat.verify * share
    mlp_total = draft.layers * lat.draft_mlp_layer + lat.draft_head
    easy_busy = [lat.calibrate + (k - 1) * (busy_attn[r] + mlp_total) + verify_busy for r in range(g)]
    spec_busy = [spec_draft + verify_busy] + [verify_busy] * (g - 1)
    return {
        "devices": g, "comm": comm.name,
        "vanilla": {"tokens_per_s": 1 / vanilla, "round_s": vanilla, "utilisation": [lat.vanilla_step * share / vanilla] * g},
        "speculative": {"tokens_per_s": al_speculative / spec_round, "round_s": spec_round,
                        "draft_s": spec_draft, "utilisation": [b / spec_round for b in spec_busy]},
        "easyspec": {"tokens_per_s": al_easyspec / easy_round, "round_s": easy_round, "draft_s": easy_draft,
                     "utilisation": [b / easy_round for b in easy_busy]},
        "assumptions": {"latencies": asdict(lat), "base": asdict(base), "draft": asdict(draft), "k": k,
                        "comm": asdict(comm), "plan": [list(p) for p in plan],
                        "al_speculative": al_speculative, "al_easyspec": al_easyspec},
    }


def project_pilot(runs: Sequence, base_shape: Shape, draft_shape: Shape, devices: Sequence[int] = (1, 2, 4, 8),
                  comm: CommModel = COMM_MODELS["nvlink"]) -> list[dict]:
    """Projected rows for a finished single-device pilot (`pilot.PilotRun`s): latencies from its
    vanilla, speculative and easyspec runs, acceptance per setting from the same runs."""
    from ..engine.grouping import layer_groups

    by_mode: dict[str, list] = {}
    for run in runs:
        by_mode.setdefault(run.setting.config.mode, []).append(run)
    if not by_mode.get("vanilla") or not by_mode.get("speculative"):
        raise ValueError("the projection needs the pilot's vanilla and sequential speculative runs")

    def records(rs):
        return [rec for r in rs for rec in r.records]

    def al(rs) -> float:
        rounds = [rec for rec in records(rs) if rec.drafted]
        return sum(len(rec.token_ids) for rec in rounds) / max(1, len(rounds))

    spec = by_mode["speculative"]
    lat = latencies_from_runs(records(spec), records(by_mode["vanilla"]), records(by_mode.get("easyspec", [])))
    k = spec[0].setting.config.draft_len
    settings: dict[str, list] = {}
    for run in by_mode.get("easyspec", []):
        settings.setdefault(run.setting.label, []).append(run)
    rows = []
    for g in devices:
        for label, rs in settings.items():
            cfg = rs[0].setting.config
            if cfg.layer_parallel > g and g > 1:
                continue
            plan = layer_groups(draft_shape.layers, cfg.layer_parallel if g > 1 else 1, cfg.sequential_head,
                                cfg.sequential_tail)
            p = project(lat, base_shape, draft_shape, cfg.draft_len or k, g, comm, plan, al(spec), al(rs))
            rows.append({"devices": g, "setting": label, "comm": comm.name,
                         "vanilla_tokens_per_s": round(p["vanilla"]["tokens_per_s"], 3),
                         "speculative_tokens_per_s": round(p["speculative"]["tokens_per_s"], 3),
                         "easyspec_tokens_per_s": round(p["easyspec"]["tokens_per_s"], 3),
                         "easyspec_speedup": round(p["easyspec"]["tokens_per_s"] / p["vanilla"]["tokens_per_s"], 3),
                         "speculative_utilisation": [round(u, 2) for u in p["speculative"]["utilisation"]],
                         "easyspec_utilisation": [round(u, 2) for u in p["easyspec"]["utilisation"]]})
    return rows


def session_shapes(session) -> tuple[Shape, Shape]:
    """(base, draft) shapes of a loaded session's decoders, values as wide as its dtype."""
    width = 4 if session.info.dtype == "float32" else 2
    base, draft = session.base.cfg, session.draft.cfg
    return (Shape(base.n_layers, base.hidden_size, base.n_heads, width),
            Shape(draft.n_layers, draft.hidden_size, draft.n_heads, width))
