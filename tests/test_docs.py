"""Every reference to documentation can be followed from this repository alone, and the README's map
names every module.

The method and the conventions live in `docs/`; code, tests, assets and results cite them as
`docs/<page>.md#<section>`. These tests fail when a file points to notes outside the repository, when
a cited page does not exist, or when a cited section is not a heading of that page (GitHub's
anchor rule, as the links render on GitHub). The map in README.md ("What is here") names every
module under its folder, one line each, and every module has a docstring.
"""
from __future__ import annotations

import ast
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
MODULE_FOLDERS = ("core", "app", "visualizations", "benchmarks")


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


def map_of_readme() -> dict[str, list[list[str]]]:
    """folder -> the names on each of its lines in README.md's "What is here" (`- `core/`:` then
    `  - `decoder.py`: what it is`)."""
    section = (ROOT / "README.md").read_text(encoding="utf-8").split("\n## What is here\n", 1)[1].split("\n## ", 1)[0]
    folders: dict[str, list[list[str]]] = {}
    folder = None
    for line in section.splitlines():
        if m := re.match(r"- `([\w/]+)/`", line):
            folder = m.group(1)
            folders[folder] = []
        elif folder and (m := re.match(r"  - (.+?): ", line)):
            folders[folder].append(re.findall(r"`([^`]+)`", m.group(1)))
    return folders


def files_under(folder: str) -> list[str]:
    """The repository's files under `folder`, relative to it (caches and __init__.py left out)."""
    paths = [p.relative_to(ROOT / folder).as_posix() for p in repo_files()
             if p.is_relative_to(ROOT / folder) and "__pycache__" not in p.parts]
    return sorted(p for p in paths if Path(p).name != "__init__.py")


def mapped(folder: str) -> list[str]:
    """What the map should name under `folder`: every module; in tests/ the helpers, not the test
    files; in assets/ every file."""
    files = files_under(folder)
    if folder == "assets":
        return files
    return [f for f in files if f.endswith(".py") and not (folder == "tests" and Path(f).name.startswith("test_"))]


@pytest.mark.parametrize("folder", [*MODULE_FOLDERS, "tests", "assets"])
def test_readme_map_names_every_module_under_its_folder(folder):
    lines = map_of_readme().get(folder)
    assert lines is not None, f"README.md's map has no line for {folder}/"
    named = [name for names in lines for name in names]
    expected = mapped(folder)
    assert len(expected) >= (2 if folder == "tests" else 4), expected
    missing, stale = sorted(set(expected) - set(named)), sorted(set(named) - set(expected))
    assert not missing and not stale, f"{folder}/: not in README.md's map: {missing}; named there but absent: {stale}"
    if folder != "assets":
        assert all(len(names) == 1 for names in lines), f"{folder}/: one module a line: {lines}"
        assert len(named) == len(set(named)), f"{folder}/: named twice: {named}"


def test_every_module_has_a_docstring():
    modules = [f"{folder}/{name}" for folder in MODULE_FOLDERS for name in files_under(folder) if name.endswith(".py")]
    modules += [f"{folder}/__init__.py" for folder in ("core", "app", "visualizations")]
    modules += [f"tests/{name}" for name in mapped("tests")]
    assert len(modules) > 60, modules
    bare = [m for m in modules if not ast.get_docstring(ast.parse((ROOT / m).read_text(encoding="utf-8")))]
    assert not bare, f"modules without a docstring (say what each is and is not): {bare}"


def test_the_map_parser_reads_folders_and_modules():
    folders = map_of_readme()
    assert ["engine/decoder.py"] in folders["core"] and ["cli.py"] in folders["app"], folders
