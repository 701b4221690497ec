"""Tests for zcrepl.agent.transfer.saferoot: names and relative paths from a peer are validated, never
normalised; temp names (reliability §2)."""

from __future__ import annotations

import pytest
import saferoothelpers

from zcrepl.agent.transfer.saferoot import MAX_DEPTH, MAX_NAME, TEMP_PREFIX, temp_name, validate_name, validate_relpath
from zcrepl.core.errors import UnsafePath
from zcrepl.core.paths import show

# The shared fixtures: pytest finds a fixture by the name of the module attribute holding it.
_no_fd_leak = saferoothelpers._no_fd_leak
resolver = saferoothelpers.resolver
tree = saferoothelpers.tree
root = saferoothelpers.root


# ------------------------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    "rel, parts",
    [
        (b"a/b/c", (b"a", b"b", b"c")),
        (b"sp ace/new\nline", (b"sp ace", b"new\nline")),
        (b"\xff\xfe/x", (b"\xff\xfe", b"x")),
        (b"x" * MAX_NAME, (b"x" * MAX_NAME,)),
        (b"...", (b"...",)),
        (b"a/.zc", (b"a", b".zc")),
        (b"", ()),
    ],
)
def test_validate_relpath_accepts(rel: bytes, parts: tuple[bytes, ...]) -> None:
    assert validate_relpath(rel) == parts


@pytest.mark.parametrize(
    "rel",
    [
        b"../x",
        b"/etc/x",
        b"//x",
        b"a/../../x",
        b"a/..",
        b"..",
        b".",
        b"a//b",
        b"a/./b",
        b"a/",
        b"a/\0b",
        b"x" * (MAX_NAME + 1),
        b"a/" + b"x" * (MAX_NAME + 1),
        b".zc.foo",
        b"a/.zc.x.1234abcd.tmp",
        b"/".join([b"d"] * (MAX_DEPTH + 1)),
        b"/".join([b"x" * MAX_NAME] * 257),  # every name legal, 65,792 bytes in total (MAX_PATH is 65,535)
    ],
)
def test_validate_relpath_refuses(rel: bytes) -> None:
    with pytest.raises(UnsafePath):
        validate_relpath(rel)


def test_validate_relpath_depth_limit_is_inclusive() -> None:
    assert len(validate_relpath(b"/".join([b"d"] * MAX_DEPTH))) == MAX_DEPTH


@pytest.mark.parametrize("name", [b"", b".", b"..", b"a/b", b"a\0", b"x" * 256, b".zc.foo"])
def test_validate_name_refuses(name: bytes) -> None:
    with pytest.raises(UnsafePath):
        validate_name(name)


def test_validate_name_rejects_str() -> None:
    with pytest.raises(TypeError):
        validate_name("a")  # type: ignore[arg-type]


def test_refusal_messages_are_escaped() -> None:
    with pytest.raises(UnsafePath) as info:
        validate_relpath(b"evil\n\x1b[2J/../\xff")
    message = str(info.value)
    assert message.isprintable()
    assert "evil\\n\\x1b[2J/../\\xff" in message


@pytest.mark.parametrize(
    "raw, shown",
    [
        (b"plain name.txt", "plain name.txt"),
        ("café/ü".encode(), "café/ü"),
        (b"a\nb", "a\\nb"),
        (b"\x1b[31mred", "\\x1b[31mred"),
        (b"\xff\xfe", "\\xff\\xfe"),
        (b"back\\slash", "back\\\\slash"),
        ("\u202eevil".encode(), "\\u202eevil"),
        ("\u0085".encode(), "\\u0085"),  # a valid C1 control and a raw 0x85 byte must differ
        (b"\x85", "\\x85"),
    ],
)
def test_show(raw: bytes, shown: str) -> None:
    assert show(raw) == shown
    assert show(raw).isprintable()


def test_temp_name_bounded_random_and_reserved() -> None:
    for leaf in (b"f", b"x" * MAX_NAME, "é".encode() * 127):
        tmp = temp_name(leaf)
        assert len(tmp) <= MAX_NAME
        assert tmp.startswith(TEMP_PREFIX) and tmp.endswith(b".tmp")
        with pytest.raises(UnsafePath):  # a peer can never name (or plant) one of our temps
            validate_name(tmp)
    assert temp_name(b"f") != temp_name(b"f")
