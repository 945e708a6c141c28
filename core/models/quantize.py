"""Weight-only quantization of the draft: int8 per output channel, int4 group-wise, cached on disk.

What it is: the draft's precision (`--draft-dtype`, docs/method.md: the base verifies every token,
so the draft's precision can only cost acceptance, never correctness). `quantize_decoder` replaces
every linear of a loaded draft (q/k/v, o, gate/up, down, LM head) by a `QuantLinear` that runs
torch's packed kernels:
- int8: symmetric per-output-channel scales, `aten._weight_int8pack_mm` (CPU and CUDA).
- int4 (group 32) / int4-g128: asymmetric group-wise scales and zeros, `aten._weight_int4pack_mm_for_cpu`
  on CPU and `aten._weight_int4pack_mm` on CUDA (bf16 activations there). A layer whose input
  width is not a multiple of the group falls back to int8, and the fallback is logged with its reason.
Activations stay float (fp32 on CPU, bf16 on CUDA): the embedding, norms, biases, RoPE and the KV
cache are unchanged. The packed weights are computed once and kept under
$EASYSPEC_CACHE/quantized/<key>, the key a hash of the source checkpoint (config and weight files:
name, size, modification time) and the scheme; an entry whose checksum or contents do not match is
rebuilt. What it is not: quantization of the base (it stays exact) or activation quantization.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ..settings import QUANTIZED_DTYPES
from .offline_pair import QUANTIZED, cache_root, sha256_file

logger = logging.getLogger(__name__)

SCHEMES = {"int8": 0, "int4": 32, "int4-g128": 128}  # name -> int4 group size (0: int8 per channel)
assert tuple(SCHEMES) == QUANTIZED_DTYPES
LINEARS = ("wqkv", "wo", "w_gate_up", "w_down")  # stacked [L, out, in]; plus the LM head [vocab, D]


def activation_dtype(device: torch.device) -> torch.dtype:
    """The float type a quantized draft computes in: fp32 on CPU, bf16 on CUDA (the int4 kernel's)."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def _int4_ops(device: torch.device):
    """(convert, matmul) packed-int4 ops of this device, or a ValueError saying they are missing."""
    aten = torch.ops.aten
    if device.type == "cpu" and hasattr(aten, "_weight_int4pack_mm_for_cpu"):
        return aten._convert_weight_to_int4pack_for_cpu, aten._weight_int4pack_mm_for_cpu
    if device.type == "cuda" and hasattr(aten, "_weight_int4pack_mm"):
        return aten._convert_weight_to_int4pack, aten._weight_int4pack_mm
    raise ValueError(f"--draft-dtype int4 needs torch's packed int4 kernels, which this torch {torch.__version__} "
                     f"does not have on {device.type}; use --draft-dtype int8 or bfloat16")


@dataclass
class QuantLinear:
    """y = x W^T of one weight-only quantized linear; x [..., in] float -> [..., out] in x's dtype.

    int8: q [out, in] int8, scale [out]. int4: q packed by torch's converter, scale = scales and
    zeros [in / group, out, 2]; the kernel computes (q - 8) * scale + zero per group."""

    kind: str  # "int8" | "int4"
    q: torch.Tensor
    scale: torch.Tensor
    out_features: int
    in_features: int
    group: int = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        dtype = self.scale.dtype
        xin = x2 if x2.dtype == dtype else x2.to(dtype)
        if self.kind == "int8":
            y = torch.ops.aten._weight_int8pack_mm(xin, self.q, self.scale)
        else:
            y = _int4_ops(x.device)[1](xin, self.q, self.group, self.scale)
        return y.to(x.dtype).reshape(*shape[:-1], self.out_features)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"q": self.q, "scale": self.scale}

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors().values())


class QuantStack:
    """One quantized linear per layer, indexed like the stacked float weight it replaces: `w[i]`."""

    def __init__(self, layers: list[QuantLinear]):
        self.layers = layers

    def __getitem__(self, i: int) -> QuantLinear:
        return self.layers[i]

    def __len__(self) -> int:
        return len(self.layers)


