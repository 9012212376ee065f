"""The documentation: the site in docs/ builds without a warning, and the README stays a short
user's guide that links into it, free of what goes stale (commit hashes, load figures, dates)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_README_LINES = 260

MONTHS = (
    "January|February|March|April|May|June|July|August|September|October|November|December|"
    "Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec"
)
DATES = (
    re.compile(r"\b(?:19|20)\d\d-[01]\d-[0-3]\d\b"),  # 2026-11-28
    re.compile(rf"\b(?:{MONTHS})\.? (?:[0-3]?\d(?:st|nd|rd|th)?,? )?(?:19|20)\d\d\b"),
    re.compile(rf"\b[0-3]?\d(?:st|nd|rd|th)? (?:{MONTHS}) (?:19|20)\d\d\b"),
)
LOAD_FIGURES = re.compile(r"\bload(?: average| avg)?s?\s*(?:of|was|:|=)?\s*~?\d", re.IGNORECASE)
CODE_SPAN = re.compile(r"`+([^`]+)`+")
HEX_RUN = re.compile(r"(?<![0-9A-Za-z])[0-9a-f]{7,40}(?![0-9A-Za-z])")
FULL_HASH = re.compile(r"(?<![0-9A-Za-z])[0-9a-f]{40}(?![0-9A-Za-z])")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    """A broken link or anchor, a page missing from the nav, a link out of docs/: a warning,
    which --strict makes an error."""
    if importlib.util.find_spec("mkdocs") is None:
        pytest.fail("mkdocs is not installed: ./dev.sh test installs requirements-docs.lock")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet"]
        + ["--config-file", str(ROOT / "mkdocs.yml"), "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    pages = sorted(p.relative_to(ROOT / "docs") for p in (ROOT / "docs").rglob("*.md"))
    for page in pages:
        built = tmp_path / "site" / page.with_suffix("") / "index.html"
        if page.stem == "index":
            built = tmp_path / "site" / page.parent / "index.html"
        assert built.exists(), f"docs/{page} was not built"


def readme() -> str:
    return README.read_text(encoding="utf-8")


def test_the_readme_is_short() -> None:
    lines = readme().count("\n")
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines; move detail into docs/"


def test_the_readme_names_no_commit_hash() -> None:
    text = readme()
    in_code = [run for span in CODE_SPAN.findall(text) for run in HEX_RUN.findall(span)]
    hashes = [run for run in in_code if re.search(r"\d", run)] + FULL_HASH.findall(text)
    assert not hashes, f"README.md names commits {hashes}: they belong in benchmarks/README.md"


def test_the_readme_quotes_no_load_figure_and_no_date() -> None:
    text = readme()
    loads = [m.group(0) for m in LOAD_FIGURES.finditer(text)]
    assert not loads, f"README.md quotes load figures {loads}: see benchmarks/README.md"
    dates = [m.group(0) for pattern in DATES for m in pattern.finditer(text)]
    assert not dates, f"README.md holds dates {dates}: they go stale"


def test_the_readmes_links_lead_somewhere() -> None:
    for target in LINK.findall(readme()):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = target.split("#")[0]
        assert (ROOT / path).exists(), f"README.md links to {target}, which does not exist"
