"""The reference pages point at real things: every test RELIABILITY.md and docs/ cite exists
(moved tests take their references with them), every page the README links is there, and no
page of docs/ is a lab notebook (issue numbers, dates)."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "RELIABILITY.md", ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CITED = re.compile(r"(tests/[\w/]+\.py)((?:::\w+)*)|`::(\w+)`")


def functions_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_cited_test_exists(page):
    text, last_file, missing = page.read_text(), None, []
    for m in CITED.finditer(text):
        if m.group(1):
            last_file = ROOT / m.group(1)
            if not last_file.is_file():
                missing.append(m.group(1))
                continue
            names = [n for n in m.group(2).split("::") if n]
        else:  # `::name`: a test of the file cited last
            names = [m.group(3)]
        if last_file is not None and last_file.is_file():
            missing += [f"{last_file.name}::{n}" for n in names if n not in functions_of(last_file)]
    assert not missing, f"{page.name} cites {missing}"


def test_the_readme_links_exist():
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)#:]+)\)", readme)
    assert links and all((ROOT / link).exists() for link in links), links


@pytest.mark.parametrize("page", sorted((ROOT / "docs").glob("*.md")), ids=lambda p: p.name)
def test_reference_pages_carry_no_history(page):
    text = page.read_text()
    assert not re.search(r"\b[Ii]ssue \d|\b20\d\d-\d\d-\d\d\b|\bas before\b", text)
