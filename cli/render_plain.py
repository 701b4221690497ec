"""A rich-free rendering of the simplest tables, byte for byte what rich prints off a terminal, so that a piped
``zc-ctl agents`` need not load rich (about 12 ms of CPU of a 150 ms start-up budget).

Only tables rich would print without wrapping, truncating or styling anything visible: printable ASCII cells
with no ``[`` (rich would read markup there), and a natural width within the console's. Anything else returns
None and the caller prints the rich table, so the two can never disagree (``tests/unit/test_ctl_output.py``
compares them).
"""

from __future__ import annotations

from collections.abc import Sequence


def _plain(text: str) -> bool:
    return text.isascii() and text.isprintable() and "[" not in text


def plain_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]], width: int) -> str | None:
    """rich's ``Table(title=title, title_justify="left")`` with these columns (box HEAVY_HEAD, padding 1), as
    printed on a ``width``-column console without a terminal; None when only rich can print it the same."""
    if not all(_plain(c) for c in (title, *headers)) or not all(_plain(c) for row in rows for c in row):
        return None
    if any(len(row) != len(headers) for row in rows):
        return None
    widths = [max([len(h), *(len(row[i]) for row in rows)]) for i, h in enumerate(headers)]
    total = sum(w + 2 for w in widths) + len(widths) + 1
    if total > width or len(title) > total:
        return None

    def line(left: str, fill: str, mid: str, right: str) -> str:
        return left + mid.join(fill * (w + 2) for w in widths) + right

    def cells(edge: str, values: Sequence[str]) -> str:
        return edge + edge.join(f" {v.ljust(w)} " for v, w in zip(values, widths, strict=True)) + edge

    out = [title, line("┏", "━", "┳", "┓"), cells("┃", headers), line("┡", "━", "╇", "┩")]
    out += [cells("│", row) for row in rows]
    out.append(line("└", "─", "┴", "┘"))
    return "\n".join(out) + "\n"
