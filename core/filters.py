"""rsync's include/exclude rules: parsing, checking and matching (pure; no I/O).

A job carries its rules in order as strings ``"- PATTERN"`` (exclude) or ``"+ PATTERN"`` (include), the form
rsync itself uses on the wire; the first rule that matches a path decides, and a path no rule matches is
included. Patterns follow rsync's "INCLUDE/EXCLUDE PATTERN RULES":

- a leading ``/`` anchors the pattern at the transfer root; otherwise it matches the end of the path;
- a trailing ``/`` matches directories only;
- a pattern with a ``/`` (or a ``**``) is matched against the path below the root, one without against the
  entry's own name;
- ``*`` matches within a name, ``**`` across ``/``, ``?`` one character but ``/``, ``[...]`` a class
  (``!`` or ``^`` negates it, ranges and ``[:alpha:]``-style classes allowed); ``\\`` escapes a wildcard
  character, but only in a pattern that has one (``*``, ``?`` or ``[``);
- ``dir/***`` matches ``dir`` itself and everything below it.

Paths are bytes below the root, without a leading ``/``. A pattern that cannot match (an unclosed ``[``)
is accepted and matches nothing, as in rsync. Matching is a port of the semantics of rsync's ``wildmatch``,
written here from its documented behaviour and checked against rsync itself (tests/integration/test_filters.py).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

MAX_PATTERN = 4095
"""Bytes of one pattern; rsync discards longer ones (MAXPATHLEN), zcrepl refuses them."""

MAX_RULES = 10_000
"""Rules of one job: each path is checked against every rule, so a list this long is already slow."""

IGNORE_FILE = b".zcignore"
"""A file of exclude rules at the top of a source tree, read by the source agent for every transfer."""

CLEAR = "!"
"""As a rule (in a file or an argument): forget every rule before it, as rsync does."""

_WILD = frozenset(b"*?[")
_SLASH = 0x2F
_BACKSLASH = 0x5C


class FilterError(ValueError):
    """A rule rsync would refuse; the message is one sentence naming it."""


@dataclass(frozen=True, slots=True)
class Rule:
    include: bool
    pattern: bytes  # without its trailing "/" (dir_only says so); with its leading "/" when anchored
    dir_only: bool
    slashes: int
    wild: bool
    wild2: bool  # has "**"
    wild2_prefix: bool  # starts with "**"
    wild3_suffix: bool  # ends with "***" ("dir/***" matches dir too)
    anchored: bool  # starts with "/": matched from the root
    body: bytes  # the pattern without that "/"

    @classmethod
    def parse(cls, rule: str) -> Rule:
        """A rule as a job carries it: ``"- PATTERN"`` or ``"+ PATTERN"``."""
        check_rule(rule)
        pat = os.fsencode(rule[2:])
        dir_only = len(pat) > 1 and pat.endswith(b"/")
        if dir_only:
            pat = pat[:-1]
        wild = any(c in _WILD for c in pat)
        wild2 = wild and b"**" in pat
        anchored = pat.startswith(b"/")
        return cls(include=rule[0] == "+", pattern=pat, dir_only=dir_only, slashes=pat.count(b"/"), wild=wild,
                   wild2=wild2, wild2_prefix=wild2 and pat.startswith(b"**"),
                   wild3_suffix=wild2 and pat.endswith(b"***"), anchored=anchored,
                   body=pat[1:] if anchored else pat)

    def matches(self, path: bytes, is_dir: bool) -> bool:
        if self.dir_only and not is_dir:
            return False
        name = path.rpartition(b"/")[2] if not self.slashes and not self.wild2 else path
        if not self.wild:
            return name == self.body or (not self.anchored and name.endswith(b"/" + self.body))
        if self.wild2_prefix:
            name = b"/" + name  # lets "**/x" match "x" at the top
        if is_dir and self.wild3_suffix:
            name += b"/"
        return self._wildmatch(name)

    def _wildmatch(self, text: bytes) -> bool:
        pat = self.body
        if not self.anchored and self.slashes and not self.wild2:
            start = _last_components(text, self.slashes + 1)
            return start is not None and _match(pat, 0, text, start) is True
        if self.anchored or self.wild2_prefix or not self.wild2:
            return _match(pat, 0, text, 0) is True
        # An unanchored pattern with an inner or trailing "**": tried at the start and after every "/".
        i = 0
        while True:
            r = _match(pat, 0, text, i)
            if r is True or r is _ABORT_ALL:
                return r is True
            i = text.find(b"/", i) + 1
            if i == 0:
                return False


class Filter:
    """An ordered rule list; ``excluded`` is the question every scan and delete asks."""

    def __init__(self, rules: Iterable[str] = ()) -> None:
        self.rules = tuple(Rule.parse(r) for r in rules)

    def __bool__(self) -> bool:
        return bool(self.rules)

    def excluded(self, path: bytes, is_dir: bool) -> bool:
        """Whether the entry at ``path`` (below the root, no leading ``/``) is left out."""
        if not path:
            return False  # the root itself is always transferred
        for r in self.rules:
            if r.matches(path, is_dir):
                return not r.include
        return False

    def excluded_any(self, path: bytes) -> bool:
        """Excluded as a file or as a directory: for a path whose kind is not known (it is gone)."""
        return self.excluded(path, False) or self.excluded(path, True)


def check_rule(rule: str) -> None:
    """Raise FilterError when ``rule`` is not one a job can carry (see ``from_arg`` for the spellings)."""
    if rule[:2] not in ("- ", "+ "):
        raise FilterError(f"filter rule {rule[:60]!r} must start with '- ' (exclude) or '+ ' (include)")
    pat = rule[2:]
    if not pat:
        raise FilterError(f"filter rule {rule!r} has no pattern after its prefix (rsync: unexpected end of "
                          "filter rule); give a pattern or drop the rule")
    if "\0" in pat:
        raise FilterError(f"pattern {pat[:60]!r} contains a NUL byte, which no path can hold; remove it")
    try:
        size = len(os.fsencode(pat))
    except UnicodeEncodeError as err:
        raise FilterError(f"pattern {pat[:60]!r} cannot be encoded as a file name ({err.reason})") from err
    if size > MAX_PATTERN:
        raise FilterError(f"pattern {pat[:40]!r}... is {size} bytes long; rsync discards patterns longer "
                          f"than {MAX_PATTERN} bytes, so shorten it")


def check_rules(rules: Sequence[str]) -> None:
    if len(rules) > MAX_RULES:
        raise FilterError(f"{len(rules):,} filter rules are more than the {MAX_RULES:,} a job may carry; merge "
                          "patterns with wildcards")
    for rule in rules:
        check_rule(rule)


def from_arg(text: str, include: bool) -> str | None:
    """The rule for an ``--exclude``/``--include`` argument or a line of an ``-from`` file, as rsync reads
    them: ``"- "`` and ``"+ "`` prefixes override the option, ``"!"`` is ``CLEAR``, "" is no rule (None).
    A prefix with nothing after it is kept, and refused by ``check_rule`` (rsync refuses it too)."""
    if not text:
        return None
    if text == CLEAR:
        return CLEAR
    if text[:2] in ("- ", "+ "):
        return text
    return ("+ " if include else "- ") + text


def from_lines(data: bytes, include: bool) -> list[str]:
    """The rules of an ``--exclude-from``/``--include-from`` file or a ``.zcignore``: one a line (``\\n`` or
    ``\\r`` ends a line), blank lines and lines starting with ``#`` or ``;`` skipped."""
    out: list[str] = []
    for line in data.replace(b"\r", b"\n").split(b"\n"):
        if not line or line[:1] in (b"#", b";"):
            continue
        rule = from_arg(os.fsdecode(line), include)
        if rule is not None:
            out.append(rule)
    return out


