"""The directory roots an agent serves, and what peers may decide in each; every job path must resolve below
one of them."""

from __future__ import annotations

import os

from zcrepl.agent.transfer.saferoot import SafeRoot, validate_relpath
from zcrepl.core.errors import InvalidPath, UnsafePath
from zcrepl.core.exportpolicy import DEFAULT_POLICY, ExportPolicy, parse_export_policies
from zcrepl.core.paths import canonical_abs, relative_to, show


class Exports:
    """Opened once at start; the held root fds are what confinement is relative to."""

    def __init__(self, host: str, roots: tuple[bytes, ...], policies: tuple[str, ...] = ()) -> None:
        self.host = host
        self.roots: list[tuple[bytes, bytes, SafeRoot]] = []  # (as configured, realpath, opened root)
        specs = parse_export_policies(policies, (canonical_abs(r) for r in roots))
        self._policies: dict[int, ExportPolicy] = {}  # id(SafeRoot) -> its policy
        for raw in roots:
            path = canonical_abs(raw)
            root = SafeRoot(path)
            self.roots.append((path, os.path.realpath(path), root))
            self._policies[id(root)] = specs.get(path, DEFAULT_POLICY)

    @property
    def paths(self) -> tuple[bytes, ...]:
        return tuple(p for p, _, _ in self.roots)

    def close(self) -> None:
        for _, _, root in self.roots:
            root.close()

    def policy(self, root: SafeRoot) -> ExportPolicy:
        """What peers may decide in this export (one ``resolve`` returned)."""
        return self._policies.get(id(root), DEFAULT_POLICY)

    def resolve(self, path: bytes) -> tuple[SafeRoot, tuple[bytes, ...]]:
        """(export root, components below it) for an absolute job path, or InvalidPath naming the exports."""
        path = canonical_abs(path, what=f"{self.host}:{show(path)}")
        best: tuple[SafeRoot, bytes] | None = None
        best_len = -1
        for configured, real, root in self.roots:
            for base in (configured, real):
                rel = relative_to(path, base)
                if rel is not None and len(base) > best_len:  # the innermost export wins
                    best, best_len = (root, rel), len(base)
        if best is None:
            listed = ", ".join(show(p) for p in self.paths)
            raise InvalidPath(
                f"{self.host}:{show(path)} is outside the exports of {self.host} ({listed}); "
                f"use a path under an export, or start zc-agent on {self.host} with --export for it"
            )
        root, rel = best
        try:
            return root, validate_relpath(rel)
        except UnsafePath as err:
            raise InvalidPath(f"{self.host}:{show(path)}: {err}") from err
