"""The tuning cache: one tuned result per model pair on disk, where `--groups auto` finds it.

What it is: the pair's key (both models' configs, their weight files' sizes and the dtype), the
path under the cache root, an atomic save, and a load that reads a file again only when it
changed (every run resolves its expectation through here). What it is not: the tuning itself
(`tune.py`) or how a run uses the result (`planning.plan_run`).
"""
from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

from ..files import write_text_atomic
from .types import TuneResult


def pair_key(base_dir: Path, draft_dir: Path, dtype: str) -> str:
    """A key of both models' configs (and the dtype): a re-tuned or different pair gets a new key."""
    h = hashlib.sha256(dtype.encode())
    for folder in (base_dir, draft_dir):
        h.update(Path(folder, "config.json").read_bytes())
        for f in sorted(Path(folder).glob("*.safetensors")):
            h.update(f"{f.name}:{f.stat().st_size}".encode())
    return h.hexdigest()[:16]


def tuning_path(key: str) -> Path:
    from ..models.offline_pair import cache_root

    return cache_root() / "tuning" / f"{key}.json"


def save_tuning(result: TuneResult, key: str) -> Path:
    """Write to a temporary name, then rename: a reader never sees half a file."""
    path = tuning_path(key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(result.as_dict(), indent=1))
    except OSError as e:
        raise ValueError(f"cannot save the tuned plan under {path.parent} ({e.strerror}); "
                         f"set EASYSPEC_CACHE to a writable folder") from e
    return path


def load_tuning(key: str) -> TuneResult | None:
    """The cached tuning of a pair, re-read only when its file changed (every run resolves through here)."""
    path = tuning_path(key)
    try:
        st = path.stat()
    except OSError:
        return None
    return _read(path, (st.st_ino, st.st_mtime_ns, st.st_size))  # save_tuning renames a new file in: a new inode


# Keyed by the file's stamp, so a changed file is a new entry; a session holds one pair, and the
# stamps of a file since replaced are never asked for again, so a few entries suffice.
@functools.lru_cache(maxsize=16)
def _read(path: Path, stamp: tuple[int, int, int]) -> TuneResult | None:
    try:
        return TuneResult.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None  # an unreadable cache entry counts as no tuning; the next tune overwrites it
