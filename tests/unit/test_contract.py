"""The committed generated modules match the .proto files, and imports flow one way."""

from __future__ import annotations

import ast
import filecmp
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_protobuf_modules_are_fresh(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_proto.py"), "--out", str(tmp_path)], check=True,
                   capture_output=True)
    generated = sorted(p.name for p in tmp_path.iterdir())
    committed = sorted(p.name for p in (ROOT / "proto").iterdir() if "_pb2" in p.name)
    assert generated == committed, "run scripts/gen_proto.py and commit the result"
    stale = [n for n in generated if not filecmp.cmp(tmp_path / n, ROOT / "proto" / n, shallow=False)]
    assert not stale, f"stale generated modules {stale}: run scripts/gen_proto.py and commit the result"


def _imports(folder: str) -> list[tuple[str, str]]:
    out = []
    for path in (ROOT / folder).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                out.append((str(path.relative_to(ROOT)), node.module))
            elif isinstance(node, ast.Import):
                out += [(str(path.relative_to(ROOT)), a.name) for a in node.names]
    return out


def test_imports_flow_one_way() -> None:
    rules = {
        "core": ("zcrepl.proto", "zcrepl.agent", "zcrepl.controller", "grpc"),
        "proto": ("zcrepl.agent", "zcrepl.controller"),
        "agent": ("zcrepl.controller",),
        "controller": ("zcrepl.agent",),
    }
    bad = [(f, m) for folder, banned in rules.items() for f, m in _imports(folder)
           if any(m == b or m.startswith(b + ".") for b in banned)]
    assert not bad, f"imports against the one-way rule core <- proto <- {{agent, controller}}: {bad}"
