"""Projected tokens/s and per-device utilisation on G accelerators: a hardware model, never a measurement.

What it is: a roofline model per forward (docs/projection.md). A forward on one device costs
    max(bytes read / achieved bandwidth, FLOPs / achieved compute)
    + launches x launch cost (eager) or one replay cost (CUDA graphs)
    + collectives x (latency + hops x hop latency) + ring bytes / achieved link bandwidth,
with the bytes and FLOPs counted from the model's shapes (core/evaluation/shapes.py): attention
and MLP weights, the LM head, and the KV cache read at the current context, all for a batch of B.
Rounds follow the engine (core/engine/loop.py, docs/method.md):
- vanilla: one base forward per token, base at TP = G;
- speculative: k draft forwards at TP = 1 on device 0 (the others idle), then one base forward of
  the k + 1 verify tokens at TP = G;
- easyspec: one calibration forward of the AL committed tokens (exact, on every device), k - 1
  fuzzy draft steps (per group of N layers one attention per device, an all-gather, the group's N
  MLPs on every device; sequential layers and the LM head on every device), then the verify;
- trees (tree width W > 0): every draft forward reads W tokens and the verify reads 1 + k W nodes.
tokens/s = B x AL / round seconds; AL (mean accepted length) is an input, measured or entered.
What it is not: the device numbers (hardware.py) or their fit (fitting.py).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

from ..engine.grouping import layer_groups
from ..settings import DEFAULT_LAYER_PARALLEL, default_layer_parallel, middle_layers
from ..engine.records import Span
from .hardware import FITTED, Device, Efficiency
from .shapes import ModelShape

ATTN_KERNELS, MLP_KERNELS, HEAD_KERNELS = 8, 6, 3  # eager launches: norm, qkv, rope, cache write, sdpa, o, add...
LOGIT_BYTES = 4  # fp32 logits gathered from a sharded LM head


@dataclass(frozen=True)
class Work:
    """What one device does in one forward (or one draft step): bytes read, FLOPs, kernel launches,
    forwards (graph replays), collectives among `peers` devices and the bytes they move per device."""

    bytes: float = 0.0
    flops: float = 0.0
    launches: int = 0
    replays: int = 0
    collectives: int = 0
    link_bytes: float = 0.0
    peers: int = 1

    def __add__(self, o: "Work") -> "Work":
        return Work(self.bytes + o.bytes, self.flops + o.flops, self.launches + o.launches, self.replays + o.replays,
                    self.collectives + o.collectives, self.link_bytes + o.link_bytes, max(self.peers, o.peers))

    def times(self, n: float) -> "Work":
        return Work(self.bytes * n, self.flops * n, round(self.launches * n), round(self.replays * n),
                    round(self.collectives * n), self.link_bytes * n, self.peers)


@dataclass(frozen=True)
class Machine:
    device: Device
    eff: Efficiency = FITTED
    cuda_graphs: bool = True

    def busy(self, w: Work) -> float:
        """Seconds the device streams memory or computes (the roofline's max)."""
        return max(w.bytes / (self.device.bandwidth * self.eff.bandwidth),
                   w.flops / (self.device.flops * self.eff.compute))

    def seconds(self, w: Work) -> float:
        fixed = w.replays * self.eff.replay_s if self.cuda_graphs else w.launches * self.eff.launch_s
        comm = w.collectives * self.eff.collective_latency(w.peers) + w.link_bytes / (self.device.link * self.eff.link)
        return self.busy(w) + fixed + comm


def all_reduce(nbytes: float, g: int) -> Work:  # ring: 2 (G - 1) / G of the message crosses each link
    return Work(collectives=1, link_bytes=2 * (g - 1) / g * nbytes, peers=g) if g > 1 else Work()


def all_gather(nbytes_per_rank: float, g: int) -> Work:  # ring: G - 1 pieces arrive at each device
    return Work(collectives=1, link_bytes=(g - 1) * nbytes_per_rank, peers=g) if g > 1 else Work()


def attention(m: ModelShape, tokens: float, context: int, batch: int, tp: int = 1) -> Work:
    """One layer's attention at TP = tp: its weights (heads that do not divide by tp leave devices
    with the larger share; KV heads fewer than tp are replicated) and its KV cache at this context,
    for tokens x batch queries."""
    share, kv_share = math.ceil(m.heads / tp) / m.heads, math.ceil(m.kv_heads / tp) / m.kv_heads
    q = tokens * batch
    weights = m.hidden * m.head_dim * m.bytes_per_value * (2 * m.heads * share + 2 * m.kv_heads * kv_share)
    kv = batch * m.cached(context) * m.kv_bytes_per_token * kv_share
    return Work(bytes=weights + kv, flops=2 * q * weights / m.bytes_per_value
                + 4 * q * m.cached(context) * m.heads * m.head_dim * share,  # QK^T and PV
                launches=ATTN_KERNELS)


def mlp(m: ModelShape, tokens: float, batch: int, tp: int = 1) -> Work:
    return Work(bytes=m.mlp_bytes / tp, flops=2 * tokens * batch * m.mlp_bytes / m.bytes_per_value / tp,
                launches=MLP_KERNELS)


def lm_head(m: ModelShape, tokens: float, batch: int, tp: int = 1, sharded: bool = True) -> Work:
    g = tp if sharded else 1
    w = Work(bytes=m.head_bytes / g, flops=2 * tokens * batch * m.head_bytes / m.bytes_per_value / g,
             launches=HEAD_KERNELS)
    return w + all_gather(tokens * batch * m.vocab / tp * LOGIT_BYTES, tp) if sharded else w


def forward(m: ModelShape, tokens: float, context: int, batch: int = 1, tp: int = 1,
            head_sharded: bool = True) -> Work:
    """One full forward at TP = tp: every layer, two all-reduces of the hidden states per layer, the LM head."""
    layer = attention(m, tokens, context, batch, tp) + mlp(m, tokens, batch, tp) \
        + all_reduce(tokens * batch * m.hidden * m.bytes_per_value, tp).times(2)
    return layer.times(m.layers) + lm_head(m, tokens, batch, tp, head_sharded) + Work(replays=1)


def fuzzy_step(m: ModelShape, plan, context: int, batch: int, g: int, width: int = 1) -> list[Work]:
    """One fuzzy draft step, per device (docs/method.md#fuzzy-layer-parallel-groups): on G > 1
    device r runs the r-th attention of each group, an all-gather shares them, every device runs the
    group's MLPs; sequential layers and the LM head run on every device. On one device a group's
    attentions run as one batched computation: the same bytes, one attention's launches."""
    out = []
    for r in range(g):
        w = lm_head(m, width, batch, sharded=False) + Work(replays=1)
        for a, b in plan:
            n = b - a
            attn = attention(m, width, context, batch)
            if n == 1:
                w += attn + mlp(m, width, batch)
            elif g == 1:
                w += replace(attn.times(n), launches=ATTN_KERNELS) + mlp(m, width, batch).times(n)
            else:
                w += (attn if r < n else Work()) + all_gather(width * batch * m.hidden * m.bytes_per_value, g) \
                    + mlp(m, width, batch).times(n)
        out.append(w)
    return out


@dataclass(frozen=True)
class Setting:
    """One projected setting: G devices, context, draft length k, layer-parallel size N, batch B,
    AL of speculative and easyspec decoding, CUDA graphs or eager, tree width W (0: a chain)."""

    devices: int = 8
    context: int = 1024
    draft_len: int = 5
    layer_parallel: int = DEFAULT_LAYER_PARALLEL
    al_speculative: float = 3.5
    al_easyspec: float = 3.5
    batch: int = 1
    cuda_graphs: bool = True
    tree_width: int = 0
    sequential_head: int = 1
    sequential_tail: int = 1

    def __post_init__(self) -> None:
        if self.devices < 1:
            raise ValueError(f"devices G must be >= 1; got {self.devices}")
        for f in ("context", "draft_len", "layer_parallel", "batch"):
            if getattr(self, f) < 1:
                raise ValueError(f"{f.replace('_', ' ')} must be >= 1; got {getattr(self, f)}")
        if self.tree_width < 0:
            raise ValueError(f"tree width must be >= 0; got {self.tree_width}")
        for f in ("al_speculative", "al_easyspec"):
            if not 1.0 <= getattr(self, f) <= self.draft_len + 1:
                raise ValueError(f"mean accepted length must be within 1..k+1 = {self.draft_len + 1}; "
                                 f"got {getattr(self, f)}")
        if self.devices > 1 and self.layer_parallel > self.devices:
            raise ValueError(f"layer-parallel size N = {self.layer_parallel} needs N <= G = {self.devices} "
                             "(one attention per device)")


def project(base: ModelShape, draft: ModelShape, device: Device, s: Setting, eff: Efficiency = FITTED) -> dict:
    """tokens/s, round seconds and per-device utilisation of vanilla, speculative and easyspec decoding."""
    mc = Machine(device, eff, s.cuda_graphs)
    g, k, c, b = s.devices, s.draft_len, s.context, s.batch
    width = max(1, s.tree_width)
    verify_tokens = 1 + k * s.tree_width if s.tree_width else k + 1
    # 1. Vanilla: one base forward per token at TP = G.
    step = forward(base, 1, c, b, g)
    vanilla = mc.seconds(step)
    # 2. Speculative: k draft forwards at TP = 1 on device 0, the verify at TP = G.
    verify = forward(base, verify_tokens, c, b, g)
    draft_fwd = forward(draft, width, c, b)
    spec_draft = k * mc.seconds(draft_fwd)
    spec_round = spec_draft + mc.seconds(verify)
    # 3. EasySpec: calibration of the AL committed tokens (sequential, exact), k - 1 fuzzy steps, the verify.
    middle = middle_layers(draft.layers, s.sequential_head, s.sequential_tail)
    plan = layer_groups(draft.layers, min(s.layer_parallel, middle), s.sequential_head, s.sequential_tail)
    calib = forward(draft, s.al_easyspec, c, b)
    fuzzy = fuzzy_step(draft, plan, c, b, g, width)
    fuzzy_s = max(mc.seconds(w) for w in fuzzy)
    easy_draft = mc.seconds(calib) + (k - 1) * fuzzy_s
    easy_round = easy_draft + mc.seconds(verify)
    # Busy time per device: the roofline term of the work it runs (launches and collectives are waiting).
    spec_busy = [mc.busy(verify) + (k * mc.busy(draft_fwd) if r == 0 else 0.0) for r in range(g)]
    easy_busy = [mc.busy(verify) + mc.busy(calib) + (k - 1) * mc.busy(w) for w in fuzzy]
    seq = attention(draft, 1, c, b).bytes
    return {
        "devices": g, "hardware": device.name, "cuda_graphs": s.cuda_graphs, "batch": b, "context": c,
        "vanilla": {"tokens_per_s": b / vanilla, "step_s": vanilla, "utilisation": [mc.busy(step) / vanilla] * g,
                    "per_device_bytes": step.bytes},
        "speculative": {"tokens_per_s": b * s.al_speculative / spec_round, "round_s": spec_round,
                        "draft_s": spec_draft, "verify_s": mc.seconds(verify), "accepted_length": s.al_speculative,
                        "utilisation": [x / spec_round for x in spec_busy]},
        "easyspec": {"tokens_per_s": b * s.al_easyspec / easy_round, "round_s": easy_round, "draft_s": easy_draft,
                     "calibrate_s": mc.seconds(calib), "verify_s": mc.seconds(verify),
                     "accepted_length": s.al_easyspec, "utilisation": [x / easy_round for x in easy_busy]},
        "drafting_speedup": spec_draft / easy_draft,
        "draft_attention_share": draft.layers * seq / draft_fwd.bytes,  # of a sequential draft step's bytes
        "verify_bound": "compute" if verify.flops / (device.flops * eff.compute)
        > verify.bytes / (device.bandwidth * eff.bandwidth) else "memory",
        "plan": [list(p) for p in plan],
        "assumptions": {"setting": asdict(s), "device": asdict(device), "efficiency": asdict(eff),
                        "base": asdict(base), "draft": asdict(draft)},
    }


def round_spans(base: ModelShape, draft: ModelShape, device: Device, s: Setting,
                eff: Efficiency = FITTED) -> dict[str, tuple[Span, ...]]:
    """One simulated round of speculative and of easyspec decoding as per-device spans (records.Span, the
    timeline's input; times from the round's start): speculative drafts on device 0 while the others idle,
    then verifies on all; easyspec calibrates on every device, then each fuzzy step runs a group's
    attentions one per device, the all-gather and the group's MLPs on every device, then the verify. Each
    step's pieces are scaled to the step's modelled seconds, so that a round ends where `project` says."""
    mc, p = Machine(device, eff, s.cuda_graphs), project(base, draft, device, s, eff)
    g, k, c, b, width = s.devices, s.draft_len, s.context, s.batch, max(1, s.tree_width)
    out: dict[str, list[Span]] = {"speculative": [], "easyspec": []}

    def stage(mode: str, t: float, pieces: list[tuple[str, str, float, set[int] | None]], total: float) -> float:
        """Lay `pieces` (phase, label, seconds, devices running it: None = all) one after another from t,
        scaled to `total` seconds; a device a piece leaves out idles."""
        scale = total / max(sum(sec for _, _, sec, _ in pieces), 1e-15)
        for phase, label, sec, ranks in pieces:
            end = t + sec * scale
            for r in range(g):
                run = ranks is None or r in ranks
                out[mode].append(Span(phase if run else "idle", round(t * 1e9), round(end * 1e9), r, label))
            t = end
        return t

    def verify(mode: str, t: float) -> float:
        work = forward(base, 1 + k * s.tree_width if s.tree_width else k + 1, c, b, g)
        compute = mc.busy(work) + (work.replays * eff.replay_s if s.cuda_graphs else work.launches * eff.launch_s)
        return stage(mode, t, [("verify", "verify", compute, None),
                               ("verify.comm", "all-reduces", mc.seconds(work) - compute, None)], p[mode]["verify_s"])

    t, step = 0.0, p["speculative"]["draft_s"] / k
    for j in range(k):  # a sequential draft forward on device 0
        t = stage("speculative", t, [
            ("draft.attn", f"step {j + 1}: attention", mc.seconds(attention(draft, width, c, b).times(draft.layers)),
             {0}),
            ("draft.mlp", f"step {j + 1}: MLPs, LM head", mc.seconds(mlp(draft, width, b).times(draft.layers)
                                                                      + lm_head(draft, width, b) + Work(replays=1)),
             {0})], step)
    verify("speculative", t)
    t = stage("easyspec", 0.0, [("calibrate", "calibration", 1.0, None)], p["easyspec"]["calibrate_s"])
    middle = middle_layers(draft.layers, s.sequential_head, s.sequential_tail)
    plan = layer_groups(draft.layers, min(s.layer_parallel, middle), s.sequential_head, s.sequential_tail)
    fuzzy = (p["easyspec"]["draft_s"] - p["easyspec"]["calibrate_s"]) / max(1, k - 1)
    for j in range(k - 1):
        pieces = []
        for a, z in plan:
            n, attn = z - a, attention(draft, width, c, b)
            if n == 1 or g == 1:
                pieces += [("draft.attn", f"step {j + 2}: layers {a}-{z - 1} attention", mc.seconds(
                    replace(attn.times(n), launches=ATTN_KERNELS)), None),
                           ("draft.mlp", f"step {j + 2}: layers {a}-{z - 1} MLP", mc.seconds(mlp(draft, width, b)
                                                                                          .times(n)), None)]
            else:
                pieces += [("draft.attn", f"step {j + 2}: layers {a}-{z - 1}, one attention per device",
                            mc.seconds(attn), set(range(n))),
                           ("draft.comm", "all-gather", mc.seconds(all_gather(width * b * draft.hidden
                                                                              * draft.bytes_per_value, g)), None),
                           ("draft.mlp", f"step {j + 2}: layers {a}-{z - 1} MLPs", mc.seconds(mlp(draft, width, b)
                                                                                           .times(n)), None)]
        pieces.append(("draft.mlp", f"step {j + 2}: LM head", mc.seconds(lm_head(draft, width, b, sharded=False)
                                                                          + Work(replays=1)), None))
        t = stage("easyspec", t, pieces, fuzzy)
    verify("easyspec", t)
    return {mode: tuple(spans) for mode, spans in out.items()}


def project_pilot(runs, base: ModelShape, draft: ModelShape, device: Device, devices=(1, 2, 4, 8),
                  context: int = 1024, eff: Efficiency = FITTED, cuda_graphs: bool = True,
                  accepted_length: float | None = None) -> list[dict]:
    """Projected rows for a finished pilot (`pilot.PilotRun`s): AL of each setting measured by the pilot
    (or `accepted_length`, entered, for every mode), the shapes of its pair, the hardware model for `device`
    at each G."""
    by_mode: dict[str, list] = {}
    for run in runs:
        by_mode.setdefault(run.setting.config.mode, []).append(run)
    if not by_mode.get("easyspec") or not by_mode.get("speculative"):
        raise ValueError("the projection needs the pilot's speculative and easyspec runs (their accepted lengths)")

    def al(rs) -> float:
        rounds = [rec for r in rs for rec in r.records if rec.drafted]
        return sum(len(rec.token_ids) for rec in rounds) / max(1, len(rounds))

    spec = by_mode["speculative"]
    settings: dict[str, list] = {}
    for run in by_mode["easyspec"]:
        settings.setdefault(run.setting.label, []).append(run)
    rows = []
    for g in devices:
        for label, rs in settings.items():
            cfg = rs[0].setting.config
            n = cfg.layer_parallel or default_layer_parallel(g)
            k = cfg.draft_len or spec[0].setting.config.draft_len
            if n > g > 1:
                continue
            a_s, a_e = (min(max(1.0, accepted_length or al(x)), k + 1) for x in (spec, rs))
            p = project(base, draft, device, Setting(devices=g, context=context, draft_len=k, layer_parallel=n,
                                                     al_speculative=a_s, al_easyspec=a_e, cuda_graphs=cuda_graphs,
                                                     sequential_head=cfg.sequential_head,
                                                     sequential_tail=cfg.sequential_tail), eff)
            rows.append(projected_row(p, label, device))
    return rows


def projected_row(p: dict, label: str, device: Device) -> dict:
    """One table row of `project`'s result for a setting labelled `label`."""
    s = p["assumptions"]["setting"]
    return {"devices": p["devices"], "setting": label, "hardware": device.name,
            "vanilla_tokens_per_s": round(p["vanilla"]["tokens_per_s"], 3),
            "speculative_tokens_per_s": round(p["speculative"]["tokens_per_s"], 3),
            "easyspec_tokens_per_s": round(p["easyspec"]["tokens_per_s"], 3),
            "easyspec_speedup": round(p["easyspec"]["tokens_per_s"] / p["vanilla"]["tokens_per_s"], 3),
            "speculative_speedup": round(p["speculative"]["tokens_per_s"] / p["vanilla"]["tokens_per_s"], 3),
            "drafting_speedup": round(p["drafting_speedup"], 3),
            "accepted_length": f"{s['al_speculative']:.2f} / {s['al_easyspec']:.2f}",
            "speculative_utilisation": [round(u, 2) for u in p["speculative"]["utilisation"]],
            "easyspec_utilisation": [round(u, 2) for u in p["easyspec"]["utilisation"]],
            "setting_values": s}


def project_entered(base: ModelShape, draft: ModelShape, device: Device, devices: int, layer_parallel, draft_len: int,
                    accepted_length: float, context: int = 1024, cuda_graphs: bool = True,
                    eff: Efficiency = FITTED) -> list[dict]:
    """Projected rows without a pilot: an entered mean accepted length for every mode, one row per N
    (N > G skipped on G > 1: one attention per device)."""
    rows = []
    for n in layer_parallel:
        if n > devices > 1:
            continue
        s = Setting(devices=devices, context=context, draft_len=draft_len, layer_parallel=n,
                    al_speculative=accepted_length, al_easyspec=accepted_length, cuda_graphs=cuda_graphs)
        rows.append(projected_row(project(base, draft, device, s, eff), f"easyspec N={n} k={draft_len}", device))
    return rows


def session_shapes(session, bytes_per_value: int = 2) -> tuple[ModelShape, ModelShape]:
    """(base, draft) shapes of a loaded session's decoders; bf16 weights by default, as a GPU cluster runs them."""
    from .shapes import from_decoder

    width = bytes_per_value
    return (from_decoder(session.base.cfg, str(session.info.base), width),
            from_decoder(session.draft.cfg, str(session.info.draft), width))
