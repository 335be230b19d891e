"""The layering contracts of pyproject.toml: kept by facestream, and able to break.

``./dev test`` runs ``lint-imports`` before the suite; these tests run the same contracts
on a small package built to break each of them, so a contract that silently checks nothing
(a misspelt layer, a custom contract type that finds nothing) fails here.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def lint(config: Path, *, pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = f"{pythonpath}{os.pathsep}{env.get('PYTHONPATH', '')}"
    return subprocess.run([str(LINT), "--no-cache", "--config", str(config)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)


def test_facestream_keeps_its_contracts():
    result = lint(REPO / "pyproject.toml")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


def test_each_contract_breaks_on_the_import_it_forbids(tmp_path):
    """The project's contracts, pointed at package ``toy`` whose layers are the same shape:
    one upward import, one cycle inside a package, one private name taken across packages
    and one private module imported from outside its package."""
    _write(tmp_path / "src", {
        "toy/__init__.py": "",
        "toy/top/__init__.py": "",
        "toy/top/a.py": "from toy.low._hidden import thing\n",
        "toy/low/__init__.py": "",
        "toy/low/b.py": "from toy.top import a\nfrom toy.low.c import x\n",
        "toy/low/c.py": "from toy.low import b\nx = 1\n",
        "toy/low/_hidden.py": "thing = 1\n",
        "toy/low/d.py": "_secret = 1\n",
        "toy/top/e.py": "from toy.low.d import _secret\n",
    })
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    kinds = {c["type"] for c in project["contracts"]}
    assert kinds == {"layers", "acyclic_siblings", "private_names", "private_modules"}
    config = tmp_path / "contracts.toml"
    config.write_text(textwrap.dedent(f"""
        [tool.importlinter]
        root_package = "toy"
        contract_types = {project["contract_types"]!r}

        [[tool.importlinter.contracts]]
        name = "layers"
        type = "layers"
        containers = ["toy"]
        exhaustive = true
        layers = ["top", "low"]

        [[tool.importlinter.contracts]]
        name = "acyclic"
        type = "acyclic_siblings"
        ancestors = ["toy"]

        [[tool.importlinter.contracts]]
        name = "private names"
        type = "private_names"
        root = "toy"

        [[tool.importlinter.contracts]]
        name = "private modules"
        type = "private_modules"
        """))
    result = lint(config, pythonpath=tmp_path / "src")
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    assert "0 kept, 4 broken" in out, out
    assert "toy.low.b -> toy.top.a" in out                      # runs up the layers
    assert ".b -> .c" in out or ".c -> .b" in out               # a cycle inside toy.low
    assert "toy.top.e (l.1) takes _secret from" in out          # a private name
    assert "toy.top.a -> toy.low._hidden" in out                # a private module
