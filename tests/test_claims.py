"""docs/CLAIMS.md, the table of README claims and the tests that guard them, stays true to
the test suite: every test it names exists, and every claim names a test or says "gap:".

The test files are read with ``ast``, never imported (fast, and a test module's imports
do not matter here)."""

from __future__ import annotations

import ast
import re
from functools import lru_cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLAIMS = REPO / "docs" / "CLAIMS.md"
REFERENCE = re.compile(r"\btests/[\w/]+\.py::\w+")


def _rows() -> list[tuple[int, str, str]]:
    """(line number, claim, guarded-by cell) of every table row below a header row."""
    rows = []
    for number, line in enumerate(CLAIMS.read_text(encoding="utf-8").splitlines(), 1):
        if not line.startswith("|") or re.fullmatch(r"\|[\s|:-]+\|", line):
            continue                                       # not a row, or a |---| rule
        cells = [c.strip() for c in re.split(r"\s\|\s", line.strip().strip("|"))]
        if cells == ["claim", "guarded by"]:
            continue
        assert len(cells) == 2 and all(cells), f"docs/CLAIMS.md:{number}: not a 2-cell row"
        rows.append((number, cells[0], cells[1]))
    return rows


@lru_cache(maxsize=None)
def _top_level_names(path: Path) -> frozenset[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return frozenset(node.name for node in tree.body
                     if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)))


def test_the_table_is_not_empty_and_every_claim_is_guarded_or_a_gap():
    rows = _rows()
    assert len(rows) >= 50, f"only {len(rows)} claims in docs/CLAIMS.md"
    bare = [f"docs/CLAIMS.md:{n}: {claim}" for n, claim, guard in rows
            if not guard.startswith("gap:") and not REFERENCE.search(guard)]
    assert bare == [], "claims with neither a test nor 'gap:':\n" + "\n".join(bare)
    empty_gaps = [f"docs/CLAIMS.md:{n}" for n, _, guard in rows
                  if guard.startswith("gap:") and len(guard) < len("gap: ") + 10]
    assert empty_gaps == [], f"a gap must say why: {empty_gaps}"


def test_every_listed_test_exists():
    text = CLAIMS.read_text(encoding="utf-8")
    references = sorted(set(REFERENCE.findall(text)))
    assert references, "docs/CLAIMS.md names no test"
    missing = []
    for reference in references:
        file, name = reference.split("::")
        path = REPO / file
        if not path.is_file():
            missing.append(f"{reference}: no file {file}")
        elif name not in _top_level_names(path):
            missing.append(f"{reference}: {file} defines no test or class {name}")
    assert missing == [], "docs/CLAIMS.md names tests that do not exist:\n" + "\n".join(missing)


def test_every_readme_section_has_its_table_section():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    claims = CLAIMS.read_text(encoding="utf-8")
    sections = re.findall(r"^## (.+)$", readme, flags=re.M)
    assert sections
    missing = [s for s in sections if f"\n## {s}\n" not in claims]
    assert missing == [], f"README sections without a section in docs/CLAIMS.md: {missing}"
