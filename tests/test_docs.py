"""Every reference to documentation can be followed from this repository alone.

The method and the conventions live in `docs/`; code, tests, assets and results cite them as
`docs/<page>.md#<section>`. These tests fail when a file points to notes outside the repository, when
a cited page does not exist, or when a cited section is not a heading of that page (GitHub's
anchor rule, as the links render on GitHub).
"""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
# Notes that are not part of the repository (names built here so that this file does not cite them).
OUTSIDE = (*(name + ".md" for name in ("EASYSPEC", "ANCHORS", "MODELS", "HOUSE_STYLE")), "/work/" + "shared")
DOC_REF = re.compile(r"docs/([\w.-]+\.md)(?:#([\w-]+))?")
MD_LINK = re.compile(r"\]\(([\w.-]*\.md)?(?:#([\w-]+))?\)")  # [text](page.md#anchor) or [text](#anchor)
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")


def repo_files() -> list[Path]:
    """Tracked and new (not ignored) text files, or every file when this is not a git checkout."""
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                             cwd=ROOT, capture_output=True, check=True, text=True).stdout
        paths = [ROOT / p for p in out.split("\0") if p]
    except (OSError, subprocess.CalledProcessError):
        skip = {".git", ".venv", ".shim", "__pycache__"}
        paths = [p for p in ROOT.rglob("*") if not skip.intersection(p.relative_to(ROOT).parts)]
    return [p for p in paths if p.is_file() and not p.is_symlink()]


def text_of(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return None  # binary (screenshots) or unreadable: nothing to cite from


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lower case, punctuation removed, spaces to '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text stays, its target goes
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading anchor of a Markdown page (repeated headings get -1, -2, ... as on GitHub)."""
    seen: dict[str, int] = {}
    out: set[str] = set()
    fenced = False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        m = None if fenced else HEADING.match(line)
        if m:
            base = slug(m.group(2))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


def references() -> list[tuple[str, str, str | None]]:
    """(where, page under docs/, anchor or None) for every documentation reference in the repository."""
    refs = []
    for path in repo_files():
        text = text_of(path)
        if text is None:
            continue
        rel = path.relative_to(ROOT).as_posix()
        for lineno, line in enumerate(text.splitlines(), 1):
            for m in DOC_REF.finditer(line):
                refs.append((f"{rel}:{lineno}", m.group(1), m.group(2)))
            if rel.startswith("docs/") and rel.endswith(".md"):  # links relative to the page itself
                for m in MD_LINK.finditer(line):
                    refs.append((f"{rel}:{lineno}", m.group(1) or Path(rel).name, m.group(2)))
    return refs


def test_slug_follows_github():
    assert slug("Bonus calibration") == "bonus-calibration"
    assert slug("Why layer-parallel drafting") == "why-layer-parallel-drafting"
    assert slug("The `easyspec` command (vocabulary of `x.md`)") == "the-easyspec-command-vocabulary-of-xmd"
    assert slug("What the paper reports, in short!") == "what-the-paper-reports-in-short"


def test_no_file_points_outside_the_repository():
    bad = []
    for path in repo_files():
        text = text_of(path)
        if text is None:
            continue
        for lineno, line in enumerate(text.splitlines(), 1):
            if any(name in line for name in OUTSIDE):
                bad.append(f"{path.relative_to(ROOT).as_posix()}:{lineno}: {line.strip()[:100]}")
    assert not bad, "references to notes outside the repository (cite docs/ instead):\n" + "\n".join(bad)


def test_docs_pages_exist():
    for page in ("README.md", "method.md", "conventions.md"):
        assert (DOCS / page).is_file(), f"docs/{page} is missing"


def test_every_docs_reference_resolves():
    refs = references()
    outside_docs = [r for r in refs if not r[0].startswith("docs/")]
    assert len(outside_docs) >= 20, f"expected the code to cite docs/ throughout; found {len(outside_docs)}"
    known = {p.name: anchors(p) for p in DOCS.glob("*.md")}
    bad = [f"{where}: docs/{page}" + (f"#{anchor}" if anchor else "") + (
        " (no such page)" if page not in known else " (no such heading)")
        for where, page, anchor in refs if page not in known or (anchor and anchor not in known[page])]
    assert not bad, "documentation references that do not resolve:\n" + "\n".join(bad)


@pytest.mark.parametrize("section", ["vocabulary", "fuzzy-layer-parallel-groups", "grouping", "bonus-calibration",
                                     "calibration-policies", "multi-device-form", "single-device-form",
                                     "lossless-verification", "token-trees", "adaptive-draft-length",
                                     "what-the-paper-reports"])
def test_method_covers(section):
    assert section in anchors(DOCS / "method.md")


@pytest.mark.parametrize("section", ["per-round-record", "phases", "clock", "stopping", "ties", "metrics",
                                     "per-position-acceptance", "speedup", "peers", "chrome-trace-format",
                                     "offline-pair"])
def test_conventions_cover(section):
    assert section in anchors(DOCS / "conventions.md")
