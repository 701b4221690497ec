"""ARCHITECTURE.md names modules and functions: each must exist, so a rename that forgets the page fails here."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# `agent/link.py` or `agent/link.py:ControllerLink._handle` inside backticks.
REF = re.compile(r"`((?:agent|controller|core|proto|cli)/[\w/]+\.py)(?::([\w.]+))?`")


def _defined(tree: ast.Module, dotted: str) -> bool:
    """A top-level class, function or assignment, then members of a class for each further part."""
    body: list[ast.stmt] = tree.body
    for part in dotted.split("."):
        found = None
        for node in body:
            if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.name == part:
                found = node
            elif isinstance(node, ast.Assign | ast.AnnAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if any(isinstance(t, ast.Name) and t.id == part for t in targets):
                    found = node
        if found is None:
            return False
        body = found.body if isinstance(found, ast.ClassDef) else []
    return True


def test_every_module_and_name_on_the_page_exists() -> None:
    text = (REPO / "ARCHITECTURE.md").read_text()
    refs = REF.findall(text)
    assert len(refs) > 60, "the page names the code it describes as `path.py:Name`"
    missing = []
    for path, name in refs:
        source = REPO / path
        if not source.is_file():
            missing.append(path)
        elif name and not _defined(ast.parse(source.read_bytes()), name):
            missing.append(f"{path}:{name}")
    assert not missing, f"ARCHITECTURE.md names what the code no longer has: {sorted(set(missing))}"


def test_the_readme_links_to_it() -> None:
    assert "](ARCHITECTURE.md)" in (REPO / "README.md").read_text()


# Which top-level packages each may import (the page's "Imports flow one way").
ALLOWED = {
    "core": {"core"},
    "proto": {"core", "proto"},
    "agent": {"core", "proto", "agent"},
    "controller": {"core", "proto", "controller"},
    "cli": {"core", "proto", "cli"},
}


def _imported_packages(source: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(source.read_bytes())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
            [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else [])
        for name in names:
            parts = name.split(".")
            if parts[0] == "zcrepl" and len(parts) > 1:
                found.add(parts[1])
    return found


def test_imports_flow_one_way() -> None:
    wrong = []
    for package, allowed in ALLOWED.items():
        for source in sorted((REPO / package).rglob("*.py")):
            for other in _imported_packages(source) - allowed:
                wrong.append(f"{source.relative_to(REPO)} imports zcrepl.{other}")
    assert not wrong, wrong