def collapse(rules: Iterable[str]) -> list[str]:
    """Apply every ``CLEAR``: what remains is the list a job carries."""
    out: list[str] = []
    for r in rules:
        if r == CLEAR:
            out.clear()
        else:
            out.append(r)
    return out


# -- wildmatch ------------------------------------------------------------------------------------------
_ABORT_ALL = -1  # no later start can match either
_ABORT_TO_STARSTAR = -2  # a "*" hit a "/": only an enclosing "**" may try further

_CLASSES = {
    b"alnum": lambda c: c < 0x80 and chr(c).isalnum(), b"alpha": lambda c: c < 0x80 and chr(c).isalpha(),
    b"blank": lambda c: c in (0x20, 0x09), b"cntrl": lambda c: c < 0x20 or c == 0x7F,
    b"digit": lambda c: 0x30 <= c <= 0x39, b"graph": lambda c: 0x21 <= c <= 0x7E,
    b"lower": lambda c: 0x61 <= c <= 0x7A, b"print": lambda c: 0x20 <= c <= 0x7E,
    b"punct": lambda c: 0x21 <= c <= 0x7E and not chr(c).isalnum(),
    b"space": lambda c: c in (0x20, 0x09, 0x0A, 0x0B, 0x0C, 0x0D), b"upper": lambda c: 0x41 <= c <= 0x5A,
    b"xdigit": lambda c: chr(c) in "0123456789abcdefABCDEF",
}


