"""Fuzzing a watch session's change lists at the destination (``apply_ops`` on a real directory with
planted symlinks, checked against a model of the ChangeSet contract in ``zcrepl.agent.watch_changeset``)
and the path validation every name from a peer goes through.

Whatever the ops, nothing outside the job root changes and the only errors are ProtocolError/UnsafePath
(the peer is dropped) or entry errors (recorded). Ops the contract allows are applied exactly as the
model says, with no entry error unless a planted symlink stands in a source's way.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import event, example, given
from hypothesis import strategies as st
from zcfuzz import HOSTILITY, Arena, arena, budget, change_lists, hostile_paths, names, open_fds

from zcrepl.agent.transfer import opsframe as opf
from zcrepl.agent.transfer.apply import TreeWriter
from zcrepl.agent.transfer.changes import apply_ops
from zcrepl.agent.transfer.saferoot import MAX_DEPTH, MAX_PATH, SafeRoot, validate_name, validate_relpath
from zcrepl.core.errors import ProtocolError, UnsafePath
from zcrepl.core.types import JobOptions

# A failing example with 64 kB names is worth printing whole (hypothesis warns about the size of its repr).
pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")

Tree = dict[bytes, tuple[str, bytes]]  # path -> (kind "d" | "f" | "l", content or link target)


def read_tree(top: bytes) -> Tree:
    out: Tree = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, top)
            mode = os.lstat(full).st_mode
            if stat.S_ISLNK(mode):
                out[rel] = ("l", os.readlink(full))
            elif stat.S_ISDIR(mode):
                out[rel] = ("d", b"")
            else:
                with open(full, "rb") as f:
                    out[rel] = ("f", f.read())
    return out


def _sub(tree: Tree, p: bytes) -> list[bytes]:
    return [q for q in tree if q == p or q.startswith(p + b"/")]


def _parent(p: bytes) -> bytes:
    return p.rpartition(b"/")[0]


class Model:
    """The destination as the ChangeSet contract describes it (``watch_changeset`` docstring, items 2 and 3)."""

    def __init__(self, tree: Tree) -> None:
        self.tree = dict(tree)
        self.missed: list[bytes] = []
        self.trapped = False  # a planted symlink stood in a source's way: the receiver records an error

    def _through_symlink(self, p: bytes) -> bool:
        parts = p.split(b"/")
        for i in range(1, len(parts)):
            node = self.tree.get(b"/".join(parts[:i]))
            if node is None or node[0] != "d":
                return node is not None and node[0] == "l"
        return False

    def _mkdir_p(self, p: bytes) -> None:
        chain, par = [], _parent(p)
        while par:
            chain.append(par)
            par = _parent(par)
        for d in reversed(chain):
            node = self.tree.get(d)
            if node is not None and node[0] != "d":  # a non-directory in the way is replaced
                for q in _sub(self.tree, d):
                    del self.tree[q]
                node = None
            if node is None:
                self.tree[d] = ("d", b"")

    def rename(self, s: bytes, t: bytes) -> None:
        if self._through_symlink(s):
            self.trapped = True
            return
        if s not in self.tree:
            self.missed.append(t)
            return
        moving = {q: self.tree.pop(q) for q in _sub(self.tree, s)}
        for q in _sub(self.tree, t):
            del self.tree[q]
        self._mkdir_p(t)
        for q, node in moving.items():
            self.tree[t + q[len(s):]] = node

    def delete(self, p: bytes) -> None:
        if self._through_symlink(p):
            self.trapped = True
            return
        for q in _sub(self.tree, p):
            del self.tree[q]


def allowed(ops: list[opf.Op]) -> bool:
    """Ops a real source can send: valid names, nothing done to the root, no rename onto the root or into
    itself."""
    for op in ops:
        try:
            src = validate_relpath(op.path)
            dst = validate_relpath(op.target) if op.kind == opf.OP_RENAME else None
        except UnsafePath:
            return False
        if not src or (dst is not None and (not dst or dst[: len(src)] == src)):
            return False
    return True


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield tmp_path_factory.mktemp("fuzz-changes")


def apply(a: Arena, ops: list[opf.Op]) -> tuple[list[bytes] | BaseException, TreeWriter]:
    with SafeRoot(a.dst) as root:
        w = TreeWriter(root, JobOptions(), "hostB:/export/dst", 1)
        w.restricted = True
        try:
            return apply_ops(w, ops), w
        except BaseException as err:  # judged by the caller
            return err, w
        finally:
            w.abandon()


@given(ops=HOSTILITY.flatmap(change_lists))
@example(ops=[opf.Op(opf.OP_RENAME, b"pdir/inner", b"pdir")])  # onto its own parent
@example(ops=[opf.Op(opf.OP_RENAME, b"pfile", b"")])  # onto the root
@budget(200)
def test_change_lists_apply_as_the_contract_says_and_stay_inside(base: Path, ops: list[opf.Op]) -> None:
    before = open_fds()
    with arena(base) as a:
        ops = [opf.Op(op.kind, a.resolve(op.path), a.resolve(op.target)) for op in ops]
        model = Model(read_tree(a.dst))
        outcome, w = apply(a, ops)
        event(type(outcome).__name__)
        if not allowed(ops):  # the peer is dropped, or (a delete of the root) the op fails on its own
            assert isinstance(outcome, ProtocolError | UnsafePath) or w.errors, f"refused ops were applied: {ops}"
            return
        assert isinstance(outcome, list), repr(outcome)
        for op in ops:
            if op.kind == opf.OP_RENAME:
                model.rename(op.path, op.target)
            else:
                model.delete(op.path)
        if model.trapped:
            assert w.errors, "a planted symlink in a source's way went unnoticed"
            return
        assert not w.errors, w.first_error
        assert outcome == model.missed
        assert read_tree(a.dst) == model.tree
    assert open_fds() == before, "file descriptors leaked"


@given(rel=st.one_of(hostile_paths(), st.binary(max_size=48), st.lists(names, max_size=6).map(b"/".join)))
@budget(300)
def test_a_path_is_split_exactly_into_valid_names_or_refused_in_one_printable_sentence(rel: bytes) -> None:
    try:
        parts = validate_relpath(rel)
    except UnsafePath as err:
        assert str(err) and not any(c in str(err) for c in "\0\n\r"), repr(str(err))  # names are escaped
        return
    assert b"/".join(parts) == rel  # rejected, never normalised
    assert all(validate_name(p) == p for p in parts)
    assert len(parts) <= MAX_DEPTH and len(rel) <= MAX_PATH
