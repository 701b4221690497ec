"""rsync's pattern rules as tables (the equality with rsync itself is tests/integration/test_filters.py)."""

from __future__ import annotations

import pytest

from zcrepl.agent.watch_coalesce import ChangeSet
from zcrepl.agent.watch_filter import filter_changes
from zcrepl.core.filters import (
    CLEAR,
    MAX_PATTERN,
    Filter,
    FilterError,
    check_rule,
    check_rules,
    collapse,
    from_arg,
    from_lines,
)

# (rule, path, is_dir, matches)
MATCHES = [
    ("- *.o", b"a.o", False, True),
    ("- *.o", b"d/e/a.o", False, True),
    ("- *.o", b"a.c", False, False),
    ("- build/", b"x/build", True, True),
    ("- build/", b"x/build", False, False),  # a trailing / matches directories only
    ("- /build", b"build", False, True),
    ("- /build", b"x/build", False, False),  # anchored at the top
    ("- a/b", b"x/a/b", False, True),  # unanchored with a slash: the end of the path
    ("- a/b", b"xa/b", False, False),  # ...at a component boundary
    ("- a/*/c", b"a/x/c", False, True),
    ("- a/*/c", b"a/x/y/c", False, False),  # * stays within a name
    ("- a/**/c", b"a/x/y/c", False, True),  # ** crosses /
    ("- a/**/c", b"a/c", False, False),  # ...but needs the slashes around it
    ("- **/c", b"c", False, True),  # a leading ** also matches at the top
    ("- src/**", b"q/src/x/y", False, True),
    ("- ?.txt", b"a.txt", False, True),
    ("- ?.txt", b"ab.txt", False, False),
    ("- [ab]*", b"bz", False, True),
    ("- [!a-m]*", b"bz", False, False),
    ("- [^a-m]*", b"zz", False, True),
    ("- *[[:digit:]]*", b"v2.bin", False, True),
    ("- *[[:digit:]]*", b"vx.bin", False, False),
    ("- [[:bogus:]]", b"b", False, False),  # an unknown class matches nothing
    ("- [unclosed", b"[unclosed", False, False),  # as rsync: never matches
    ("- *\\[x\\]*", b"img[x]1", False, True),  # \ escapes in a wild pattern
    ("- a\\b", b"a\\b", False, True),  # ...and is a plain character in a literal one
    ("- src/***", b"src", True, True),  # dir/*** matches the directory itself
    ("- src/***", b"src/a/b", False, True),
    ("- src/***", b"src", False, False),
    ("- []]", b"]", False, True),  # ] first in a class is a member
    ("- *", b"", True, False),  # the root is never excluded
]


@pytest.mark.parametrize("rule,path,is_dir,want", MATCHES)
def test_pattern_rules(rule: str, path: bytes, is_dir: bool, want: bool) -> None:
    assert Filter([rule]).excluded(path, is_dir) is want


def test_first_match_wins_and_default_is_include() -> None:
    f = Filter(["+ keep.o", "- *.o", "+ */", "- *"])
    assert not f.excluded(b"d/keep.o", False)
    assert f.excluded(b"d/x.o", False)
    assert not f.excluded(b"d", True)
    assert f.excluded(b"d/x.c", False)
    assert not Filter().excluded(b"anything", False)


@pytest.mark.parametrize("arg,include,want", [
    ("*.o", False, "- *.o"), ("*.o", True, "+ *.o"), ("+ *.o", False, "+ *.o"), ("- *.o", True, "- *.o"),
    ("", False, None), ("!", False, CLEAR), ("! x", False, "- ! x"), ("-x", False, "- -x"),
])
def test_arguments_read_as_rsync_reads_them(arg: str, include: bool, want: str | None) -> None:
    assert from_arg(arg, include) == want


def test_files_and_clear() -> None:
    data = b"# comment\n; also\n\n*.o\r+ keep.o\n!\nbuild/\n\xff.bin\n"
    rules = from_lines(data, include=False)
    assert rules == ["- *.o", "+ keep.o", CLEAR, "- build/", "- \udcff.bin"]
    assert collapse(rules) == ["- build/", "- \udcff.bin"]
    assert Filter(collapse(rules)).excluded(b"\xff.bin", False)  # non-UTF-8 names match byte for byte


@pytest.mark.parametrize("rule,fragment", [
    ("- ", "no pattern after its prefix"),
    ("+ ", "no pattern after its prefix"),
    ("*.o", "must start with"),
    ("- a\0b", "NUL"),
    ("- " + "a" * (MAX_PATTERN + 1), "rsync discards patterns longer"),
])
def test_rules_rsync_refuses(rule: str, fragment: str) -> None:
    with pytest.raises(FilterError, match=fragment):
        check_rule(rule)


def test_too_many_rules() -> None:
    with pytest.raises(FilterError, match="more than"):
        check_rules(["- x"] * 10_001)
    check_rules(["- x"] * 10)


def _kinds(dirs: set[bytes]) -> object:
    return lambda p: True if p in dirs else (None if p.startswith(b"gone") else False)


@pytest.mark.parametrize("cs,want", [
    (ChangeSet(upserts=frozenset({b"a.o", b"a.c", b"cache/x", b"d/cache"})), ChangeSet(upserts=frozenset({b"a.c"}))),
    # a file named like an excluded directory still ships; one below an excluded directory does not
    (ChangeSet(upserts=frozenset({b"f/cache"})), ChangeSet(upserts=frozenset({b"f/cache"}))),
    # a deleted path whose kind is gone: excluded as either kind, the destination keeps it
    (ChangeSet(deletes=frozenset({b"gone/cache", b"gone/x"})), ChangeSet(deletes=frozenset({b"gone/x"}))),
    (ChangeSet(renames=((b"a.c", b"b.c"),)), ChangeSet(renames=((b"a.c", b"b.c"),))),
    (ChangeSet(renames=((b"a.o", b"b.c"),)), ChangeSet(rescan=True)),
    (ChangeSet(upserts=frozenset({b".zcignore"})), ChangeSet(rescan=True)),
])
def test_watch_change_sets(cs: ChangeSet, want: ChangeSet) -> None:
    flt = Filter(["- *.o", "- cache/"])
    assert filter_changes(cs, flt, _kinds({b"cache", b"d/cache"})) == want  # type: ignore[arg-type]
