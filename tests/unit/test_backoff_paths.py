"""Tests for zcrepl.core.backoff.backoff_delay and zcrepl.core.paths (endpoint parsing, canonical paths, show)."""

from __future__ import annotations

import pytest

from zcrepl.core.backoff import backoff_delay
from zcrepl.core.errors import InvalidPath, UserError
from zcrepl.core.paths import canonical_abs, parse_endpoint, relative_to, show, valid_host_name
from zcrepl.core.types import Endpoint

# -- backoff_delay ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attempt", "base", "cap", "d"),
    [
        (1, 2.0, 60.0, 2.0),
        (2, 2.0, 60.0, 4.0),
        (3, 2.0, 60.0, 8.0),
        (5, 2.0, 60.0, 32.0),
        (6, 2.0, 60.0, 60.0),  # 64 capped
        (3, 0.5, 60.0, 2.0),
        (1, 10.0, 5.0, 5.0),  # cap below base
        (10_000, 2.0, 60.0, 60.0),  # huge attempt: no overflow
    ],
)
@pytest.mark.parametrize(("r", "frac"), [(0.0, 0.5), (0.5, 0.75), (1.0, 1.0)], ids=["low", "mid", "high"])
def test_backoff_delay(attempt: int, base: float, cap: float, d: float, r: float, frac: float) -> None:
    assert backoff_delay(attempt, base, cap, lambda: r) == pytest.approx(d * frac)


@pytest.mark.parametrize("attempt", [0, -1, -100])
def test_backoff_before_first_attempt_is_zero(attempt: int) -> None:
    assert backoff_delay(attempt, 2.0, 60.0, lambda: 1.0) == 0.0


def test_backoff_default_rand_within_bounds() -> None:
    delays = [backoff_delay(3, 2.0, 60.0) for _ in range(200)]
    assert all(4.0 <= x <= 8.0 for x in delays)
    assert len(set(delays)) > 1  # jittered


def test_backoff_never_immediate() -> None:
    assert backoff_delay(1, 2.0, 60.0, lambda: 0.0) > 0


# -- parse_endpoint ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arg", "host", "path"),
    [
        ("hostA:/srv/data", "hostA", b"/srv/data"),
        ("hostA:/srv/data/", "hostA", b"/srv/data"),
        ("hostA:/srv/data//", "hostA", b"/srv/data"),
        ("h.example_1-x:/a", "h.example_1-x", b"/a"),
        ("h:/caf\u00e9", "h", "/caf\u00e9".encode()),
        ("h:/with space/and:colon", "h", b"/with space/and:colon"),
        ("h:/srv/\udcff\udcfe", "h", b"/srv/\xff\xfe"),  # argv decoded with surrogateescape
        ("h:/a/..b/.c", "h", b"/a/..b/.c"),
        ("x" * 63 + ":/a", "x" * 63, b"/a"),
        ("x" * 253 + ":/a", "x" * 253, b"/a"),  # a DNS name's length
    ],
)
def test_parse_endpoint_accepts(arg: str, host: str, path: bytes) -> None:
    assert parse_endpoint(arg) == Endpoint(host, path)


@pytest.mark.parametrize("arg", ["h:/", "h://"])
def test_parse_endpoint_accepts_root(arg: str) -> None:
    assert parse_endpoint(arg) == Endpoint("h", b"/")


@pytest.mark.parametrize(
    ("arg", "needle"),
    [
        ("hostA/srv/data", "HOST:/PATH"),
        ("", "HOST:/PATH"),
        (":/srv", "HOST:/PATH"),
        ("h st:/a", "not a valid host name"),
        ("-h:/a", "not a valid host name"),
        (".h:/a", "not a valid host name"),
        ("h/x:/a", "not a valid host name"),
        ("h\u00e9:/a", "not a valid host name"),
        ("x" * 254 + ":/a", "not a valid host name"),
        ("h\n:/a", "not a valid host name"),  # '$' in a pattern matches before a trailing newline
        ("h :/a", "not a valid host name"),
        ("h\u202e:/a", "not a valid host name"),  # a right-to-left override
        ("h\x00:/a", "not a valid host name"),
        ("h:srv/data", "absolute"),
        ("h:", "absolute"),
        ("h:/a/../b", "canonical"),
        ("h:/a/..", "canonical"),
        ("h:/..", "canonical"),
        ("h:/a//b", "canonical"),
        ("h:/a/./b", "canonical"),
        ("h:/.", "canonical"),
        ("h:/a/\x00b", "NUL"),
        ("h:/" + "a" * 4096, "4096"),
    ],
)
def test_parse_endpoint_refuses(arg: str, needle: str) -> None:
    with pytest.raises(InvalidPath, match=needle):
        parse_endpoint(arg)