def quantize_int8(w: torch.Tensor, act: torch.dtype) -> QuantLinear:
    """Symmetric per-output-channel int8 of w [out, in] (computed in fp32)."""
    wf = w.float()
    scale = (wf.abs().amax(dim=1) / 127.0).clamp(min=1e-12)  # [out]
    q = torch.round(wf / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return QuantLinear("int8", q.contiguous(), scale.to(act), w.shape[0], w.shape[1])


def quantize_int4(w: torch.Tensor, group: int, act: torch.dtype) -> QuantLinear:
    """Asymmetric group-wise int4 of w [out, in] (in % group == 0), packed for this device's kernel."""
    out_f, in_f = w.shape
    wg = w.float().reshape(out_f, in_f // group, group)
    lo, hi = wg.amin(-1), wg.amax(-1)  # [out, G]
    scale = ((hi - lo) / 15.0).clamp(min=1e-12)
    q = torch.round((wg - lo[..., None]) / scale[..., None]).clamp(0, 15).to(torch.int32).reshape(out_f, in_f)
    zero = lo + 8.0 * scale  # the kernels dequantize as (q - 8) * scale + zero
    convert, _ = _int4_ops(w.device)
    if w.device.type == "cpu":
        packed = convert(q.contiguous(), 1)
    else:  # CUDA takes two 4-bit values per byte, [out, in / 2] uint8
        packed = convert((q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8).contiguous(), 8)
    scales_zeros = torch.stack([scale, zero], dim=-1).transpose(0, 1).contiguous().to(act)  # [G, out, 2]
    return QuantLinear("int4", packed, scales_zeros, out_f, in_f, group)


def quantize_weight(w: torch.Tensor, scheme: str, act: torch.dtype, name: str) -> QuantLinear:
    group = SCHEMES[scheme]
    if group and w.shape[1] % group:
        logger.warning("%s: %d input channels are not a multiple of the int4 group size %d: int8 for this layer",
                       name, w.shape[1], group)
        group = 0
    return quantize_int4(w, group, act) if group else quantize_int8(w, act)


# -- the on-disk cache -------------------------------------------------------------------------
def cache_key(folder: Path, scheme: str, device: torch.device) -> str:
    """The source checkpoint (config, weight files' names, sizes and times) and the scheme and device
    (the packed int4 layout differs between CPU and CUDA)."""
    h = hashlib.sha256(f"{scheme}:{device.type}:v1".encode())
    h.update(Path(folder, "config.json").read_bytes())
    for f in sorted(Path(folder).glob("*.safetensors")) + sorted(Path(folder).glob("*.bin")):
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:20]


def cache_dir(key: str) -> Path:
    return cache_root() / QUANTIZED / key


def _flatten(layers: dict[str, QuantLinear]) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, meta = {}, {}
    for name, ql in layers.items():
        for part, t in ql.tensors().items():
            tensors[f"{name}.{part}"] = t.contiguous().cpu()
        meta[name] = {"kind": ql.kind, "out": ql.out_features, "in": ql.in_features, "group": ql.group}
    return tensors, meta


def save_cache(folder: Path, layers: dict[str, QuantLinear], scheme: str) -> None:
    from safetensors.torch import save

    from ..files import atomic_writer, write_text_atomic

    folder.mkdir(parents=True, exist_ok=True)
    tensors, meta = _flatten(layers)
    with atomic_writer(folder / "weights.safetensors", "wb") as f:
        f.write(save(tensors))
    write_text_atomic(folder / "meta.json", json.dumps(
        {"scheme": scheme, "layers": meta, "sha256": sha256_file(folder / "weights.safetensors")}))


def load_cache(folder: Path, scheme: str, device: torch.device) -> dict[str, QuantLinear] | None:
    """The cached layers, or None when the entry is missing, incomplete or does not match its checksum."""
    from safetensors.torch import load_file

    try:
        meta = json.loads((folder / "meta.json").read_text())
        if meta["scheme"] != scheme or sha256_file(folder / "weights.safetensors") != meta["sha256"]:
            return None
        tensors = load_file(folder / "weights.safetensors", device=str(device))
        return {name: QuantLinear(m["kind"], tensors[f"{name}.q"], tensors[f"{name}.scale"], m["out"], m["in"],
                                  m["group"]) for name, m in meta["layers"].items()}
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        if (folder / "meta.json").exists():
            logger.warning("quantized cache %s is unreadable (%s): rebuilding it", folder, exc)
        return None


# -- the draft ---------------------------------------------------------------------------------
def _float_linears(w) -> dict[str, torch.Tensor]:
    out = {f"{name}.{i}": getattr(w, name)[i] for name in LINEARS for i in range(getattr(w, name).shape[0])}
    out["lm_head"] = w.lm_head
    return out


def quantize_decoder(decoder, scheme: str, folder: Path | None = None):
    """A Decoder like `decoder` (float weights, any float dtype) whose linears are `scheme`-quantized;
    from the cache beside the checkpoint `folder` when it holds a valid entry, else computed (and saved
    there). Norms, embedding and biases stay float in the activation dtype."""
    from ..engine.decoder import Decoder

    device = decoder.device
    if SCHEMES[scheme]:
        _int4_ops(device)  # refuse now, with the reason, if this device has no int4 kernels
    act = activation_dtype(device)
    entry = cache_dir(cache_key(folder, scheme, device)) if folder is not None else None
    layers = load_cache(entry, scheme, device) if entry is not None else None
    expected = _float_linears(decoder.w)
    if layers is not None and set(layers) != set(expected):
        logger.warning("quantized cache %s does not match the model's layers: rebuilding it", entry)
        layers = None
    if layers is None:
        layers = {name: quantize_weight(t, scheme, act, name) for name, t in expected.items()}
        if entry is not None:
            try:
                save_cache(entry, layers, scheme)
            except OSError as exc:  # a read-only cache still runs, it only recomputes next time
                logger.warning("could not save the quantized draft to %s (%s)", entry, exc)
    w = decoder.w

    def cast(t):
        return None if t is None else t.to(act)

    qw = replace(
        w, embed=cast(w.embed), bqkv=cast(w.bqkv), bo=cast(w.bo), norm_in=cast(w.norm_in),
        norm_post=cast(w.norm_post), b_gate_up=cast(w.b_gate_up), b_down=cast(w.b_down), norm=cast(w.norm),
        q_norm=cast(w.q_norm), k_norm=cast(w.k_norm), norm_attn_out=cast(w.norm_attn_out),
        norm_mlp_out=cast(w.norm_mlp_out),
        lm_head=layers["lm_head"],
        **{name: QuantStack([layers[f"{name}.{i}"] for i in range(len(getattr(w, name)))]) for name in LINEARS})
    return Decoder(decoder.cfg, qw)


def weight_bytes(decoder) -> int:
    """Bytes of a decoder's linear weights (quantized or float): what one drafting step streams."""
    total = 0
    w = decoder.w
    for item in [getattr(w, n) for n in LINEARS] + [w.lm_head]:
        if isinstance(item, QuantStack):
            total += sum(layer.nbytes() for layer in item.layers)
        elif isinstance(item, QuantLinear):
            total += item.nbytes()
        else:
            total += item.numel() * item.element_size()
    return total