def _last_components(text: bytes, n: int) -> int | None:
    """Where the last ``n`` components of ``text`` start, or None when it has fewer."""
    end = len(text)
    for _ in range(n - 1):
        end = text.rfind(b"/", 0, end)
        if end < 0:
            return None
    return text.rfind(b"/", 0, end) + 1


def _match(p: bytes, pi: int, t: bytes, ti: int) -> bool | int:
    """Match pattern ``p[pi:]`` against text ``t[ti:]``: True, False, or one of the abort codes.
    Character classes are ASCII (bytes above 127 are in no named class), as in rsync's C locale."""
    np, nt = len(p), len(t)
    while pi < np:
        ch = p[pi]
        if ch == 0x2A:  # *
            return _star(p, pi, t, ti)
        if ti >= nt:
            return False
        if ch == 0x3F:  # ?
            if t[ti] == _SLASH:
                return False
        elif ch == 0x5B:  # [
            r = _klass(p, pi, t[ti])
            if r is None:
                return _ABORT_ALL
            ok, pi = r
            if not ok:
                return False
        else:
            if ch == _BACKSLASH:
                pi += 1
                if pi >= np:
                    return False
                ch = p[pi]
            if t[ti] != ch:
                return False
        pi += 1
        ti += 1
    return ti >= nt


def _star(p: bytes, pi: int, t: bytes, ti: int) -> bool | int:
    """The rest of a match from the ``*`` (or ``**``) at ``p[pi]``: the rest of the pattern tried at every
    later position; a single ``*`` stops at a ``/``."""
    np, nt = len(p), len(t)
    pi += 1
    star2 = pi < np and p[pi] == 0x2A
    while pi < np and p[pi] == 0x2A:
        pi += 1
    if pi >= np:
        return True if star2 else _SLASH not in t[ti:]
    while ti < nt:
        r = _match(p, pi, t, ti)
        if r is not False:
            if not star2 or r != _ABORT_TO_STARSTAR:
                return r
        elif not star2 and t[ti] == _SLASH:
            return _ABORT_TO_STARSTAR
        ti += 1
    return _ABORT_ALL


def _klass(p: bytes, pi: int, c: int) -> tuple[bool, int] | None:
    """A ``[...]`` starting at ``p[pi]`` against the byte ``c``: (matched, index of its ``]``), or None
    when the class never closes (nothing can match then)."""
    np = len(p)
    pi += 1
    negate = pi < np and p[pi] in (0x21, 0x5E)
    if negate:
        pi += 1
    matched = False
    prev = 0
    first = True
    while True:
        if pi >= np:
            return None
        ch = p[pi]
        if ch == 0x5D and not first:  # ]
            return matched != negate, pi
        first = False
        if ch == _BACKSLASH or (ch == 0x2D and prev and pi + 1 < np and p[pi + 1] != 0x5D):
            step = _escape_or_range(p, pi, c, prev)
        elif ch == 0x5B and pi + 1 < np and p[pi + 1] == 0x3A:  # [:name:]
            step = _named_class(p, pi, c)
        else:
            step = c == ch, pi, ch
        if step is None:
            return None
        hit, pi, prev = step
        matched |= hit
        pi += 1


def _escape_or_range(p: bytes, pi: int, c: int, prev: int) -> tuple[bool, int, int] | None:
    """Inside a class, the ``\\x`` or the ``-hi`` of a range (``hi`` may be escaped) at ``p[pi]``: (``c``
    matched, index of its last byte, what a following ``-`` ranges from: the escaped byte, or nothing after a
    range), or None when the class ends inside it."""
    np = len(p)
    if p[pi] == 0x2D:  # the caller saw a byte after the "-"
        pi += 1
        if p[pi] == _BACKSLASH:
            pi += 1
            if pi >= np:
                return None
        return prev <= c <= p[pi], pi, 0
    pi += 1
    if pi >= np:
        return None
    return c == p[pi], pi, p[pi]


def _named_class(p: bytes, pi: int, c: int) -> tuple[bool, int, int] | None:
    """Inside a class, a ``[:name:]`` at ``p[pi]``: (``c`` matched, index of its last byte, 0), or None when
    it never closes or names no class. A ``[`` that is not a named class is a literal ``[``."""
    end = p.find(b"]", pi + 2)
    if end < 0:
        return None
    name = p[pi + 2:end]
    if len(name) < 1 or not name.endswith(b":"):
        return c == 0x5B, pi, 0x5B
    test = _CLASSES.get(name[:-1])
    if test is None:
        return None
    return test(c), end, 0