def test_invalid_path_is_a_user_error() -> None:
    with pytest.raises(UserError):
        parse_endpoint("nocolon")


@pytest.mark.parametrize(("name", "ok"), [("a", True), ("A9", True), ("9a", True), ("a_b.c-d", True),
                                          ("", False), ("_a", False), ("a b", False), ("a:b", False)])
def test_valid_host_name(name: str, ok: bool) -> None:
    assert valid_host_name(name) is ok


# -- canonical_abs ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"/a", b"/a"),
        (b"/a/b/", b"/a/b"),
        (b"/a/\xff", b"/a/\xff"),
        (b"/" + b"a" * 4095, b"/" + b"a" * 4095),
    ],
)
def test_canonical_abs_accepts(raw: bytes, expected: bytes) -> None:
    assert canonical_abs(raw) == expected


@pytest.mark.parametrize("raw", [b"", b"a", b"./a", b"/a/./b", b"/a/../b", b"/a//b", b"/a\0", b"/" + b"a" * 4096])
def test_canonical_abs_refuses(raw: bytes) -> None:
    with pytest.raises(InvalidPath):
        canonical_abs(raw)


@pytest.mark.parametrize("raw", [b"/", b"//"])
def test_canonical_abs_accepts_root(raw: bytes) -> None:
    assert canonical_abs(raw) == b"/"


def test_canonical_abs_error_uses_label_or_shown_path() -> None:
    with pytest.raises(InvalidPath, match=r"^h:/x: "):
        canonical_abs(b"rel", what="h:/x")
    with pytest.raises(InvalidPath, match=r"^rel\\xff: "):
        canonical_abs(b"rel\xff")


# -- relative_to ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "root", "expected"),
    [
        (b"/a/b", b"/a", b"b"),
        (b"/a/b/c", b"/a", b"b/c"),
        (b"/a", b"/a", b""),
        (b"/ab", b"/a", None),
        (b"/a", b"/a/b", None),
        (b"/b/a", b"/a", None),
        (b"/a", b"/", b"a"),
        (b"/a/b", b"/", b"a/b"),
        (b"/", b"/", b""),
        (b"/", b"/a", None),
        (b"/a/\xff", b"/a", b"\xff"),
    ],
)
def test_relative_to(path: bytes, root: bytes, expected: bytes | None) -> None:
    assert relative_to(path, root) == expected


# -- show -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        (b"/srv/data", "/srv/data"),
        ("/caf\u00e9/\u65e5\u672c".encode(), "/caf\u00e9/\u65e5\u672c"),
        (b"a b", "a b"),
        (b"a\nb", "a\\nb"),
        (b"a\tb\rc", "a\\tb\\rc"),
        (b"\x00\x01\x1b[31m\x7f", "\\x00\\x01\\x1b[31m\\x7f"),
        (b"\xff\xfe", "\\xff\\xfe"),
        (b"\x80", "\\x80"),
        (b"a\\b", "a\\\\b"),
        (b"\\xff", "\\\\xff"),
        ("\u202e".encode(), "\\u202e"),  # bidi override
        ("\u2028".encode(), "\\u2028"),  # line separator
        ("\u0085".encode(), "\\u0085"),  # C1 control NEL
        ("\u00a0".encode(), "\\u00a0"),  # no-break space
        ("\U000e0001".encode(), "\\U000e0001"),  # language tag
        (b"", ""),
    ],
)
def test_show(raw: bytes, shown: str) -> None:
    assert show(raw) == shown


def test_show_is_injective_on_confusable_inputs() -> None:
    inputs = [b"\xff", b"\\xff", b"\\\xff", "\u00ff".encode(), b"\n", b"\\n", b"\x0a", b"\t", b"\\t",
              "\u202e".encode(), b"\\u202e", b"\xed\xb2\x80", "\U000e0001".encode(), b"\\U000e0001"]
    unique = set(inputs)
    assert len({show(b) for b in unique}) == len(unique)


def test_show_emits_no_control_characters() -> None:
    raw = bytes(range(256)) + "\u202e\u2028\u0085\U000e0001".encode()
    assert show(raw).isprintable()
