#!/usr/bin/env python3
"""Regenerate the committed protobuf/gRPC modules in proto/ from proto/*.proto.

protoc runs with the virtual path ``zcrepl/proto`` so generated imports read
``from zcrepl.proto import types_pb2``. ``--out DIR`` writes elsewhere (the staleness test uses it).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"


def generate(out_dir: Path) -> list[Path]:
    """Generate into ``out_dir`` and return the generated files."""
    from grpc_tools import protoc  # dev extra: grpcio-tools, pinned exactly

    protos = sorted(p.name for p in PROTO_DIR.glob("*.proto"))
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "protoc",
            f"-Izcrepl/proto={PROTO_DIR}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *[f"zcrepl/proto/{name}" for name in protos],
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed; see its message above")
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for src in sorted((Path(tmp) / "zcrepl" / "proto").iterdir()):
            dst = out_dir / src.name
            shutil.copyfile(src, dst)
            written.append(dst)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=PROTO_DIR)
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path.relative_to(args.out.parent) if args.out == PROTO_DIR else path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
