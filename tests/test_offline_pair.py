"""Tests for easyspec.core.models.offline_pair with fake piece packages and a fake converter (no models)."""
import hashlib
import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest

from easyspec.core.models import offline_pair as op

_ids = itertools.count()


def make_pieces(root: Path, monkeypatch, chunks: list[bytes]) -> str:
    """Installs fake piece packages `<prefix>1..N` under `root`; returns the module prefix."""
    prefix = f"fake_pieces_{os.getpid()}_{next(_ids)}_part"  # unique: sys.modules caches imports
    for i, chunk in enumerate(chunks, start=1):
        pkg = root / "site" / f"{prefix}{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "data" / f"part{i:02d}.bin").write_bytes(chunk)
        (pkg / "__init__.py").write_text(
            "import os\n"
            "def get_part_path():\n"
            f"    return os.path.join(os.path.dirname(__file__), 'data', 'part{i:02d}.bin')\n")
    monkeypatch.syspath_prepend(str(root / "site"))
    return prefix


CHUNKS = [b"GGUF" + bytes(range(256)) * 3, b"middle piece " * 50, b"tail"]
JOINED = b"".join(CHUNKS)


def fake_spec(prefix: str, sha256: str | None = None, n: int = len(CHUNKS)) -> op.GgufModelSpec:
    return op.GgufModelSpec("Fake-0.1B", prefix, n, sha256 or hashlib.sha256(JOINED).hexdigest(),
                            "fake.gguf")


class FakeConverter:
    """Stands in for convert_gguf: records the gguf bytes it saw and writes a tiny folder."""

    def __init__(self):
        self.seen: list[bytes] = []

    def __call__(self, gguf_path: Path, out_dir: Path, progress) -> None:
        self.seen.append(gguf_path.read_bytes())
        for f in ("config.json", "generation_config.json", "tokenizer.json",
                  "tokenizer_config.json"):
            (out_dir / f).write_text("{}")
        (out_dir / "model.safetensors").write_bytes(b"\0" * 64)


def must_not_convert(*args, **kwargs):
    pytest.fail("convert_gguf was called on an unverified or unneeded file")


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("EASYSPEC_CACHE", str(root))
    return root


