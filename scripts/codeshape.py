"""Measure the shape of the source: longest functions, functions over a complexity bound, largest modules.

Run from the repository root with the dev venv: `.venv/bin/python scripts/codeshape.py [--top N] [--max-complexity M]`.
Source means the packages that ship (agent, controller, cli, core, proto without its generated modules); tests and bench
are left out because their length says nothing about how hard the product is to change. Complexity is ruff's C901
(McCabe), asked of ruff itself so the figure is the one CI enforces; lengths come from the AST (first line of the
def, decorators excluded, to its last line).
"""

from __future__ import annotations

import argparse
import ast
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("agent", "controller", "cli", "core", "proto")


@dataclass(frozen=True)
class Function:
    path: str
    line: int
    name: str
    lines: int


def source_files() -> list[Path]:
    files = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path.name.endswith(("_pb2.py", "_pb2_grpc.py")):
                continue
            files.append(path)
    return files


def functions(path: Path) -> list[Function]:
    tree = ast.parse(path.read_bytes(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno is not None:
            rel = str(path.relative_to(ROOT))
            found.append(Function(rel, node.lineno, node.name, node.end_lineno - node.lineno + 1))
    return found


def over_complexity(files: list[Path], bound: int) -> list[tuple[str, int, str]]:
    """Ask ruff for C901 at `bound`, ignoring noqa markers: the figure is what exceeds, not what is excused."""
    ruff = Path(sys.executable).parent / "ruff"
    cmd = [
        str(ruff if ruff.exists() else "ruff"),
        "check",
        "--no-cache",
        "--isolated",
        "--select",
        "C901",
        "--config",
        f"lint.mccabe.max-complexity={bound}",
        "--ignore-noqa",
        "--output-format",
        "json",
        *[str(f) for f in files],
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=ROOT)
    if out.returncode not in (0, 1):
        raise SystemExit(f"codeshape: ruff failed ({out.returncode}): {out.stderr.strip()}")
    rows = []
    for item in json.loads(out.stdout or "[]"):
        rel = str(Path(item["filename"]).resolve().relative_to(ROOT))
        rows.append((rel, item["location"]["row"], item["message"]))
    return sorted(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--top", type=int, default=5, help="how many of the longest functions and modules to list")
    parser.add_argument("--max-complexity", type=int, default=12, help="McCabe bound (ruff C901), default 12")
    args = parser.parse_args(argv)

    files = source_files()
    funcs = sorted((f for path in files for f in functions(path)), key=lambda f: -f.lines)
    modules = sorted(((len(p.read_text().splitlines()), str(p.relative_to(ROOT))) for p in files), reverse=True)
    complex_ = over_complexity(files, args.max_complexity)

    print(f"source: {len(files)} modules, {sum(n for n, _ in modules)} lines, {len(funcs)} functions")
    print("longest functions (lines):")
    for f in funcs[: args.top]:
        print(f"  {f.lines:4d}  {f.path}:{f.line} {f.name}")
    print("largest modules (lines):")
    for n, rel in modules[: args.top]:
        print(f"  {n:4d}  {rel}")
    print(f"functions over complexity {args.max_complexity}: {len(complex_)}")
    for rel, row, message in complex_:
        print(f"  {rel}:{row} {message}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