def test_cache_root_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("EASYSPEC_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert op.cache_root() == tmp_path / "home" / ".cache" / "easyspec"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert op.cache_root() == tmp_path / "xdg" / "easyspec"
    monkeypatch.setenv("EASYSPEC_CACHE", str(tmp_path / "mine"))
    assert op.cache_root() == tmp_path / "mine"


def test_import_has_no_side_effects(tmp_path):
    env = {**os.environ, "EASYSPEC_CACHE": str(tmp_path / "never")}
    code = "import os, easyspec.core.models.offline_pair as m; print(sorted(os.environ) == sorted(E))"
    out = subprocess.run([sys.executable, "-c", f"import os; E = dict(os.environ); {code}"],
                         env=env, capture_output=True, text=True, check=True)
    assert out.stdout == "True\n" and out.stderr == ""
    assert not (tmp_path / "never").exists()


def test_join_verify_convert_then_fast_path(tmp_path, cache, monkeypatch):
    spec = fake_spec(make_pieces(tmp_path, monkeypatch, CHUNKS))
    fake, messages = FakeConverter(), []
    monkeypatch.setattr(op, "convert_gguf", fake)
    dest = op.ensure_model(spec, cache / "fake" / "draft", messages.append)

    assert fake.seen == [JOINED]  # the converter got exactly the joined, verified bytes
    assert (dest / op.MARKER).read_text().strip() == spec.sha256
    assert {"config.json", "model.safetensors", "generation_config.json"} <= {
        p.name for p in dest.iterdir()}
    assert not (cache / "gguf" / "fake.gguf").exists()  # deleted after conversion
    assert [p.name for p in (cache / "fake").iterdir()] == ["draft"]  # no temp folder left
    assert any(m.startswith("joining") and f"/{len(JOINED) / 1e6:.0f} MB" in m for m in messages)

    # Fast path: no joining or hashing, even with the pieces gone.
    monkeypatch.setattr(op, "convert_gguf", must_not_convert)
    monkeypatch.setattr(op, "sha256_file", must_not_convert)
    monkeypatch.setattr(op, "piece_paths", must_not_convert)
    assert op.ensure_model(spec, dest, messages.append) == dest


def test_corrupt_joined_file_is_deleted_and_rejoined(tmp_path, cache, monkeypatch):
    spec = fake_spec(make_pieces(tmp_path, monkeypatch, CHUNKS))
    (cache / "gguf").mkdir(parents=True)
    (cache / "gguf" / "fake.gguf").write_bytes(JOINED[:-1] + b"X")
    fake, messages = FakeConverter(), []
    monkeypatch.setattr(op, "convert_gguf", fake)
    op.ensure_model(spec, cache / "fake" / "base", messages.append)
    assert fake.seen == [JOINED]
    assert any("mismatch" in m for m in messages)


def test_good_joined_file_is_reused_without_rejoining(tmp_path, cache, monkeypatch):
    spec = fake_spec(make_pieces(tmp_path, monkeypatch, CHUNKS))
    (cache / "gguf").mkdir(parents=True)
    (cache / "gguf" / "fake.gguf").write_bytes(JOINED)
    monkeypatch.setattr(op, "join_pieces", must_not_convert)
    fake = FakeConverter()
    monkeypatch.setattr(op, "convert_gguf", fake)
    op.ensure_model(spec, cache / "fake" / "base", lambda m: None)
    assert fake.seen == [JOINED]


@pytest.mark.parametrize("preexisting", [False, True])
def test_wrong_pieces_raise_and_nothing_is_loaded(tmp_path, cache, monkeypatch, preexisting):
    spec = fake_spec(make_pieces(tmp_path, monkeypatch, CHUNKS), sha256="0" * 64)
    if preexisting:
        (cache / "gguf").mkdir(parents=True)
        (cache / "gguf" / "fake.gguf").write_bytes(b"garbage")
    monkeypatch.setattr(op, "convert_gguf", must_not_convert)
    with pytest.raises(op.OfflinePairError, match="sha256") as err:
        op.ensure_model(spec, cache / "fake" / "draft", lambda m: None)
    assert isinstance(err.value, ValueError)
    assert hashlib.sha256(JOINED).hexdigest() in str(err.value)
    assert list((cache / "gguf").iterdir()) == []  # no bad or partial file is kept
    assert not (cache / "fake" / "draft").exists()


def test_missing_piece_module_gives_install_hint(tmp_path, cache, monkeypatch):
    prefix = make_pieces(tmp_path, monkeypatch, CHUNKS)
    spec = fake_spec(prefix, n=len(CHUNKS) + 1)  # piece 4 is not installed
    monkeypatch.setattr(op, "convert_gguf", must_not_convert)
    with pytest.raises(op.OfflinePairError, match=rf"{prefix}4.*easyspec-studio\[offline-pair\]"):
        op.ensure_model(spec, cache / "fake" / "draft", lambda m: None)
    assert list((cache / "gguf").iterdir()) == []  # nothing joined when a piece is missing


def test_unwritable_cache_root(tmp_path, monkeypatch):
    # Tests run as root, so chmod cannot make a folder unwritable; a path under a regular file
    # can never be created.
    (tmp_path / "a_file").write_text("not a folder")
    bad = tmp_path / "a_file" / "cache"
    monkeypatch.setenv("EASYSPEC_CACHE", str(bad))
    monkeypatch.setattr(op, "convert_gguf", must_not_convert)
    with pytest.raises(op.OfflinePairError, match="EASYSPEC_CACHE") as err:
        op.ensure_offline_pair("qwen2.5-coder", progress=lambda m: None)
    assert str(bad) in str(err.value)


def test_failed_conversion_leaves_no_visible_folder(tmp_path, cache, monkeypatch):
    spec = fake_spec(make_pieces(tmp_path, monkeypatch, CHUNKS))

    def crash(gguf_path, out_dir, progress):
        (out_dir / "config.json").write_text("{}")
        raise RuntimeError("out of memory")

    monkeypatch.setattr(op, "convert_gguf", crash)
    with pytest.raises(RuntimeError):
        op.ensure_model(spec, cache / "fake" / "draft", lambda m: None)
    assert list((cache / "fake").iterdir()) == []  # neither dest nor the temp folder
    assert (cache / "gguf" / "fake.gguf").read_bytes() == JOINED  # kept for the retry


def test_unknown_pair_name(cache):
    with pytest.raises(ValueError, match="qwen2.5-coder"):
        op.ensure_offline_pair("no-such-pair")


def test_offline_pair_fast_path_touches_no_pieces(cache, monkeypatch):
    pair = op.OFFLINE_PAIRS["qwen2.5-coder"]
    for role, spec in (("draft", pair.draft), ("base", pair.base)):
        (cache / "qwen2.5-coder" / role).mkdir(parents=True)
        (cache / "qwen2.5-coder" / role / op.MARKER).write_text(spec.sha256 + "\n")
    monkeypatch.setattr(op, "piece_paths", must_not_convert)
    monkeypatch.setattr(op, "convert_gguf", must_not_convert)
    assert op.ensure_offline_pair("qwen2.5-coder") == (
        cache / "qwen2.5-coder" / "draft", cache / "qwen2.5-coder" / "base")


def test_stale_marker_is_not_complete(cache):
    spec = op.OFFLINE_PAIRS["qwen2.5-coder"].draft
    (cache / "d").mkdir(parents=True)
    (cache / "d" / op.MARKER).write_text("0" * 64)
    assert not op.is_complete(cache / "d", spec)


def test_cache_info_and_clear_cache(tmp_path, cache):
    draft, base, gguf = cache / "qwen2.5-coder" / "draft", cache / "qwen2.5-coder" / "base", \
        cache / "gguf"
    for d in (draft, base, gguf):
        d.mkdir(parents=True)
    (draft / "model.safetensors").write_bytes(b"\0" * 100)
    (draft / op.MARKER).write_text("x" * 10)
    (base / "config.json").write_bytes(b"\0" * 50)  # interrupted: no marker
    (gguf / "m.gguf").write_bytes(b"\0" * 30)
    quantized = cache / "quantized"
    (quantized / "k1").mkdir(parents=True)  # a whole entry (quantize.save_cache) and one cut short
    (quantized / "k1" / "weights.safetensors").write_bytes(b"\0" * 40)
    (quantized / "k1" / "meta.json").write_text("{}")
    (quantized / "k2").mkdir()
    (quantized / "k2" / "weights.safetensors").write_bytes(b"\0" * 8)
    (cache / "other_tool").mkdir()  # not ours: must survive clear_cache
    (cache / "other_tool" / "notes.txt").write_text("1234567")
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"\0" * 9)

    info = op.cache_info()
    assert info["root"] == str(cache) and info["exists"] and info["total_bytes"] == 240
    by_name = {e["name"]: e for e in info["entries"]}
    assert by_name == {
        "gguf/m.gguf": {"name": "gguf/m.gguf", "path": str(gguf / "m.gguf"), "bytes": 30,
                        "complete": True},
        "qwen2.5-coder/base": {"name": "qwen2.5-coder/base", "path": str(base), "bytes": 50,
                               "complete": False},
        "qwen2.5-coder/draft": {"name": "qwen2.5-coder/draft", "path": str(draft),
                                "bytes": 110, "complete": True},
        "quantized/k1": {"name": "quantized/k1", "path": str(quantized / "k1"), "bytes": 42, "complete": True},
        "quantized/k2": {"name": "quantized/k2", "path": str(quantized / "k2"), "bytes": 8, "complete": False},
    }

    assert op.clear_cache() == 240
    assert [p.name for p in cache.iterdir()] == ["other_tool"]
    assert outside.read_bytes() == b"\0" * 9
    assert op.clear_cache() == 0


def test_cache_info_without_cache(cache):
    assert op.cache_info() == {"root": str(cache), "exists": False, "total_bytes": 0,
                               "entries": []}
